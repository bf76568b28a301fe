"""``flywheel eval``'s ML-engineering table, from an Evaluation message as the orchestrator fills it."""

from __future__ import annotations

from rich.console import Console

from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2
from flywheel_cli.mle import ml_table


def test_ml_table_shows_each_task_and_the_model_total() -> None:
    task = mle_pb2.MlTaskMetrics(
        task_id="two-moons",
        metric="accuracy",
        maximize=True,
        episodes=2,
        valid_episodes=1,
        best_heldout=0.952,
        mean_normalised=0.5,
        baseline_score=0.516,
        reference_score=0.952,
        mean_nodes=3.0,
    )
    task.mean_wall_time.FromSeconds(12)
    model = mle_pb2.MlModelMetrics(
        model="m", episodes=2, valid_fraction=0.5, mean_normalised=0.5, mean_nodes=3.0, tasks=[task]
    )
    empty = mle_pb2.MlTaskMetrics(task_id="sms-spam", metric="accuracy", maximize=True, episodes=1)
    model.tasks.append(empty)
    assert ml_table(epb.Evaluation()) is None
    table = ml_table(epb.Evaluation(ml_metrics=[model]))
    assert table is not None
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert (
        "two-moons │ accuracy (max) │    0.516 │     0.952 │         0.952 │       0.50 │   1/2 │   3.0 │ 12.0 s"
        in text
    )
    assert "sms-spam  │ accuracy (max) │        0 │         0 │             - │" in text
    assert "all" in text and "50%" in text


def test_search_rows_grow_with_each_node_and_end_with_the_episode() -> None:
    """The live rows `flywheel run` shows in a terminal, fed WatchRun's ML node updates by hand."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flywheel.orchestrator.v1 import run_pb2
    from flywheel_cli.mle import SearchRows

    console = Console(record=True, width=160, force_terminal=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=10),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    rows = SearchRows(progress)
    common = {"task_id": "house-prices", "max_nodes": 4, "metric_name": "rmse", "maximize": False}
    rows.node(
        mle_pb2.MlNodeProgress(
            node_id="n0", operator=mle_pb2.ML_OPERATOR_DRAFT, buggy=True, nodes=1, **common
        )
    )
    row = progress.tasks[0]
    assert (row.completed, row.total) == (1, 4)
    assert row.fields["info"] == "nodes · D✗ · no working node yet"
    rows.node(
        mle_pb2.MlNodeProgress(
            node_id="n1", step=1, operator=mle_pb2.ML_OPERATOR_DEBUG, parent_id="n0", metric=30.5, nodes=2,
            best_node_id="n1", best_metric=30.5, **common,
        )
    )  # fmt: skip
    rows.node(
        mle_pb2.MlNodeProgress(
            node_id="n2", step=2, operator=mle_pb2.ML_OPERATOR_IMPROVE, parent_id="n1", metric=22.0,
            heldout=22.4, nodes=3, best_node_id="n2", best_metric=22.0, best_heldout=22.4, **common,
        )
    )  # fmt: skip
    assert row.fields["info"] == "nodes · D✗ d✓ I✓ · best rmse 22 (n2), held-out 22.4"
    assert (row.completed, row.total) == (3, 4)
    # The search stopped early (its time budget): the row ends complete at 3 nodes, marked ✓.
    rows.finished(run_pb2.EpisodeResult(task_id="house-prices", attempt=0, resolved=True))
    assert (row.completed, row.total, row.finished) == (3, 3, True)
    assert row.description.startswith("[green]✓[/]")
    console.print(progress.make_tasks_table(progress.tasks))
    table = rows.summary()
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "✓ house-prices #0" in text and "3/3 nodes · D✗ d✓ I✓ · best rmse 22 (n2), held-out 22.4" in text
    assert "│ house-prices #0 │     3 │ D✗ d✓ I✓        │ n2        │         22 │     22.4 │" in text
