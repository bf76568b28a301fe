"""``flywheel suites``, ``flywheel run …`` and ``flywheel eval …``: the orchestrator from the command line.

Talks to ``flywheel.orchestrator.v1.OrchestratorService`` over gRPC only. The address comes from
``--address``, else ``FLYWHEEL_ORCHESTRATOR_ADDRESS``, else the running embedded stack's
``stack.json`` (``--state-dir``), else ``127.0.0.1:50051``.

``run`` and ``eval`` are click groups that also act as commands: ``flywheel run --suite S …``
starts a run (no sub-command given), ``flywheel run list|show|cancel|watch`` manages runs; the
same holds for ``eval``. Starting commands follow the server's watch stream with a progress bar,
print one line per finished episode, and end with a summary; Ctrl-C while following cancels the
run or evaluation on the server (it would otherwise keep running with nobody watching).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2, suite_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli.stack import STACK_FILE, StackInfo, service_address

console = Console(stderr=True)
out = Console()
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
#: Exit status after Ctrl-C cancelled the job (the shell's convention for SIGINT).
EXIT_INTERRUPTED = 130
SPLITS = {"train": common_pb2.TASK_SPLIT_TRAIN, "test": common_pb2.TASK_SPLIT_TEST}
PROTOCOLS = {
    "json": common_pb2.TOOL_PROTOCOL_JSON,
    "native": common_pb2.TOOL_PROTOCOL_NATIVE,
    "io": common_pb2.TOOL_PROTOCOL_IO,
}
TEST_POLICIES = {
    "never": run_pb2.TEST_POLICY_NEVER,
    "after_write": run_pb2.TEST_POLICY_AFTER_WRITE,
    "end": run_pb2.TEST_POLICY_END,
}
STATES = {
    name.removeprefix("JOB_STATE_").lower(): value for name, value in common_pb2.JobState.items() if value
}
STATE_STYLE = {
    common_pb2.JOB_STATE_QUEUED: "yellow",
    common_pb2.JOB_STATE_RUNNING: "cyan",
    common_pb2.JOB_STATE_SUCCEEDED: "green",
    common_pb2.JOB_STATE_FAILED: "red",
    common_pb2.JOB_STATE_CANCELLED: "magenta",
}
STATE_DIR_DEFAULT = Path(os.environ.get("FLYWHEEL_STATE_DIR", "~/.flywheel"))


# ------------------------------------------------------------------------------- plumbing


def resolve_address(address: str | None, state_dir: Path) -> str:
    return service_address("orchestrator", address, state_dir)


def objects_root(state_dir: Path) -> Path | None:
    """Where the filesystem object store keeps its files, or None when the stack uses S3.

    Same order the services use: ``FLYWHEEL_OBJECT_STORE_ROOT``, else the embedded stack's
    ``<state>/objects`` (what ``flywheel up`` hands its children), else ``~/.flywheel/objects``.
    """
    if os.environ.get("FLYWHEEL_OBJECT_STORE_BACKEND", "fs") != "fs":
        return None
    env = os.environ.get("FLYWHEEL_OBJECT_STORE_ROOT")
    if env:
        return Path(env).expanduser()
    stack_file = state_dir.expanduser() / STACK_FILE
    if stack_file.exists():
        info = StackInfo.load(stack_file)
        if not info.object_store.startswith("filesystem"):
            return None
        return Path(info.state_dir) / "objects"
    return Path("~/.flywheel/objects").expanduser()


@contextlib.contextmanager
def _stub(ctx: click.Context) -> Iterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    """A stub on the orchestrator; any gRPC error becomes one red line and exit status 1."""
    address = resolve_address(ctx.obj.get("address"), ctx.obj["state_dir"])
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else "ERROR"
            details = err.details() if hasattr(err, "details") else str(err)
            if code == "UNAVAILABLE":
                details = f"cannot reach the orchestrator at {address} ({details}); is `flywheel up` running?"
            console.print(f"[red]error ({code}):[/] {escape(details or '')}")
            sys.exit(1)


def _connection_options(fn: Callable) -> Callable:
    fn = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=STATE_DIR_DEFAULT,
        show_default=True,
        help="Embedded stack whose orchestrator to use when no address is given.",
    )(fn)
    return click.option(
        "--address", default=None, help="host:port of the orchestrator (env FLYWHEEL_ORCHESTRATOR_ADDRESS)."
    )(fn)


def _episode_options(fn: Callable) -> Callable:
    """Options shared by `run` and `eval`: task selection, protocol, budgets, sampling."""
    options = [
        click.option(
            "--task", "tasks", multiple=True, help="Task id of the split (repeatable; default all)."
        ),
        click.option("--rollouts", type=int, default=0, help="Episodes per task (0 = 1)."),
        click.option(
            "--protocol",
            type=click.Choice(sorted(PROTOCOLS)),
            default=None,
            help="Tool protocol (default: the one for each task's kind).",
        ),
        click.option(
            "--test-policy",
            type=click.Choice(sorted(TEST_POLICIES)),
            default=None,
            help="When the driver runs the tests during an episode (default end).",
        ),
        click.option(
            "--max-iterations", type=int, default=0, help="Assistant turns per episode (0 = default)."
        ),
        click.option("--max-tokens", type=int, default=0, help="Token budget per episode (0 = default)."),
        click.option(
            "--max-wall-time", type=float, default=0.0, metavar="SECONDS", help="Time budget per episode."
        ),
        click.option(
            "--max-parse-errors", type=int, default=0, help="Consecutive parse errors that end an episode."
        ),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (0 = greedy)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling mass in (0, 1]."),
        click.option(
            "--max-completion-tokens", type=int, default=None, help="Completion tokens per model call."
        ),
        click.option("--seed", type=int, default=None, help="Sampling seed, where the backend supports it."),
        click.option("--concurrency", type=int, default=0, help="Episodes in flight at once (0 = default)."),
        click.option(
            "--label", "labels", multiple=True, help="KEY=VALUE copied to every trajectory (repeatable)."
        ),
        click.option(
            "--request-id", default="", help="Idempotency key: a retry with it returns the same job."
        ),
        click.option("--watch/--no-watch", default=True, show_default=True, help="Follow it to the end."),
        click.option("-q", "--quiet", is_flag=True, help="No line per finished episode while following."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


#: Parameters of a group that only make sense when the group itself starts a job.
_CONNECTION = {"address", "state_dir"}


def _reject_job_options(ctx: click.Context) -> None:
    """`flywheel run --suite S list` is a mistake: say so rather than silently ignoring --suite."""
    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name not in _CONNECTION
        and ctx.get_parameter_source(p.name) not in (None, click.core.ParameterSource.DEFAULT)
    ]
    if given:
        raise click.UsageError(
            f"{', '.join(given)}: only for starting a job (`flywheel {ctx.info_name} --suite …`), "
            f"not with `flywheel {ctx.info_name} {ctx.invoked_subcommand}`"
        )


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def _fill_common(msg: run_pb2.Run | epb.Evaluation, opts: dict[str, Any]) -> None:
    """Copy the shared options into a Run or an Evaluation (both have the same field names)."""
    msg.task_ids.extend(opts["tasks"])
    msg.rollouts_per_task = opts["rollouts"]
    episode = msg.episode
    if opts["protocol"]:
        episode.protocol = PROTOCOLS[opts["protocol"]]
    if opts["test_policy"]:
        episode.test_policy = TEST_POLICIES[opts["test_policy"]]
    episode.limits.max_iterations = opts["max_iterations"]
    episode.limits.max_tokens = opts["max_tokens"]
    episode.limits.max_consecutive_parse_errors = opts["max_parse_errors"]
    if opts["max_wall_time"]:
        episode.limits.max_wall_time.FromNanoseconds(int(opts["max_wall_time"] * 1e9))
    sampling = episode.sampling
    if opts["temperature"] is not None:
        sampling.temperature = opts["temperature"]
    if opts["top_p"] is not None:
        sampling.top_p = opts["top_p"]
    if opts["max_completion_tokens"] is not None:
        sampling.max_tokens = opts["max_completion_tokens"]
    if opts["seed"] is not None:
        sampling.seed = opts["seed"]
    msg.concurrency = opts["concurrency"]
    msg.labels.update(_labels(opts["labels"]))


# ------------------------------------------------------------------------------ formatting


def _enum(value: int, enum: Any, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _state(state: int) -> str:
    name = _enum(state, common_pb2.JobState, "JOB_STATE_")
    return f"[{STATE_STYLE.get(state, 'white')}]{name}[/]"


def _split(split: int) -> str:
    return _enum(split, common_pb2.TaskSplit, "TASK_SPLIT_")


def _failure(category: int) -> str:
    return _enum(category, tpb.FailureCategory, "FAILURE_CATEGORY_")


def _when(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{sign}{minutes}m{rest:02d}s"


def _duration(d: Duration) -> str:
    return _seconds(d.ToNanoseconds() / 1e9)


def _elapsed(start: Any, end: Any) -> str:
    if not start.seconds or not end.seconds:
        return "-"
    return _seconds((end.ToNanoseconds() - start.ToNanoseconds()) / 1e9)


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else f"{part}/0"


def _policy(run: run_pb2.Run) -> str:
    return "reference" if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE else run.model


def episode_line(ep: run_pb2.EpisodeResult, with_model: bool = False) -> str:
    """One finished episode on one line: what ran, how it ended, and what it cost."""
    mark = "[green]✓[/]" if ep.resolved else "[red]✗[/]"
    outcome = "[green]resolved[/]" if ep.resolved else f"[red]{_failure(ep.failure_category)}[/]"
    who = f"[bold]{escape(ep.model or 'reference')}[/] " if with_model else ""
    extras = [f"{ep.steps} step{'' if ep.steps == 1 else 's'}"]
    if ep.parse_errors:
        extras.append(f"{ep.parse_errors} parse error{'s' if ep.parse_errors > 1 else ''}")
    if ep.loop_detections:
        extras.append(f"{ep.loop_detections} loop{'s' if ep.loop_detections > 1 else ''}")
    tokens = ep.usage.prompt_tokens + ep.usage.completion_tokens
    if tokens:
        extras.append(f"{tokens:,} tok")
    extras.append(_duration(ep.wall_time))
    return (
        f"{mark} {who}{escape(ep.task_id)} #{ep.attempt}  {outcome}  "
        f"[dim]{escape(', '.join(extras))}  {escape(ep.trajectory_id)}[/]"
    )


# --------------------------------------------------------------------------------- suites


@click.group("suites", invoke_without_command=True)
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per suite instead of a table.")
@click.pass_context
def suites(ctx: click.Context, address: str | None, state_dir: Path, as_json: bool) -> None:
    """List the task suites the orchestrator knows (`flywheel suites show NAME` for one)."""
    ctx.ensure_object(dict)
    ctx.obj.update(address=address, state_dir=state_dir)
    if ctx.invoked_subcommand is not None:
        return
    found: list[suite_pb2.Suite] = []
    request = opb.ListSuitesRequest(page_size=1000)
    with _stub(ctx) as stub:
        while True:
            reply = stub.ListSuites(request)
            found.extend(reply.suites)
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
    if as_json:
        for s in found:
            click.echo(json_format.MessageToJson(s, indent=None))
        return
    table = Table(title=f"{len(found)} task suites")
    for column in ("name", "version", "kinds", "tasks", "train", "test", "bundled", "source"):
        table.add_column(column, justify="right" if column in ("tasks", "train", "test") else "left")
    for s in found:
        table.add_row(
            s.name,
            s.version,
            ", ".join(_enum(k, common_pb2.TaskKind, "TASK_KIND_") for k in s.kinds),
            str(s.task_count),
            str(s.train_task_count),
            str(s.test_task_count),
            "yes" if s.bundled else "no",
            escape(s.source),
        )
    out.print(table)


@suites.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the suite as JSON.")
@click.pass_context
def suites_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one suite: its split, source and description."""
    with _stub(ctx) as stub:
        s = stub.GetSuite(opb.GetSuiteRequest(suite=name)).suite
    if as_json:
        out.print_json(json_format.MessageToJson(s))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in (
        ("version", s.version),
        ("kinds", ", ".join(_enum(k, common_pb2.TaskKind, "TASK_KIND_") for k in s.kinds)),
        ("tasks", f"{s.task_count}: {s.train_task_count} train, {s.test_task_count} test"),
        ("split", f"train ratio {s.train_ratio:g}, seed {s.split_seed!r}"),
        ("bundled", "yes" if s.bundled else "no"),
        ("source", s.source),
    ):
        grid.add_row(key, escape(value))
    out.print(Panel(grid, title=f"[bold]{escape(s.name)}[/]", border_style="cyan"))
    if s.description:
        out.print(Markdown(s.description))


