"""Benchmark of the agent orchestrator against an instant scripted model (issue #5).

    .venv/bin/python services/orchestrator/bench/bench_orchestrator.py
    .venv/bin/python services/orchestrator/bench/bench_orchestrator.py --levels 1,16,64 --out bench.json
    .venv/bin/python services/orchestrator/bench/bench_orchestrator.py --profile orch.pstats

What runs, all real except the model:

- a nats-server (JetStream) on a free port, on temporary folders;
- the sandbox runner (``python -m flywheel_sandbox``: bubblewrap + cgroups) and the trajectory
  store (``python -m flywheel_trajectory``), each its own process;
- the scripted OpenAI-compatible model server (``flywheel_testing.scripted_model``, ``explore``
  script) in its OWN process, so the CPU it burns answering is not charged to the orchestrator;
  it answers at once: list_files -> read_file -> final for repo tasks, run_code -> final for
  I/O problems;
- the orchestrator in THIS process (``build_app`` + ``app.start()`` on port 0), driven through its
  real gRPC API: CreateRun, then WatchRun until the run is terminal, as the CLI does.

For each concurrency level C, the two sides of the suite's split run one after the other
(a train run, then a test run), each with ``concurrency = C`` and enough rollouts per task that a
run has at least 2 x C episodes and the level at least ``--min-episodes`` in all. The default
suite is the tests' ``mini`` fixture (per side: one repo task, one I/O problem), so half the
episodes call the sandbox (two Judge calls each: run_code and the final verdict); the ``explore``
script never writes a file, so repo episodes end as NO_CHANGE without a sandbox call.
``--suite repo-bugs`` uses the bundled suite instead (no sandbox call at all with this script).

Overhead is measured inside the orchestrator process: the driver records per episode
``EpisodeTimes`` (total_s, model_s = time inside the policy's model call, sandbox_s = time inside
sandbox calls), and RunManager keeps them per run (``app.core.runs.job(run_id).times``, in the
same order as ``.results``, whose ``steps`` are the assistant turns). Per episode,
``overhead per step = (total_s - model_s - sandbox_s) / steps``; reported as the mean over all
steps (sum over sum) and p50/p95 over episodes. It covers the driver's own work (prompting,
parsing, tools on the in-memory workspace, building the trajectory) but NOT what happens after an
episode (storing the trajectory over gRPC, persisting the run JSON, notifying watchers), nor the
OpenAI client's own work, which sits inside model_s. The orchestrator process's CPU time per step
(``cpu_ms_per_step``: this process's CPU over the level divided by its steps) covers all of that,
so both are printed.

Also reported per level: episodes/s (episodes over the wall time of the level's runs), peak
episodes in flight (counted by wrapping ``Episode.run`` in this process), errors (episodes ending
MODEL_ERROR or SANDBOX_ERROR, runs not SUCCEEDED, trajectories missing from the store), sandbox
calls and RESOURCE_EXHAUSTED answers (counted by wrapping the sandbox client's stub methods; the
orchestrator retries those with back-off), outcome counts, CPU seconds of each process, and the
1-minute load average before and after (the machine's cores are shared).

Targets (issue #5): >= 64 concurrent episodes without errors; <= 5 ms overhead per step.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.natsserver import NatsServerProcess
from flywheel_common.server import ready_file_info
from flywheel_common.settings import load_settings
from flywheel_orchestrator import runs as runs_module
from flywheel_orchestrator.agent import Episode
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings

HERE = Path(__file__).resolve().parent
MINI = HERE.parent / "tests" / "fixtures" / "mini"
INFRA = (tpb.FAILURE_CATEGORY_MODEL_ERROR, tpb.FAILURE_CATEGORY_SANDBOX_ERROR)
SPLITS = (common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST)


# ---------------------------------------------------------------------------------- processes


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: the sandbox's runs are children of the runner.
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def start_service(module: str, prefix: str, env: dict[str, str], work: Path) -> tuple[subprocess.Popen, int]:
    """``python -m module`` on 127.0.0.1:0; returns the process and its gRPC port."""
    ready = work / f"{module}.ready"
    log = work / f"{module}.log"
    full = {
        **os.environ,
        **env,
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}PORT": "0",
        f"{prefix}READY_FILE": str(ready),
        f"{prefix}LOG_LEVEL": "warning",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = ready_file_info(ready)
        if info is not None:
            return proc, int(info["port"])
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{module} was not ready after 60 s:\n{log.read_text()[-3000:]}")


def start_model_server(work: Path) -> tuple[subprocess.Popen, str]:
    """The scripted model server (``explore``) as its own process; returns it and its base URL."""
    ready = work / "model.port"
    log = work / "model.log"
    code = "import sys; from flywheel_testing.scripted_model import main; sys.exit(main())"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "--port", "0", "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return proc, f"http://127.0.0.1:{int(ready.read_text())}/v1"
        if proc.poll() is not None:
            raise RuntimeError(f"scripted model server exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"scripted model server not ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------------------- in-process probes


class InFlight:
    """Counts episodes in flight by wrapping ``runs.Episode.run`` (the class RunManager uses)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        probe = self

        class CountedEpisode(Episode):
            async def run(self) -> tpb.Trajectory:
                probe.now += 1
                probe.peak = max(probe.peak, probe.now)
                try:
                    return await super().run()
                finally:
                    probe.now -= 1

        # A monkeypatch: runs.py looks the name up at each episode, and does not re-export it.
        runs_module.Episode = CountedEpisode  # type: ignore[attr-defined]  # see above

    def reset(self) -> None:
        self.peak = self.now


