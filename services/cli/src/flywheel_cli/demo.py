"""``flywheel demo`` (what ``make demo`` runs): one improvement loop, end to end, on this machine.

The demo starts the embedded stack, makes sure the base model is in the registry (importing the
packaged Gemma 3 270M GGUF the first time), and starts one automated loop on the orchestrator:
reference-teacher rollouts on the TRAIN side of the bundled ``repo-bugs`` suite, a ``step_sft``
dataset, a LoRA fine-tune, hot-loading through adapter sync, an evaluation of the candidate
against the base model on held-out TEST tasks (JSON tool protocol), and the promotion gate. The
loop itself runs in the services and moves on NATS events; this command only starts it, shows
its progress, prints the command that repeats each step by hand, and writes the report.

``flywheel loop show|list|watch|cancel`` (loops.py) look at loops started by the demo or by ``grpcurl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli import demo_plan, rpc
from flywheel_cli.evals import delta_table, model_table
from flywheel_cli.loops import Follower, stage_name, stage_seconds, state_name
from flywheel_cli.render import console
from flywheel_cli.stack import Stack, StackError

ORCH = "flywheel.orchestrator.v1.OrchestratorService"

#: The demo's tasks at most: the smallest of each side of repo-bugs' split (the test ones are held
#: out: never seen in training). ``--time-budget`` keeps the first N of each that fit the budget
#: on this machine (demo_plan.py); ``--all-tasks`` uses every task of both sides.
DEMO_TRAIN_TASKS = (
    "memoize-kwargs", "word-freq-case", "median-even", "flatten-tuples", "polygon-area-closing",
    "unit-convert-inverted", "percentile-index", "rect-overlap-disjoint", "money-negative-format",
    "age-before-birthday", "next-weekday-same-day", "round-robin-modulus", "histogram-negative",
    "truncate-ellipsis", "duration-multi-digit", "csv-blank-lines",
)  # fmt: skip
DEMO_TEST_TASKS = (
    "fahrenheit-int-division", "inventory-low-stock-order", "version-compare-numeric", "word-wrap-space",
    "priority-fifo-ties", "log-message-spaces",
)  # fmt: skip


def demo_loop(args: dict[str, Any]) -> lpb.Loop:
    """The loop the demo starts (every knob has a CLI option)."""
    teacher = args["teacher_model"]
    loop = lpb.Loop(
        suite=args["suite"],
        base_model=args["base_model"],
        teacher_kind=tpb.TEACHER_KIND_MODEL if teacher else tpb.TEACHER_KIND_REFERENCE,
        teacher_model=teacher,
        episode=run_pb2.EpisodeSettings(
            protocol=common_pb2.TOOL_PROTOCOL_JSON,
            test_policy=run_pb2.TEST_POLICY_END,
            limits=run_pb2.EpisodeLimits(
                max_iterations=args["max_iterations"], max_consecutive_parse_errors=2
            ),
            # Greedy, and a stop at a blank line: a JSON turn is one line, so this only cuts rambling.
            sampling=common_pb2.SamplingParams(
                temperature=0.0, max_tokens=args["max_completion_tokens"], stop=["\n\n"]
            ),
        ),
        # Episodes at once: the model server batches waiting requests of one model (2.07x / 2.15x
        # the tokens/s of one at a time at 2 / 4, services/model-server/README.md).
        concurrency=demo_plan.CONCURRENCY,
        recipe="step_sft",
        dataset_split=dpb.SplitConfig(train_ratio=1.0),
        method=trpb.FINE_TUNE_METHOD_SFT,
        hyperparameters=trpb.Hyperparameters(
            epochs=args["epochs"],
            learning_rate=args["learning_rate"],
            batch_size=4,
            gradient_accumulation_steps=1,
            max_seq_length=2048,
            lora=trpb.LoraConfig(rank=16, alpha=32, dropout=0.05),
        ),
        adapter_name=args["adapter_name"],
        gate=lpb.PromotionGate(metric=lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE, margin=args["margin"]),
        labels={"source": "flywheel-demo"},
        rounds=args["rounds"],
    )
    if args.get("train_task_ids") is not None:  # the plan's (or the user's) sizes
        loop.train_task_ids.extend(args["train_task_ids"])
        loop.test_task_ids.extend(args["test_task_ids"])
    elif not args["all_tasks"]:
        loop.train_task_ids.extend(DEMO_TRAIN_TASKS)
        loop.test_task_ids.extend(DEMO_TEST_TASKS)
    return loop


#: Per resource, the fields its service fills in (OUTPUT_ONLY in the protos) plus the loop link:
#: what is left is the request that creates the same job again, outside the loop.
_COMMON_OUTPUT = ("id", "loop_id", "state", "error", "progress", "create_time", "start_time", "end_time")
OUTPUT_FIELDS = {
    "flywheel.orchestrator.v1.Run": {*_COMMON_OUTPUT, "suite_version", "prompt_sha256", "counters"},
    "flywheel.dataset.v1.DatasetBuild": {*_COMMON_OUTPUT, "dataset_id"},
    "flywheel.trainer.v1.FineTuneJob": {*_COMMON_OUTPUT, "latest_metrics", "last_checkpoint", "resume_count",
                                        "device", "adapter"},
    "flywheel.orchestrator.v1.Evaluation": {*_COMMON_OUTPUT, "suite_version", "model_metrics", "task_results",
                                            "report"},
}  # fmt: skip


def repeatable(resource: Any) -> Any:
    """A copy of a run / dataset build / fine-tune job / evaluation as a create request sends it."""
    out = type(resource)()
    out.CopyFrom(resource)
    fields = out.DESCRIPTOR.fields_by_name
    for name in OUTPUT_FIELDS[out.DESCRIPTOR.full_name] & set(fields):
        out.ClearField(name)
    out.labels.pop("loop_id", None)
    return out


#: The header every printed grpcurl command sends (the services need the service token).
TOKEN_HEADER = "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"


def grpcurl_line(address: str, method: str, message: Any) -> str:
    body = json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True), separators=(",", ":")
    )
    # The demo prints once where the token is and how to export it (see demo()).
    return f"grpcurl -plaintext -H \"{TOKEN_HEADER}\" -d '{body}' {address} {method}"


def repeat_commands(follower: Follower, status: lpb.LoopStageStatus) -> list[str]:
    """How to look at, and how to repeat by hand, what a stage did."""
    o, d, t = follower.addr["orchestrator"], follower.addr["dataset-svc"], follower.addr["trainer-svc"]
    datasets, trainer = follower.datasets, follower.trainer
    out: list[str] = []
    with contextlib.suppress(grpc.RpcError):
        for a in status.artefacts:
            if a.kind == common_pb2.RESOURCE_KIND_RUN:
                run = follower.orch.GetRun(opb.GetRunRequest(run_id=a.id), timeout=10).run
                out += [f"look:   flywheel run show {a.id}",
                        "repeat: " + grpcurl_line(o, f"{ORCH}/CreateRun", opb.CreateRunRequest(run=repeatable(run)))]  # fmt: skip
            elif a.kind == common_pb2.RESOURCE_KIND_DATASET_BUILD and datasets is not None:
                build = datasets.GetDatasetBuild(dpb.GetDatasetBuildRequest(build_id=a.id), timeout=10).build
                out += [f"look:   flywheel dataset show {a.id}",
                        "repeat: " + grpcurl_line(d, "flywheel.dataset.v1.DatasetService/CreateDatasetBuild",
                                                  dpb.CreateDatasetBuildRequest(build=repeatable(build)))]  # fmt: skip
            elif a.kind == common_pb2.RESOURCE_KIND_FINE_TUNE_JOB and trainer is not None:
                job = trainer.GetFineTuneJob(trpb.GetFineTuneJobRequest(job_id=a.id), timeout=10).job
                out += [f"look:   flywheel finetune watch {a.id}",
                        "repeat: " + grpcurl_line(t, "flywheel.trainer.v1.TrainerService/CreateFineTuneJob",
                                                  trpb.CreateFineTuneJobRequest(job=repeatable(job)))]  # fmt: skip
            elif a.kind == common_pb2.RESOURCE_KIND_ADAPTER:
                name, _, version = a.id.partition("/")
                out += ["look:   " + grpcurl_line(t, "flywheel.trainer.v1.TrainerService/GetAdapter",
                                                  trpb.GetAdapterRequest(name=name, version=int(version or 0)))]  # fmt: skip
            elif a.kind == common_pb2.RESOURCE_KIND_LOOP:
                out += [f"look:   flywheel loop watch {a.id}"]
            elif a.kind == common_pb2.RESOURCE_KIND_EVALUATION:
                e = follower.orch.GetEvaluation(
                    opb.GetEvaluationRequest(evaluation_id=a.id), timeout=10
                ).evaluation
                out += [f"look:   flywheel eval show {a.id}",
                        "repeat: " + grpcurl_line(o, f"{ORCH}/CreateEvaluation",
                                                  opb.CreateEvaluationRequest(evaluation=repeatable(e)))]  # fmt: skip
    return out


def ensure_base_model(stack: Stack, follower: Follower, base_model: str, gguf: str | None) -> float:
    """Import the packaged Gemma 3 270M (or --gguf) once; returns the seconds it took (0 if present)."""
    assert follower.trainer is not None, "the demo follows the loop with every service's address"
    names = [
        m.name for m in follower.trainer.ListBaseModels(trpb.ListBaseModelsRequest(), timeout=30).base_models
    ]
    if base_model in names:
        console.print(f"base model [bold]{base_model}[/] is in the registry")
        return 0.0
    if base_model != "gemma-3-270m" and not gguf:
        raise click.ClickException(
            f"base model {base_model!r} is not in the registry ({', '.join(names) or 'empty'}); "
            "import it first (flywheel-trainer-import-gguf --gguf FILE --name NAME) or pass --gguf"
        )
    command = [sys.executable, "-m", "flywheel_trainer.gguf_import", "--name", base_model]
    if gguf:
        command += ["--gguf", gguf]
    console.print(f"importing the base model (once): [cyan]{' '.join(command[1:])}[/]")
    env = {**os.environ, **stack.object_store_env()}
    started = time.monotonic()
    with console.status("converting GGUF → Hugging Face format…"):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"base model import failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    console.print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "imported")
    return time.monotonic() - started


def read_object(stack: Stack, key: str) -> bytes:
    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store

    env = stack.object_store_env()
    if env.get("FLYWHEEL_OBJECT_STORE_BACKEND") == "fs":
        return (Path(env["FLYWHEEL_OBJECT_STORE_ROOT"]) / key).read_bytes()
    return open_object_store(ObjectStoreSettings()).get_bytes(key)


def alias_section(loop_report: str) -> list[str]:
    """The served alias's part of the orchestrator's loop report (its promotion and history)."""
    for heading in ("## Promotion", "### Alias"):
        at = loop_report.find(heading)
        if at >= 0:
            return ["", "## Served alias", "", loop_report[at:].replace(heading, f"#{heading}", 1).strip()]
    return []


def write_report(
    stack: Stack,
    follower: Follower,
    loop: lpb.Loop,
    out_dir: Path,
    timings: dict[str, float],
    parent: lpb.Loop | None = None,
    the_plan: demo_plan.Plan | None = None,
) -> Path:
    """REPORT.md plus the charts, in ``out_dir``; returns the Markdown file. With ``parent`` (a
    loop of several rounds), ``loop`` is its last round and the rounds' report comes first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = {a.kind: a.id for s in loop.stages for a in s.artefacts}
    lines = [f"# Flywheel demo: loop {(parent or loop).id}", ""]
    if parent is not None and parent.report.key:
        rounds_md = read_object(stack, parent.report.key).decode()
        (out_dir / "rounds.md").write_text(rounds_md)
        with contextlib.suppress(Exception):
            (out_dir / "rounds.png").write_bytes(read_object(stack, f"reports/{parent.id}/rounds.png"))
        lines += [
            f"{len(parent.round_results)} rounds (details and chart: [rounds.md](rounds.md)); the last round "
            f"is below. The alias `{parent.alias}` serves `{parent.candidate_model or parent.incumbent_model}`.",
            "",
            "![TEST pass rate per round](rounds.png)",
            "",
            f"## Round {loop.round}: loop {loop.id}",
            "",
        ]
    decision = lpb.GateDecision.Name(loop.gate_result.decision).removeprefix("GATE_DECISION_").lower()
    lines += [
        f"Base model `{loop.base_model}` (incumbent `{loop.incumbent_model}`), candidate `{loop.candidate_model}`, "
        f"suite `{loop.suite}`: {len(loop.train_task_ids) or 'all'} train tasks, {len(loop.test_task_ids) or 'all'} "
        "held-out test tasks, JSON tool protocol.",
        "",
        f"**Gate ({decision})**: {loop.gate_result.reason}."
        if loop.HasField("gate_result")
        else f"**Loop {state_name(loop.state)}**: {loop.error.message}",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    for name, secs in timings.items():
        lines.append(f"| {name} | {secs:.0f} |")
    for s in loop.stages:
        lines.append(f"| {stage_name(s.stage)} | {stage_seconds(s.start_time, s.end_time):.0f} |")
    lines.append(
        f"| **total** | {sum(timings.values()) + stage_seconds(loop.create_time, loop.end_time):.0f} |"
    )
    if the_plan is not None:
        lines += ["", "## Plan (sized to the time budget)", "", "```", *demo_plan.plan_lines(the_plan), "```"]
        actual: dict[int, float] = {
            s.stage: stage_seconds(s.start_time, s.end_time) for s in loop.stages if s.end_time.seconds
        }
        lines += ["", "| stage | estimated s | actual s |", "|---|---:|---:|"]
        lines += [
            f"| {demo_plan.STAGE_LABELS[k]} | {v:.0f} | {actual[k]:.0f} |" if k in actual
            else f"| {demo_plan.STAGE_LABELS[k]} | {v:.0f} | - |"
            for k, v in the_plan.stages.items()
        ]  # fmt: skip
        if the_plan.reduced:
            lines += ["", "Reduced to fit: " + "; ".join(the_plan.reduced) + "."]
    charts: list[tuple[str, str]] = []
    eval_id = ids.get(common_pb2.RESOURCE_KIND_EVALUATION)
    e: epb.Evaluation | None = None
    if eval_id:
        e = follower.orch.GetEvaluation(
            opb.GetEvaluationRequest(evaluation_id=eval_id), timeout=30
        ).evaluation
        if e.report.charts:
            (out_dir / "evaluation.png").write_bytes(read_object(stack, e.report.charts[0].key))
            charts.append(("Baseline vs candidate", "evaluation.png"))
        if e.report.markdown.key:
            (out_dir / "evaluation.md").write_bytes(read_object(stack, e.report.markdown.key))
    adapter = ids.get(common_pb2.RESOURCE_KIND_ADAPTER)
    if adapter and follower.trainer is not None:
        name, _, version = adapter.partition("/")
        a = follower.trainer.GetAdapter(
            trpb.GetAdapterRequest(name=name, version=int(version)), timeout=30
        ).adapter
        if a.loss_curve.key:
            (out_dir / "training_loss.png").write_bytes(read_object(stack, a.loss_curve.key))
            charts.insert(0, ("Training loss", "training_loss.png"))
    if e is not None:
        lines += ["", "## Baseline vs candidate (held-out tasks)", "", "| metric | " + " | ".join(f"`{m.model}`" for m in e.model_metrics) + " |",
                  "|---|" + "---:|" * len(e.model_metrics)]  # fmt: skip
        rows = [("pass rate", "pass_rate", "{:.3f}"), ("parse errors / episode", "parse_errors_per_episode", "{:.2f}"),
                ("write rate", "write_rate", "{:.2f}"), ("loop detections / episode", "loop_detections_per_episode", "{:.2f}"),
                ("steps / episode", "mean_steps", "{:.2f}"), ("episodes", "episodes", "{}")]  # fmt: skip
        for label, fld, fmt in rows:
            lines.append(
                f"| {label} | " + " | ".join(fmt.format(getattr(m, fld)) for m in e.model_metrics) + " |"
            )
    for title, file in charts:
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    lines += ["", "## Where everything lives", "", "| artefact | id |", "|---|---|"]
    seen: set[tuple[int, str]] = set()
    for s in loop.stages:
        for a in s.artefacts:
            if (a.kind, a.id) in seen:  # a stage also lists the artefact it started from
                continue
            seen.add((a.kind, a.id))
            lines.append(
                f"| {common_pb2.ResourceKind.Name(a.kind).removeprefix('RESOURCE_KIND_').lower()} | `{a.id}` |"
            )
    lines += [
        "",
        f"Object store: {stack.describe_object_store()} (reports under `reports/`, adapters under `adapters/`, "
        f"trajectories under `trajectories/`, datasets under `datasets/`); logs: {stack.log_dir}.",
    ]
    lines += console_section(stack, loop)
    if loop.report.key:
        loop_md = read_object(stack, loop.report.key)
        (out_dir / "loop.md").write_bytes(loop_md)
        lines += alias_section(loop_md.decode())
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


CONSOLE_PAGES = {
    common_pb2.RESOURCE_KIND_RUN: "runs",
    common_pb2.RESOURCE_KIND_DATASET: "datasets",
    common_pb2.RESOURCE_KIND_FINE_TUNE_JOB: "jobs",
    common_pb2.RESOURCE_KIND_EVALUATION: "evaluations",
}


def console_section(stack: Stack, loop: lpb.Loop) -> list[str]:
    """Links to the web console's pages of the loop and what it made (live while the stack runs)."""
    gateway = next((c.address for c in stack.children if c.component.name == "gateway"), None)
    if gateway is None:
        return []
    base = f"http://{gateway}/console"
    links = [f"- [loop {loop.id}]({base}/loops/{loop.id}): stage timeline, gate, alias history"]
    seen: set[str] = set()
    for s in loop.stages:
        for a in s.artefacts:
            page = CONSOLE_PAGES.get(a.kind)
            if page and a.id not in seen:
                seen.add(a.id)
                kind = (
                    common_pb2.ResourceKind.Name(a.kind)
                    .removeprefix("RESOURCE_KIND_")
                    .lower()
                    .replace("_", " ")
                )
                links.append(f"- [{kind} {a.id}]({base}/{page}/{a.id})")
    return [
        "",
        "## In the console",
        "",
        f"While the stack runs (`flywheel demo --keep-running`, or `flywheel up` on the same state folder), these "
        f"pages show the same figures live; sign in with the key in `{stack.state_dir / 'gateway.key'}`.",
        "",
        *links,
    ]


def size_demo(
    ctx: click.Context,
    stack: Stack,
    addresses: dict[str, str],
    args: dict[str, Any],
    started: float,
    timings: dict[str, float],
) -> demo_plan.Plan | None:
    """Calibrate, plan and print the plan; sets the planned sizes into ``args``. None without a
    budget (``--time-budget 0``) or with ``--all-tasks``: the sizes are then used as given."""
    train = list(DEMO_TRAIN_TASKS[: args["train_tasks"]] if args["train_tasks"] else DEMO_TRAIN_TASKS)
    test = list(DEMO_TEST_TASKS[: args["test_tasks"]] if args["test_tasks"] else DEMO_TEST_TASKS)
    args["train_task_ids"], args["test_task_ids"] = (None, None) if args["all_tasks"] else (train, test)
    if not args["time_budget"] or args["all_tasks"] or args["suite"] != "repo-bugs":
        return None
    explicit = {
        name
        for name in ("train_tasks", "test_tasks", "max_iterations", "epochs", "max_completion_tokens")
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
    from flywheel_trainer.catalog import fetch_base_model

    t = time.monotonic()
    with console.status("calibrating: one LoRA step and one generation on this machine…"):
        env = stack.object_store_env()
        local = Path(env.get("FLYWHEEL_OBJECT_STORE_ROOT", "")) / "base-models" / args["base_model"]
        if not (local / "config.json").exists():
            # The stack's filesystem store, or the S3 store the environment configures.
            settings = (
                ObjectStoreSettings(backend="fs", root=local.parents[1]) if env else ObjectStoreSettings()
            )
            store = open_object_store(settings)
            local = fetch_base_model(store, args["base_model"], stack.state_dir / "calibration-cache")
        try:
            cal = demo_plan.calibrate(
                local,
                f"http://{addresses['gateway']}/v1",
                stack.gateway_key(),
                args["base_model"],
                demo_plan.calibration_prompt([Path(demo_plan.__file__).read_text()]),
            )
        except TimeoutError as e:
            raise click.ClickException(f"calibration: {e} (see {stack.state_dir / 'logs'})") from e
    timings["calibration"] = time.monotonic() - t
    console.print(f"calibration: {cal.describe()}")
    sizes = demo_plan.Sizes(train, test, args["epochs"], args["max_iterations"], args["max_completion_tokens"],
                            fixed=explicit)  # fmt: skip
    left = args["time_budget"] * 60 - (time.monotonic() - started)
    the_plan = demo_plan.plan(sizes, cal, left)
    console.print(f"plan for a {args['time_budget']:g}-minute budget:")
    for line in demo_plan.plan_lines(the_plan):
        console.print(f"  {line}", highlight=False)
    if the_plan.reduced:
        console.print("  reduced to fit: " + "; ".join(the_plan.reduced), highlight=False)
    if not the_plan.fits:
        console.print(
            f"[yellow]the smallest demo does not fit: expect about {the_plan.total_s / 60:.0f} min for the loop "
            f"({the_plan.budget_s / 60:.1f} min were left); --time-budget sets what you accept[/]"
        )
    args["train_task_ids"], args["test_task_ids"] = the_plan.sizes.train_tasks, the_plan.sizes.test_tasks
    args["max_iterations"] = the_plan.sizes.max_iterations
    args["epochs"] = the_plan.sizes.epochs
    return the_plan


@click.command()
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("~/.flywheel/demo"),
              show_default=True, help="Where the demo's stack keeps its data (reused by later runs).")  # fmt: skip
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-report"),
              show_default=True, help="Where REPORT.md and the charts are written.")  # fmt: skip