# ----------------------------------------------------------------------------------- runs


@click.group("run", invoke_without_command=True)
@_connection_options
@click.option("--suite", default=None, help="Suite name (see `flywheel suites`).")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default=None, help="Side of the suite's split.")
@click.option("--model", default=None, help="Model name the gateway serves.")
@click.option("--reference", is_flag=True, help="Replay the tasks' reference fixes (no model needed).")
@_episode_options
@click.pass_context
def run_cmd(
    ctx: click.Context,
    address: str | None,
    state_dir: Path,
    suite: str | None,
    split: str | None,
    model: str | None,
    reference: bool,
    **opts: Any,
) -> None:
    """Roll out a model (or the reference teacher) on a suite: `flywheel run --suite S --split train --model M`.

    Follows the run with a progress bar and a line per finished episode, then prints a summary;
    Ctrl-C cancels the run. Manage runs with `flywheel run list|show|cancel|watch`.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(address=address, state_dir=state_dir)
    if ctx.invoked_subcommand is not None:
        _reject_job_options(ctx)
        return
    if not suite:
        raise click.UsageError(
            "--suite is required to start a run (or use `flywheel run list|show|cancel|watch`)"
        )
    if not split:
        raise click.UsageError("--split train|test is required to start a run")
    if bool(model) == reference:
        raise click.UsageError("give either --model NAME or --reference (the tasks' reference fixes)")
    run = run_pb2.Run(suite=suite, split=SPLITS[split])
    if reference:
        run.teacher_kind = tpb.TEACHER_KIND_REFERENCE
    else:
        run.teacher_kind = tpb.TEACHER_KIND_MODEL
        run.model = model or ""
    _fill_common(run, opts)
    with _stub(ctx) as stub:
        created = stub.CreateRun(opb.CreateRunRequest(run=run, request_id=opts["request_id"])).run
        console.print(
            f"started [bold]{created.id}[/]: {escape(_policy(created))} on {escape(created.suite)}"
            f"@{created.suite_version} {_split(created.split)}, {created.counters.episodes_total} episodes"
            f" ({created.counters.tasks} tasks x {created.rollouts_per_task or 1})"
        )
        out.print(created.id, soft_wrap=True)
        if opts["watch"]:
            sys.exit(follow_run(stub, created.id, quiet=opts["quiet"]))


def follow_run(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub, run_id: str, *, quiet: bool = False
) -> int:
    """Follow WatchRun to the terminal snapshot; returns the exit status (Ctrl-C cancels the run)."""
    columns = (
        TextColumn("{task.fields[state]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "episodes · [green]{task.fields[resolved]} resolved[/] · {task.fields[parse]} parse errors"
            " · {task.fields[errored]} errored"
        ),
        TimeElapsedColumn(),
    )
    last: run_pb2.Run | None = None
    episodes: list[run_pb2.EpisodeResult] = []
    stream: Any = None
    try:
        stream = stub.WatchRun(opb.WatchRunRequest(run_id=run_id))
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(run_id, total=None, state="…", resolved=0, parse=0, errored=0)
            for update in stream:
                if update.WhichOneof("update") == "episode":
                    episodes.append(update.episode)
                    if not quiet:
                        progress.console.print(episode_line(update.episode))
                    continue
                last = update.run
                c = last.counters
                progress.update(
                    bar,
                    state=_state(last.state),
                    total=c.episodes_total or None,
                    completed=c.episodes_finished,
                    resolved=c.episodes_resolved,
                    parse=c.parse_errors,
                    errored=c.episodes_errored,
                )
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        return _cancel_after_interrupt(
            "run", run_id, lambda: stub.CancelRun(opb.CancelRunRequest(run_id=run_id)).run
        )
    if last is None:
        return 1
    out.print(run_summary(last, episodes))
    if last.state == common_pb2.JOB_STATE_SUCCEEDED:
        return 0
    reason = f": {escape(last.error.message)}" if last.HasField("error") else ""
    console.print(f"run {last.id} {_state(last.state)}{reason}")
    return 1


def _cancel_after_interrupt(kind: str, job_id: str, cancel: Callable[[], Any]) -> int:
    """Ctrl-C while following: cancel the job on the server, so that it does not run on unwatched."""
    console.print(f"\n[yellow]interrupted[/]: cancelling {kind} {job_id}…")
    job = cancel()
    finished = job.counters.episodes_finished if kind == "run" else job.progress.episodes_finished
    console.print(
        f"{job.id}: {_state(job.state)} (cancellation requested); {finished} finished episodes stay stored"
    )
    return EXIT_INTERRUPTED


def run_summary(run: run_pb2.Run, episodes: list[run_pb2.EpisodeResult]) -> Table:
    """The end-of-run table: one row per task seen finishing, and a total row from the counters."""
    c = run.counters
    title = (
        f"{run.id} · {escape(_policy(run))} on {escape(run.suite)} {_split(run.split)} · "
        f"{_state(run.state)} in {_elapsed(run.start_time, run.end_time)}"
    )
    table = Table(title=title, show_footer=True)
    by_task: dict[str, list[run_pb2.EpisodeResult]] = defaultdict(list)
    for ep in episodes:
        by_task[ep.task_id].append(ep)
    steps = c.steps / c.episodes_finished if c.episodes_finished else 0.0
    tokens = c.usage.prompt_tokens + c.usage.completion_tokens
    footer = {
        "task": "all",
        "episodes": f"{c.episodes_finished}/{c.episodes_total}",
        "resolved": _rate(c.episodes_resolved, c.episodes_finished),
        "failures": f"{c.episodes_errored} errored" if c.episodes_errored else "",
        "steps": f"{steps:.1f}",
        "parse errors": str(c.parse_errors),
        "loops": str(c.loop_detections),
        "wrote": str(c.episodes_with_write),
        "tokens": f"{tokens:,}",
    }
    for name, text in footer.items():
        table.add_column(name, footer=text, justify="left" if name in ("task", "failures") else "right")
    for task_id in sorted(by_task):
        eps = by_task[task_id]
        failures = Counter(_failure(e.failure_category) for e in eps if not e.resolved)
        table.add_row(
            escape(task_id),
            str(len(eps)),
            _rate(sum(e.resolved for e in eps), len(eps)),
            escape(", ".join(f"{n}x{k}" if n > 1 else k for k, n in sorted(failures.items()))),
            f"{sum(e.steps for e in eps) / len(eps):.1f}",
            str(sum(e.parse_errors for e in eps)),
            str(sum(e.loop_detections for e in eps)),
            str(sum(e.wrote_file for e in eps)),
            f"{sum(e.usage.prompt_tokens + e.usage.completion_tokens for e in eps):,}",
        )
    table.caption = f"{c.trajectories_stored} trajectories stored: flywheel trajectories list --run {run.id}"
    return table


@run_cmd.command("list")
@click.option("--suite", default="", help="Only runs on this suite.")
@click.option("--model", default="", help="Only runs of this model.")
@click.option("--state", type=click.Choice(sorted(STATES)), default=None, help="Only runs in this state.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def run_list(
    ctx: click.Context, suite: str, model: str, state: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    request = opb.ListRunsRequest(suite=suite, model=model, state=STATES[state] if state else 0)
    runs: list[run_pb2.Run] = []
    with _stub(ctx) as stub:
        for item in _pages(stub.ListRuns, request, "runs", limit):
            runs.append(item)
    if as_json:
        for r in runs:
            click.echo(json_format.MessageToJson(r, indent=None))
        return
    table = Table(title=f"{len(runs)} runs")
    for column in ("id", "state", "suite / split", "policy", "episodes", "resolved", "created"):
        table.add_column(column, no_wrap=column == "id")
    for r in runs:
        c = r.counters
        table.add_row(
            r.id,
            _state(r.state),
            f"{escape(r.suite)} / {_split(r.split)}",
            escape(_policy(r)),
            f"{c.episodes_finished}/{c.episodes_total}",
            _rate(c.episodes_resolved, c.episodes_finished),
            _when(r.create_time),
        )
    out.print(table)


def _pages(call: Callable, request: Any, field: str, limit: int) -> Iterator[Any]:
    """Every item of a paginated list RPC, up to ``limit`` (0 = all)."""
    seen = 0
    while True:
        request.page_size = 1000 if limit == 0 else min(1000, limit - seen)
        reply = call(request)
        for item in getattr(reply, field):
            yield item
            seen += 1
        if not reply.next_page_token or (limit and seen >= limit):
            return
        request.page_token = reply.next_page_token


@run_cmd.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_context
def run_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run: settings, state and counters."""
    with _stub(ctx) as stub:
        r = stub.GetRun(opb.GetRunRequest(run_id=run_id)).run
    if as_json:
        out.print_json(json_format.MessageToJson(r))
        return
    out.print(run_panel(r))


