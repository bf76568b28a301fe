from flywheel_cli.main import cli

cli()