@click.option(
    "--base-model", default="gemma-3-270m", show_default=True, help="Trainer registry name of the base model."
)
@click.option(
    "--gguf",
    default=None,
    help="Import this GGUF file as --base-model first (default: the packaged Gemma 3 270M).",
)
@click.option("--teacher-model", default="", help="A gateway model name to use as the teacher (e.g. a hosted model "
              "configured with an API key, see gateway/README.md); default: the reference teacher.")  # fmt: skip
@click.option("--suite", default="repo-bugs", show_default=True)
@click.option(
    "--all-tasks",
    is_flag=True,
    help="Every task of the suite (slower) instead of the demo's 16 train / 6 test.",
)
@click.option("--epochs", default=2.0, show_default=True)
@click.option("--learning-rate", default=5e-4, show_default=True)
@click.option("--max-iterations", default=6, show_default=True, help="Agent turns per evaluation episode.")
@click.option("--max-completion-tokens", default=384, show_default=True, help="Tokens per model answer.")
@click.option(
    "--margin",
    default=0.1,
    show_default=True,
    help="Gate: parse errors per episode must drop by more than this.",
)
@click.option("--adapter-name", default="demo-agent", show_default=True)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Rounds of the loop: each starts from the adapter the last one promoted into the alias "
    "agent/<adapter-name>, on its data plus new rollouts (each round takes about as long as the first).",
)
@click.option(
    "--time-budget",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Minutes the whole demo may take (install excluded): a calibration on this machine sizes the "
    "tasks and turns to fit, and the plan says what was reduced. 0 = no sizing (the sizes as given).",
)
@click.option("--train-tasks", type=click.IntRange(1), default=None, help="Use the first N demo train tasks "
              "(fixed: the time budget does not change it).")  # fmt: skip