def _settings_line(job: run_pb2.Run | epb.Evaluation) -> str:
    ep = job.episode
    lim, sp = ep.limits, ep.sampling
    parts = [
        f"rollouts {job.rollouts_per_task or 1}",
        f"protocol {_enum(ep.protocol, common_pb2.ToolProtocol, 'TOOL_PROTOCOL_') if ep.protocol else 'by task kind'}",
        f"tests {_enum(ep.test_policy, run_pb2.TestPolicy, 'TEST_POLICY_') if ep.test_policy else 'end'}",
        f"concurrency {job.concurrency or 'default'}",
    ]
    if lim.max_iterations:
        parts.append(f"max {lim.max_iterations} iterations")
    if lim.max_tokens:
        parts.append(f"max {lim.max_tokens:,} tokens")
    if lim.max_wall_time.ToNanoseconds():
        parts.append(f"max {_duration(lim.max_wall_time)}")
    if lim.max_consecutive_parse_errors:
        parts.append(f"max {lim.max_consecutive_parse_errors} parse errors in a row")
    for field in ("temperature", "top_p", "max_tokens", "seed"):
        if sp.HasField(field):
            parts.append(
                f"{'max_completion_tokens' if field == 'max_tokens' else field} {getattr(sp, field):g}"
            )
    return ", ".join(parts)