class SandboxCalls:
    """Counts sandbox RPCs and RESOURCE_EXHAUSTED answers by wrapping the client's stub methods."""

    def __init__(self, stub: Any) -> None:
        self.calls: Counter[str] = Counter()
        for name in ("RunTests", "Judge"):
            setattr(stub, name, self._wrap(name, getattr(stub, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        async def call(request: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            try:
                return await method(request, **kwargs)
            except grpc.aio.AioRpcError as err:
                self.calls[f"{name}:{err.code().name}"] += 1
                raise

        return call


# ---------------------------------------------------------------------------------- measuring


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def run_to_end(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, run: run_pb2.Run) -> run_pb2.Run:
    """CreateRun, then follow WatchRun until the terminal snapshot (as the CLI does)."""
    created = (await stub.CreateRun(opb.CreateRunRequest(run=run))).run
    last = created
    async for item in stub.WatchRun(opb.WatchRunRequest(run_id=created.id)):
        if item.WhichOneof("update") == "run":
            last = item.run
    return last


async def stored_count(store: trajectory_pb2_grpc.TrajectoryServiceStub, run_id: str) -> int:
    count, token = 0, ""
    while True:
        reply = await store.ListTrajectories(
            tpb.ListTrajectoriesRequest(
                filter=tpb.TrajectoryFilter(run_ids=[run_id]),
                view=tpb.TRAJECTORY_VIEW_BASIC,
                page_size=500,
                page_token=token,
            )
        )
        count += len(reply.trajectories)
        token = reply.next_page_token
        if not token:
            return count


async def level(
    app: Any,
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
    store: trajectory_pb2_grpc.TrajectoryServiceStub,
    probes: tuple[InFlight, SandboxCalls],
    pids: dict[str, int],
    *,
    suite: str,
    concurrency: int,
    min_episodes: int,
    tasks_per_split: dict[int, int],
    max_rollouts: int,
) -> dict[str, Any]:
    """Run both sides of the split at one concurrency; return the level's figures."""
    inflight, sandbox = probes
    inflight.reset()
    sandbox_before = Counter(sandbox.calls)
    per_run = max(2 * concurrency, math.ceil(min_episodes / len(SPLITS)))
    load_before = os.getloadavg()[0]
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    own_before = time.process_time()
    started = time.perf_counter()
    finished: list[run_pb2.Run] = []
    for split in SPLITS:
        rollouts = min(max_rollouts, math.ceil(per_run / tasks_per_split[split]))
        run = run_pb2.Run(
            suite=suite,
            split=split,
            model="scripted",
            teacher_kind=tpb.TEACHER_KIND_MODEL,
            rollouts_per_task=rollouts,
            concurrency=concurrency,
            labels={"bench": f"c{concurrency}"},
        )
        finished.append(await run_to_end(stub, run))
    wall = time.perf_counter() - started
    own_cpu = time.process_time() - own_before
    cpu = {name: round(cpu_s(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    cpu["orchestrator"] = round(own_cpu, 2)
    load_after = os.getloadavg()[0]

    overheads: list[float] = []  # per episode, seconds per step
    total_over = total_steps = 0.0
    model_s = sandbox_s = total_s = 0.0
    outcomes: Counter[str] = Counter()
    infra = 0
    run_failures: list[str] = []
    missing = 0
    episodes = 0
    for run in finished:
        if run.state != common_pb2.JOB_STATE_SUCCEEDED:
            run_failures.append(f"{run.id}: {common_pb2.JobState.Name(run.state)} {run.error.message}")
        state = app.core.runs.job(run.id)
        if len(state.times) != len(state.results):
            raise RuntimeError(f"run {run.id}: {len(state.times)} times for {len(state.results)} results")
        for times, result in zip(state.times, state.results, strict=True):
            episodes += 1
            over = times.total_s - times.model_s - times.sandbox_s
            steps = max(1, result.steps)
            overheads.append(over / steps)
            total_over += over
            total_steps += result.steps
            model_s += times.model_s
            sandbox_s += times.sandbox_s
            total_s += times.total_s
            outcomes[tpb.FailureCategory.Name(result.failure_category).removeprefix("FAILURE_CATEGORY_")] += 1
            infra += result.failure_category in INFRA
        missing += run.counters.episodes_total - await stored_count(store, run.id)
    calls = {
        k: v - sandbox_before.get(k, 0) for k, v in sandbox.calls.items() if v - sandbox_before.get(k, 0)
    }
    steps_i = int(total_steps)
    return {
        "concurrency": concurrency,
        "runs": [r.id for r in finished],
        "episodes": episodes,
        "peak_in_flight": inflight.peak,
        "wall_s": round(wall, 2),
        "episodes_per_s": round(episodes / wall, 2),
        "steps": steps_i,
        "errors": {
            "infra_episodes": infra,
            "run_failures": run_failures,
            "trajectories_missing": missing,
        },
        "overhead_ms_per_step": {
            "mean": round(total_over / max(1, steps_i) * 1000, 3),
            "p50": round(pct(overheads, 50) * 1000, 3),
            "p95": round(pct(overheads, 95) * 1000, 3),
            "max": round(max(overheads) * 1000, 3),
        },
        "cpu_ms_per_step": round(own_cpu / max(1, steps_i) * 1000, 3),
        "mean_per_episode_s": {
            "total": round(total_s / max(1, episodes), 4),
            "model": round(model_s / max(1, episodes), 4),
            "sandbox": round(sandbox_s / max(1, episodes), 4),
        },
        "sandbox_calls": calls,
        "outcomes": dict(sorted(outcomes.items())),
        "cpu_s": cpu,
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
    }


async def bench(args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int]) -> dict[str, Any]:
    suite_dirs = [MINI] if args.suite == "mini" else []
    settings = load_settings(
        OrchestratorSettings,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        gateway_base_url=urls["model"],
        sandbox_address=urls["sandbox"],
        trajectory_address=urls["trajectory"],
        suite_dirs=suite_dirs,
        model_concurrency=max(64, max(args.levels)),
        max_concurrency=max(128, max(args.levels)),
    )
    inflight = InFlight()
    app = build_app(settings)
    port = await app.start()
    sandbox = SandboxCalls(app.core.sandbox.stub)
    suite = app.core.catalog.get(args.suite)
    if suite is None:
        raise SystemExit(f"suite {args.suite!r} not found (known: {sorted(app.core.catalog.suites)})")
    tasks_per_split = {s: len(suite.select(s)) for s in SPLITS}
    kinds = Counter(type(t).__name__ for t in suite.tasks.values())
    out: dict[str, Any] = {
        "suite": args.suite,
        "suite_tasks": dict(kinds),
        "tasks_per_split": {common_pb2.TaskSplit.Name(k): v for k, v in tasks_per_split.items()},
        "sandbox_max_concurrency": args.sandbox_concurrency,
        "sandbox_queue_size": args.sandbox_queue,
        "model_server": "separate process (scripted.explore)",
        "cores": os.cpu_count(),
        "levels": [],
    }
    profiler = cProfile.Profile() if args.profile else None
    try:
        async with (
            auth.channel(f"127.0.0.1:{port}") as ch,
            auth.channel(urls["trajectory"]) as tch,
        ):
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            store = trajectory_pb2_grpc.TrajectoryServiceStub(tch)
            common = {
                "suite": args.suite,
                "tasks_per_split": tasks_per_split,
                "max_rollouts": settings.max_rollouts_per_task,
            }
            # Warm-up (not reported): first connections, lazy imports, the sandbox's warm pool.
            await level(app, stub, store, (inflight, sandbox), pids, concurrency=2, min_episodes=8, **common)
            if profiler is not None:
                profiler.enable()
            for c in args.levels:
                figures = await level(
                    app,
                    stub,
                    store,
                    (inflight, sandbox),
                    pids,
                    concurrency=c,
                    min_episodes=args.min_episodes,
                    **common,
                )
                out["levels"].append(figures)
                print(summary_line(figures), flush=True)
    finally:
        if profiler is not None:
            profiler.disable()
        await app.stop(grace=1.0)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        print(text.getvalue())
    return out


def summary_line(f: dict[str, Any]) -> str:
    o = f["overhead_ms_per_step"]
    return (
        f"c={f['concurrency']}: {f['episodes']} episodes in {f['wall_s']} s, peak {f['peak_in_flight']} in flight, "
        f"overhead/step mean {o['mean']} ms p50 {o['p50']} p95 {o['p95']}, load {f['load_average_1m']}"
    )


def table(out: dict[str, Any]) -> str:
    head = (
        f"{'conc':>4} {'peak':>4} {'episodes':>8} {'ep/s':>7} {'steps':>6} {'errors':>6} "
        f"{'ovh mean':>8} {'p50':>7} {'p95':>7} {'cpu/step':>8} {'model/ep':>8} {'sbx/ep':>7} {'load 1m':>11}"
    )
    lines = [head, "-" * len(head)]
    for f in out["levels"]:
        e = f["errors"]
        errors = e["infra_episodes"] + len(e["run_failures"]) + e["trajectories_missing"]
        o = f["overhead_ms_per_step"]
        m = f["mean_per_episode_s"]
        load = f"{f['load_average_1m'][0]}->{f['load_average_1m'][1]}"
        lines.append(
            f"{f['concurrency']:>4} {f['peak_in_flight']:>4} {f['episodes']:>8} {f['episodes_per_s']:>7} "
            f"{f['steps']:>6} {errors:>6} {o['mean']:>8} {o['p50']:>7} {o['p95']:>7} {f['cpu_ms_per_step']:>8} "
            f"{m['model'] * 1000:>8.1f} {m['sandbox'] * 1000:>7.1f} {load:>11}"
        )
    lines.append("(ms per step for overhead and cpu; model/ep and sbx/ep in ms per episode)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--min-episodes", type=int, default=64, help="episodes per level at least")
    parser.add_argument("--suite", default="mini", choices=("mini", "repo-bugs"))
    parser.add_argument(
        "--sandbox-concurrency", type=int, default=2, help="FLYWHEEL_SANDBOX_MAX_CONCURRENCY (runs at once)"
    )
    parser.add_argument(
        "--sandbox-queue", type=int, default=128, help="FLYWHEEL_SANDBOX_QUEUE_SIZE (waiting requests)"
    )
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    parser.add_argument("--profile", default="", help="cProfile the orchestrator process over the levels")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]

    work = Path(tempfile.mkdtemp(prefix="orch-bench-", dir=os.environ.get("BENCH_DIR")))
    shared = {
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(work / "objects"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(work / "index"),
    }
    nats = NatsServerProcess(store_dir=work / "nats", log_file=work / "nats.log")
    procs: list[subprocess.Popen] = []
    try:
        nats.start()
        shared["FLYWHEEL_NATS_URL"] = nats.url
        sandbox, sport = start_service(
            "flywheel_sandbox",
            "FLYWHEEL_SANDBOX_",
            {
                **shared,
                "FLYWHEEL_SANDBOX_MAX_CONCURRENCY": str(args.sandbox_concurrency),
                "FLYWHEEL_SANDBOX_QUEUE_SIZE": str(args.sandbox_queue),
            },
            work,
        )
        procs.append(sandbox)
        store, tport = start_service("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", shared, work)
        procs.append(store)
        model, base_url = start_model_server(work)
        procs.append(model)
        # The orchestrator runs in this process and reads the shared settings from the environment.
        os.environ.update(shared)
        urls = {"model": base_url, "sandbox": f"127.0.0.1:{sport}", "trajectory": f"127.0.0.1:{tport}"}
        pids = {"model": model.pid, "sandbox": sandbox.pid, "trajectory": store.pid, "nats": nats.pid or 0}
        out = asyncio.run(bench(args, urls, pids))
    finally:
        for proc in reversed(procs):
            stop(proc)
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    out["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(table(out))
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    failed = [
        f["concurrency"]
        for f in out["levels"]
        if f["errors"]["infra_episodes"] or f["errors"]["run_failures"] or f["errors"]["trajectories_missing"]
    ]
    if failed:
        print(f"errors at concurrency {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