@click.option("--test-tasks", type=click.IntRange(1), default=None, help="Use the first N demo held-out tasks "
              "(fixed: the time budget does not change it).")  # fmt: skip
@click.option("--keep-running", is_flag=True, help="Leave the stack running at the end (Ctrl-C to stop).")
@click.pass_context
def demo(
    ctx: click.Context, state_dir: Path, report_dir: Path, base_model: str, gguf: str | None, **args: Any
) -> None:
    """Run one improvement loop on this machine, end to end, and write a report."""
    args["base_model"] = base_model
    started = time.monotonic()
    timings: dict[str, float] = {}
    os.environ.setdefault("FLYWHEEL_MODEL_SERVER_BASE_MODEL", base_model)
    os.environ.setdefault("FLYWHEEL_GATEWAY_BASE_MODELS", json.dumps([base_model]))

    def event(name: str, message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] [bold]{name:<16}[/] {message}")

    stack = Stack(state_dir, on_event=event)
    try:
        with console.status("starting the stack…"):
            stack.start(timeout_s=120)
    except StackError as err:
        raise click.ClickException(str(err)) from None
    timings["start the stack"] = time.monotonic() - started
    addresses = {c.component.name: c.address for c in stack.children}
    follower = Follower(addresses, describe=repeat_commands)
    try:
        # The demo starts its own stack: a failed RPC is shown without the `flywheel up` hint.
        with rpc.errors():
            t = time.monotonic()
            ensure_base_model(stack, follower, base_model, gguf)
            timings["base model import"] = time.monotonic() - t
            the_plan = size_demo(ctx, stack, addresses, args, started, timings)
            if the_plan is not None:
                follower.caption = demo_plan.Eta(the_plan).caption
            loop = demo_loop(args)
            orch = addresses["orchestrator"]
            token_file = stack.info().service_token_file
            console.print(
                "the grpcurl commands below send the service token: "
                + (
                    f"export FLYWHEEL_SERVICE_TOKEN=$(cat {token_file})"
                    if token_file
                    else "from FLYWHEEL_SERVICE_TOKEN"
                ),
                soft_wrap=True,
                highlight=False,
            )
            console.print("starting the loop:")
            console.print(
                f"  [cyan]{grpcurl_line(orch, f'{ORCH}/CreateLoop', opb.CreateLoopRequest(loop=loop))}[/]",
                soft_wrap=True,
                highlight=False,
            )
            created = follower.orch.CreateLoop(opb.CreateLoopRequest(loop=loop), timeout=60).loop
            console.print(
                f"loop [bold]{created.id}[/]; follow it elsewhere with [cyan]flywheel loop watch {created.id}[/]"
            )
            console.print(
                f"console: [cyan]http://{addresses['gateway']}/console/loops/{created.id}[/] "
                f"(sign in with the key in {stack.state_dir / 'gateway.key'})"
            )
            final = follower.follow(created.id)
            parent = None
            if final.round_results:
                parent, final = (
                    final,
                    follower.orch.GetLoop(
                        opb.GetLoopRequest(loop_id=final.round_results[-1].loop_id), timeout=30
                    ).loop,
                )
            report = write_report(stack, follower, final, report_dir.resolve(), timings, parent, the_plan)
            e_id = next(
                (
                    a.id
                    for s in final.stages
                    for a in s.artefacts
                    if a.kind == common_pb2.RESOURCE_KIND_EVALUATION
                ),
                "",
            )
            if e_id:
                e = follower.orch.GetEvaluation(
                    opb.GetEvaluationRequest(evaluation_id=e_id), timeout=30
                ).evaluation
                console.print(model_table(e))
                deltas = delta_table(e)
                if deltas is not None:
                    console.print(deltas)
            console.print(
                f"report: [bold]{report}[/] (charts beside it); total {time.monotonic() - started:.0f} s"
            )
            ended = parent or final
            if ended.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise click.ClickException(f"the loop ended {state_name(ended.state)}: {ended.error.message}")
            if args["keep_running"]:
                console.print("the stack keeps running; Ctrl-C stops it")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted: stopping the stack (the loop resumes if you run the demo again)[/]"
        )
    finally:
        follower.close()
        stack.stop()