def run_panel(r: run_pb2.Run) -> Panel:
    c = r.counters
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    facts = [
        ("state", _state(r.state) + (f"  [red]{escape(r.error.message)}[/]" if r.HasField("error") else "")),
        ("suite", escape(f"{r.suite}@{r.suite_version} {_split(r.split)}")),
        ("policy", escape(_policy(r))),
        ("tasks", escape(", ".join(r.task_ids)) or f"all {c.tasks} of the split"),
        ("settings", escape(_settings_line(r))),
        (
            "episodes",
            f"{c.episodes_finished}/{c.episodes_total} finished, resolved {_rate(c.episodes_resolved, c.episodes_finished)}, "
            f"{c.episodes_errored} errored, {c.episodes_with_write} wrote a file",
        ),
        (
            "agent",
            f"{c.steps} steps, {c.parse_errors} parse errors, {c.loop_detections} loop detections, "
            f"tokens {c.usage.prompt_tokens:,}+{c.usage.completion_tokens:,}",
        ),
        ("stored", f"{c.trajectories_stored} trajectories (flywheel trajectories list --run {r.id})"),
        ("time", f"created {_when(r.create_time)}, ran {_elapsed(r.start_time, r.end_time)}"),
    ]
    if r.labels:
        facts.append(("labels", escape(", ".join(f"{k}={v}" for k, v in sorted(r.labels.items())))))
    if r.loop_id:
        facts.append(("loop", r.loop_id))
    for name, value in facts:
        grid.add_row(name, value)
    return Panel(grid, title=f"[bold]{r.id}[/]", border_style="cyan")


@run_cmd.command("cancel")
@click.argument("run_id")
@click.pass_context
def run_cancel(ctx: click.Context, run_id: str) -> None:
    """Ask a run to stop; finished trajectories stay stored."""
    with _stub(ctx) as stub:
        r = stub.CancelRun(opb.CancelRunRequest(run_id=run_id)).run
    console.print(f"{r.id}: {_state(r.state)} (cancellation requested)")


@run_cmd.command("watch")
@click.argument("run_id")
@click.option("-q", "--quiet", is_flag=True, help="No line per finished episode.")
@click.pass_context
def run_watch(ctx: click.Context, run_id: str, quiet: bool) -> None:
    """Follow a run to its end; exits 1 unless it succeeds, and Ctrl-C cancels it."""
    with _stub(ctx) as stub:
        sys.exit(follow_run(stub, run_id, quiet=quiet))


# ---------------------------------------------------------------------------- evaluations


@click.group("eval", invoke_without_command=True)
@_connection_options
@click.option("--suite", default=None, help="Suite name (see `flywheel suites`).")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default="test", show_default=True)
@click.option("--model", "models", multiple=True, help="Model to evaluate (repeatable, 1 to 8).")
@click.option("--baseline", default=None, help="The model the others are compared with (one of --model).")
@click.option("--confidence", type=float, default=0.0, help="Confidence level of the intervals (0 = 0.95).")
@_episode_options
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    address: str | None,
    state_dir: Path,
    suite: str | None,
    split: str,
    models: tuple[str, ...],
    baseline: str | None,
    confidence: float,
    **opts: Any,
) -> None:
    """Compare models on a suite: `flywheel eval --suite S --model A --model B --baseline B`.

    Follows the evaluation with a progress bar, then prints the report: per-model metrics, the
    deltas against the baseline, the per-task table and where the Markdown/PNG/JSON report is.
    Ctrl-C cancels it. Manage evaluations with `flywheel eval list|show|cancel|watch`.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(address=address, state_dir=state_dir)
    if ctx.invoked_subcommand is not None:
        _reject_job_options(ctx)
        return
    if not suite:
        raise click.UsageError(
            "--suite is required to start an evaluation (or use `flywheel eval list|show|cancel|watch`)"
        )
    if not models:
        raise click.UsageError("give at least one --model NAME")
    if baseline and baseline not in models:
        raise click.UsageError(
            f"--baseline {baseline!r} must be one of the --model names ({', '.join(models)})"
        )
    if not baseline and len(models) > 1:
        raise click.UsageError("--baseline is required with more than one --model")
    evaluation = epb.Evaluation(
        suite=suite,
        split=SPLITS[split],
        models=list(models),
        baseline_model=baseline or "",
        confidence_level=confidence,
    )
    _fill_common(evaluation, opts)
    with _stub(ctx) as stub:
        request = opb.CreateEvaluationRequest(evaluation=evaluation, request_id=opts["request_id"])
        created = stub.CreateEvaluation(request).evaluation
        console.print(
            f"started [bold]{created.id}[/]: {escape(', '.join(created.models))} on {escape(created.suite)}"
            f"@{created.suite_version} {_split(created.split)}"
            + (f", {created.progress.episodes_total} episodes" if created.progress.episodes_total else "")
        )
        out.print(created.id, soft_wrap=True)
        if opts["watch"]:
            sys.exit(follow_evaluation(stub, created.id, ctx.obj["state_dir"], quiet=opts["quiet"]))


def follow_evaluation(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub, eval_id: str, state_dir: Path, *, quiet: bool = False
) -> int:
    """Follow WatchEvaluation, then print the report; returns the exit status (Ctrl-C cancels)."""
    columns = (
        TextColumn("{task.fields[state]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes · {task.fields[resolved]} resolved · {task.fields[parse]} parse errors"),
        TimeElapsedColumn(),
    )
    last: epb.Evaluation | None = None
    resolved: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    parse_errors = 0
    stream: Any = None
    try:
        stream = stub.WatchEvaluation(opb.WatchEvaluationRequest(evaluation_id=eval_id))
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(eval_id, total=None, state="…", resolved="", parse=0)
            for update in stream:
                if update.WhichOneof("update") == "episode":
                    ep = update.episode
                    finished[ep.model] += 1
                    resolved[ep.model] += ep.resolved
                    parse_errors += ep.parse_errors
                    if not quiet:
                        progress.console.print(episode_line(ep, with_model=True))
                else:
                    last = update.evaluation
                progress.update(
                    bar,
                    state=_state(last.state) if last else "…",
                    total=(last.progress.episodes_total or None) if last else None,
                    completed=last.progress.episodes_finished if last else 0,
                    resolved="  ".join(
                        f"{escape(m)} [green]{resolved[m]}[/]/{finished[m]}"
                        for m in (last.models if last else ())
                    ),
                    parse=parse_errors,
                )
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        return _cancel_after_interrupt(
            "evaluation",
            eval_id,
            lambda: stub.CancelEvaluation(opb.CancelEvaluationRequest(evaluation_id=eval_id)).evaluation,
        )
    if last is None:
        return 1
    final = stub.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=eval_id)).evaluation
    print_evaluation(final, state_dir)
    if final.state == common_pb2.JOB_STATE_SUCCEEDED:
        return 0
    reason = f": {escape(final.error.message)}" if final.HasField("error") else ""
    console.print(f"evaluation {final.id} {_state(final.state)}{reason}")
    return 1


def _delta(value: float, fmt: str, better_when_higher: bool) -> str:
    text = format(value, fmt)
    if value == 0:
        return f"[dim]{text}[/]"
    good = (value > 0) == better_when_higher
    return f"[{'green' if good else 'red'}]{text}[/]"


def model_table(e: epb.Evaluation) -> Table:
    """Per-model metrics: the headline of an evaluation."""
    level = e.model_metrics[0].pass_rate_ci.level if e.model_metrics else 0.95
    table = Table(title=f"models on {escape(e.suite)} {_split(e.split)}")
    columns = (
        "model",
        "episodes",
        "resolved",
        "pass rate",
        f"{level or 0.95:.0%} CI",
        "pass@k",
        "parse err/ep",
        "write rate",
        "loops/ep",
        "steps",
        "tokens/ep",
        "wall/ep",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "pass@k") else "right")
    for m in e.model_metrics:
        name = escape(m.model) + (" [yellow](baseline)[/]" if m.baseline else "")
        if m.adapter_name:
            name += f"\n[dim]{escape(m.adapter_name)} v{m.adapter_version}[/]"
        ci = m.pass_rate_ci
        table.add_row(
            name,
            str(m.episodes),
            str(m.resolved),
            f"{m.pass_rate:.3f}",
            f"{ci.lower:.2f}-{ci.upper:.2f}" if ci.method else "-",
            " ".join(f"@{p.k} {p.value:.2f}" for p in m.pass_at_k) or "-",
            f"{m.parse_errors_per_episode:.2f}",
            f"{m.write_rate:.2f}",
            f"{m.loop_detections_per_episode:.2f}",
            f"{m.mean_steps:.1f}",
            f"{m.mean_prompt_tokens + m.mean_completion_tokens:,.0f}",
            _duration(m.mean_wall_time),
        )
    return table


def delta_table(e: epb.Evaluation) -> Table | None:
    """Each model minus the baseline; green is better, red worse."""
    rows = [m for m in e.model_metrics if m.HasField("delta_vs_baseline")]
    if not rows:
        return None
    table = Table(title=f"deltas vs baseline {escape(e.baseline_model)}")
    columns = (
        "model",
        "pass rate",
        "parse err/ep",
        "write rate",
        "loops/ep",
        "steps",
        "tokens/ep",
        "wall/ep",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in rows:
        d = m.delta_vs_baseline
        wall = d.mean_wall_time.ToNanoseconds() / 1e9
        table.add_row(
            escape(m.model),
            _delta(d.pass_rate, "+.3f", True),
            _delta(d.parse_errors_per_episode, "+.2f", False),
            _delta(d.write_rate, "+.2f", True),
            _delta(d.loop_detections_per_episode, "+.2f", False),
            _delta(d.mean_steps, "+.1f", False),
            _delta(d.mean_tokens, "+,.0f", False),
            _delta(wall, "+.1f", False) + " s" if wall else "[dim]0[/]",
        )
    return table


def task_table(e: epb.Evaluation) -> Table | None:
    """One row per task, one column per model: resolved/rollouts and why the others failed."""
    if not e.task_results:
        return None
    table = Table(title="per task")
    table.add_column("task")
    for model in e.models:
        table.add_column(escape(model))
    for row in e.task_results:
        cells = []
        for r in row.models:
            failures = Counter(_failure(f) for f in r.failure_categories)
            why = ", ".join(f"{n}x{k}" if n > 1 else k for k, n in sorted(failures.items()))
            style = (
                "green"
                if r.resolved == r.rollouts and r.rollouts
                else ("red" if not r.resolved else "yellow")
            )
            cells.append(
                f"[{style}]{r.resolved}/{r.rollouts}[/]" + (f" [dim]{escape(why)}[/]" if why else "")
            )
        table.add_row(escape(row.task_id), *cells)
    return table


def report_locations(e: epb.Evaluation, root: Path | None) -> list[tuple[str, str, str]]:
    """(what, object key, local file path or '') of each report object."""
    refs = [
        ("markdown", e.report.markdown),
        *(("chart", c) for c in e.report.charts),
        ("json", e.report.json),
    ]
    found = []
    for what, ref in refs:
        if not ref.key:
            continue
        path = root / ref.key if root is not None else None
        found.append((what, ref.key, str(path) if path is not None and path.is_file() else ""))
    return found


def print_evaluation(e: epb.Evaluation, state_dir: Path, *, with_tasks: bool = True) -> None:
    """The readable report: header, per-model table, deltas, per-task table, report objects."""
    header = (
        f"[bold]{e.id}[/] {_state(e.state)} · {escape(e.suite)}@{e.suite_version} {_split(e.split)} · "
        f"baseline {escape(e.baseline_model or (e.models[0] if e.models else '-'))} · "
        f"{e.progress.episodes_finished}/{e.progress.episodes_total} episodes in "
        f"{_elapsed(e.start_time, e.end_time)}\n[dim]{escape(_settings_line(e))}[/]"
    )
    if e.HasField("error"):
        header += f"\n[red]{escape(e.error.message)}[/]"
    out.print(header)
    if e.model_metrics and e.state == common_pb2.JOB_STATE_SUCCEEDED:
        out.print(model_table(e))
        deltas = delta_table(e)
        if deltas is not None:
            out.print(deltas)
        tasks = task_table(e) if with_tasks else None
        if tasks is not None:
            out.print(tasks)
    locations = report_locations(e, objects_root(state_dir))
    if locations:
        out.print("[bold]report[/]")
        for what, key, path in locations:
            out.print(
                f"  {what:<8} {escape(key)}" + (f"\n           {escape(path)}" if path else ""),
                soft_wrap=True,
            )


@eval_cmd.command("list")
@click.option("--suite", default="", help="Only evaluations on this suite.")
@click.option(
    "--state", type=click.Choice(sorted(STATES)), default=None, help="Only evaluations in this state."
)
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def eval_list(ctx: click.Context, suite: str, state: str | None, limit: int, as_json: bool) -> None:
    """List evaluations, newest first, with each model's pass rate."""
    request = opb.ListEvaluationsRequest(suite=suite, state=STATES[state] if state else 0)
    with _stub(ctx) as stub:
        items = list(_pages(stub.ListEvaluations, request, "evaluations", limit))
    if as_json:
        for e in items:
            click.echo(json_format.MessageToJson(e, indent=None))
        return
    table = Table(title=f"{len(items)} evaluations")
    for column in ("id", "state", "suite / split", "pass rate per model", "episodes", "created"):
        table.add_column(column, no_wrap=column == "id")
    for e in items:
        rates = "\n".join(
            f"{escape(m.model)}{'*' if m.baseline else ''} {m.pass_rate:.3f}"
            if e.state == common_pb2.JOB_STATE_SUCCEEDED
            else f"{escape(m.model)}{'*' if m.baseline else ''}"
            for m in e.model_metrics
        ) or escape(", ".join(e.models))
        table.add_row(
            e.id,
            _state(e.state),
            f"{escape(e.suite)} / {_split(e.split)}",
            rates,
            f"{e.progress.episodes_finished}/{e.progress.episodes_total}",
            _when(e.create_time),
        )
    table.caption = "* baseline"
    out.print(table)


@eval_cmd.command("show")
@click.argument("evaluation_id")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
@click.option("--no-tasks", is_flag=True, help="Leave out the per-task table.")
@click.pass_context
def eval_show(ctx: click.Context, evaluation_id: str, as_json: bool, no_tasks: bool) -> None:
    """Show one evaluation's report."""
    with _stub(ctx) as stub:
        e = stub.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    if as_json:
        out.print_json(json_format.MessageToJson(e))
        return
    print_evaluation(e, ctx.obj["state_dir"], with_tasks=not no_tasks)


@eval_cmd.command("cancel")
@click.argument("evaluation_id")
@click.pass_context
def eval_cancel(ctx: click.Context, evaluation_id: str) -> None:
    """Ask an evaluation to stop; its runs are cancelled and no report is written."""
    with _stub(ctx) as stub:
        e = stub.CancelEvaluation(opb.CancelEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    console.print(f"{e.id}: {_state(e.state)} (cancellation requested)")


@eval_cmd.command("watch")
@click.argument("evaluation_id")
@click.option("-q", "--quiet", is_flag=True, help="No line per finished episode.")
@click.pass_context
def eval_watch(ctx: click.Context, evaluation_id: str, quiet: bool) -> None:
    """Follow an evaluation to its end and print the report; Ctrl-C cancels it."""
    with _stub(ctx) as stub:
        sys.exit(follow_evaluation(stub, evaluation_id, ctx.obj["state_dir"], quiet=quiet))
