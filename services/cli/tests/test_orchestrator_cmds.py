"""``flywheel suites|run|eval`` against the real orchestrator.

The orchestrator boots in-process on port 0 (the CLI still reaches it over gRPC only, from a
worker thread or, for Ctrl-C, from a real ``python -m flywheel_cli`` process), wired to the real
sandbox runner and trajectory store started as processes, and to the session's nats-server. The
one stand-in is the model: ``flywheel_testing.scripted_model.ScriptedModelServer``, an
OpenAI-compatible HTTP server answering from a script, because a hosted model cannot run here and
a small real model would not give the same answers twice. Runs with ``--reference`` need no model.
The suite is the orchestrator's hand-checked ``mini`` fixture: TRAIN = add-bug (repo) and double
(I/O); TEST = greet-bug (repo) and upper (I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
from flywheel_cli.main import cli
from flywheel_common import auth
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_testing.processes import start_module
from flywheel_testing.scripted_model import Responder, ScriptedModelServer, json_call, text
from flywheel_testing.services import boot_service

MINI = Path(__file__).resolve().parents[2] / "orchestrator" / "tests" / "fixtures" / "mini"
GREET_FIX = 'def greet(name):\n    return "Hello, " + name + "!"\n'


@pytest.fixture(scope="module")
def backends(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The real sandbox runner and trajectory store as processes, shared by this module's tests."""
    root = tmp_path_factory.mktemp("backends")
    env = {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(root / "index"),
    }
    procs: list[subprocess.Popen] = []
    try:
        sandbox, sinfo, _ = start_module("flywheel_sandbox", "FLYWHEEL_SANDBOX_", env, root)
        procs.append(sandbox)
        store, tinfo, _ = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", env, root)
        procs.append(store)
        yield {
            "FLYWHEEL_SANDBOX_ADDRESS": f"127.0.0.1:{sinfo['port']}",
            "FLYWHEEL_TRAJECTORY_ADDRESS": f"127.0.0.1:{tinfo['port']}",
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.asynccontextmanager
async def orchestrator(
    backends: dict[str, str], service_env: dict[str, str], responder: Responder, models: tuple[str, ...]
) -> AsyncIterator[tuple[str, ScriptedModelServer]]:
    """The scripted model server and the orchestrator in this process; yields the gRPC address."""
    async with ScriptedModelServer(responder, models=models) as server:
        env = {**service_env, **backends, "FLYWHEEL_ORCHESTRATOR_SUITE_DIRS": json.dumps([str(MINI)])}
        settings = {"gateway_base_url": server.base_url, "model_max_retries": 1}
        async with boot_service(build_app, OrchestratorSettings, env, **settings) as address:
            yield address, server


async def flywheel(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI in a worker thread (the orchestrator serves on this thread's event loop)."""

    def invoke() -> tuple[int, str]:
        runner = CliRunner(env={"COLUMNS": "260", **(env or {})})
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.output

    return await asyncio.to_thread(invoke)


def first_id(output: str, prefix: str) -> str:
    match = re.search(rf"^({prefix}-[0-9A-Z]+)$", output, re.M)
    assert match, output
    return match.group(1)


def explore_then_stop(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
    return text('{"type":"final","answer":"nothing to do"}')


async def test_suites_and_clear_errors(backends: dict[str, str], service_env: dict[str, str]) -> None:
    async with orchestrator(backends, service_env, explore_then_stop, ("scripted",)) as (address, _):
        code, output = await flywheel("suites", "--address", address)
        assert code == 0, output
        row = next(line for line in output.splitlines() if "│ mini " in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[2:7] == ["repo, io", "4", "2", "2", "no"], cells
        code, output = await flywheel("suites", "--address", address, "--json")
        listed = {s["name"]: s for s in map(json.loads, output.splitlines())}
        assert code == 0 and listed["mini"]["trainTaskCount"] == 2
        assert any(s.get("bundled") for s in listed.values())  # the suites that ship with Flywheel

        code, output = await flywheel("suites", "--address", address, "show", "mini")
        assert code == 0 and "train ratio 0.5, seed 'mini-4'" in output and "Two tiny repo tasks" in output

        # unknown suite: the server's NOT_FOUND, on one line, exit 1
        code, output = await flywheel("suites", "--address", address, "show", "nope")
        assert code == 1 and output.count("\n") == 1, output
        assert "error (NOT_FOUND): suite 'nope' does not exist (known:" in output and "mini" in output
        code, output = await flywheel(
            "run", "--address", address, "--suite", "nope", "--split", "train", "--reference"
        )
        assert code == 1 and "error (NOT_FOUND): suite 'nope' does not exist" in output, output
        code, output = await flywheel(
            "eval", "--address", address, "--suite", "mini", "--model", "scripted", "--task", "missing"
        )
        assert code == 1 and "NOT_FOUND" in output and "'missing'" in output, output
        code, output = await flywheel("run", "--address", address, "show", "run-nope")
        assert code == 1 and "error (NOT_FOUND): run 'run-nope' does not exist" in output

        # refused before any RPC: exit 2 with the reason
        code, output = await flywheel("run", "--address", address, "--suite", "mini", "--split", "train")
        assert code == 2 and "either --model NAME or --reference" in output
        code, output = await flywheel(
            "eval", "--address", address, "--suite", "mini", "--model", "a", "--model", "b"
        )
        assert code == 2 and "--baseline is required" in output
        code, output = await flywheel("run", "--address", address, "--suite", "mini", "list")
        assert code == 2 and "not with `flywheel run list`" in output
        code, output = await flywheel(
            "run", "--address", address, "--suite", "mini", "--split", "train", "--reference", "--label", "x"
        )
        assert code == 2 and "'x' must be KEY=VALUE" in output
    code, output = await flywheel("suites", "--address", "127.0.0.1:1")
    assert code == 1 and "cannot reach the orchestrator at 127.0.0.1:1" in output


async def test_reference_run_resolves_and_is_listed(
    backends: dict[str, str], service_env: dict[str, str]
) -> None:
    async with orchestrator(backends, service_env, explore_then_stop, ("scripted",)) as (address, _):
        code, output = await flywheel(
            "run",
            "--address",
            address,
            "--suite",
            "mini",
            "--split",
            "train",
            "--reference",
            "--label",
            "team=cli",
        )
        assert code == 0, output
        run_id = first_id(output, "run")
        assert "reference on mini@" in output and "2 episodes (2 tasks x 1)" in output
        episodes = [line for line in output.splitlines() if line.startswith(("✓", "✗"))]
        assert sorted(e.split()[1] for e in episodes) == ["add-bug", "double"], output
        assert all(e.startswith("✓") and "resolved" in e for e in episodes), episodes
        summary = next(line for line in output.splitlines() if line.strip("│ ").startswith("all "))
        assert "2/2" in summary and "2/2 (100%)" in summary, summary
        assert f"2 trajectories stored: flywheel trajectories list --run {run_id}" in output

        code, output = await flywheel("run", "--address", address, "list", "--suite", "mini")
        assert code == 0 and run_id in output and "succeeded" in output and "2/2 (100%)" in output
        code, output = await flywheel("run", "--address", address, "show", run_id)
        assert code == 0 and "mini@" in output and "reference" in output and "team=cli" in output
        assert "2/2 finished, resolved 2/2 (100%)" in output and "2 trajectories" in output
        code, output = await flywheel("run", "--address", address, "show", run_id, "--json")
        shown = json.loads(output)
        assert (
            code == 0
            and shown["state"] == "JOB_STATE_SUCCEEDED"
            and shown["counters"]["episodesResolved"] == 2
        )
        code, output = await flywheel("run", "--address", address, "watch", run_id)  # already finished
        assert code == 0 and "2/2 (100%)" in output
        code, output = await flywheel("run", "--address", address, "cancel", run_id)
        assert code == 0 and "succeeded" in output  # too late to cancel: it stays succeeded
        # --no-watch only starts it (its id on stdout); `run watch -q` follows it without episode lines
        code, output = await flywheel(
            "run", "--address", address, "--suite", "mini", "--split", "train", "--reference", "--task", "double",
            "--no-watch",
        )  # fmt: skip
        assert code == 0 and "✓" not in output, output
        second = first_id(output, "run")
        code, output = await flywheel("run", "--address", address, "watch", second, "-q")
        assert code == 0 and "✓" not in output and "1/1 (100%)" in output and second != run_id, output
        # the trajectories really are in the store, under this run
        code, output = await flywheel(
            "trajectories",
            "--address",
            backends["FLYWHEEL_TRAJECTORY_ADDRESS"],
            "list",
            "--run",
            run_id,
            "--json",
        )
        stored = [json.loads(line) for line in output.splitlines()]
        assert code == 0 and sorted(t["task"]["taskId"] for t in stored) == ["add-bug", "double"]
        assert all(t["outcome"].get("resolved") and t["labels"]["team"] == "cli" for t in stored)


def two_models() -> Responder:
    """``cand`` fixes greet-bug in its first episode only and solves upper; ``base`` never resolves."""
    greet_episodes: Counter[str] = Counter()

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        turn = sum(m["role"] == "assistant" for m in messages)
        if "run_code" in messages[0]["content"]:  # the I/O problem
            code = "print(input().upper())" if model == "cand" else "print(input())"
            return text(json.dumps({"type": "final", "code": code}))
        if model == "base":
            return text("hmm") if turn == 0 else text('{"type":"final","answer":"?"}')
        if turn == 0:
            greet_episodes[model] += 1
            body = GREET_FIX if greet_episodes[model] == 1 else "def greet(name):\n    return name\n"
            return json_call("write_file", {"rel_path": "greet.py", "content": body})
        return text('{"type":"final","answer":"done"}')

    return respond


async def test_eval_prints_the_report(backends: dict[str, str], service_env: dict[str, str]) -> None:
    objects = service_env["FLYWHEEL_OBJECT_STORE_ROOT"]
    env = {"FLYWHEEL_OBJECT_STORE_BACKEND": "fs", "FLYWHEEL_OBJECT_STORE_ROOT": objects}
    async with orchestrator(backends, service_env, two_models(), ("cand", "base")) as (address, _):
        code, output = await flywheel(
            "eval", "--address", address, "--suite", "mini", "--model", "cand", "--model", "base",
            "--baseline", "base", "--rollouts", "2", "--concurrency", "1", env=env,
        )  # fmt: skip
        assert code == 0, output
        eval_id = first_id(output, "eval")
        lines = output.splitlines()
        assert sum(line.startswith(("✓", "✗")) for line in lines) == 8
        assert any(line.startswith("✗ base greet-bug") and "no_change" in line for line in lines), output

        def row(title: str, model: str) -> list[str]:
            start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
            found = next(line for line in lines[start:] if line.startswith(f"│ {model} "))
            return [c.strip() for c in found.strip("│ ").split("│")]

        cand, base = row("models on mini test", "cand"), row("models on mini test", "base")
        # episodes, resolved, pass rate, CI, pass@k, parse err/ep, write rate, loops/ep, steps
        assert cand[1:10] == [
            "4",
            "3",
            "0.750",
            "0.30-0.95",
            "@1 0.75 @2 1.00",
            "0.00",
            "0.50",
            "0.00",
            "1.5",
        ]
        assert base[0] == "base (baseline)" and base[1:5] == ["4", "0", "0.000", "0.00-0.49"]
        assert base[6:9] == ["0.50", "0.00", "0.00"]
        assert row("deltas vs baseline base", "cand")[1:5] == ["+0.750", "-0.50", "+0.50", "+0.00"]
        assert row("per task", "greet-bug")[1:] == ["1/2 tests_failed", "0/2 2xno_change"]
        assert row("per task", "upper")[1:] == ["2/2", "0/2 2xwrong_answer"]
        for key in ("report.md", "metrics.png", "evaluation.json"):
            path = Path(objects) / "reports" / eval_id / key
            assert f"reports/{eval_id}/{key}" in output and str(path) in output and path.is_file()

        code, output = await flywheel("eval", "--address", address, "list")
        assert code == 0 and eval_id in output and "cand 0.750" in output and "base* 0.000" in output
        code, output = await flywheel("eval", "--address", address, "show", eval_id, "--no-tasks", env=env)
        assert code == 0 and "0.30-0.95" in output and "+0.750" in output and "greet-bug" not in output
        assert str(Path(objects) / "reports" / eval_id / "report.md") in output


async def test_ctrl_c_cancels_the_run(backends: dict[str, str], service_env: dict[str, str]) -> None:
    """A real `flywheel run` process gets SIGINT while its first model call hangs."""
    release, called = asyncio.Event(), asyncio.Event()

    async def stall(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        called.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 60)
        return text('{"type":"final","answer":"late"}')

    async with orchestrator(backends, service_env, stall, ("scripted",)) as (address, _):
        # As in a terminal, whatever this test process inherited: a shell starts background jobs
        # with SIGINT ignored, and Python keeps an inherited SIG_IGN (Ctrl-C would do nothing).
        as_in_a_terminal = (
            "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'flywheel'; runpy.run_module('flywheel_cli', run_name='__main__')"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", as_in_a_terminal, "run", "--address", address, "--suite", "mini",
            "--split", "train", "--model", "scripted",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            run_id = line.decode().strip()
            assert run_id.startswith("run-"), line
            await asyncio.wait_for(called.wait(), 30)  # an episode is in flight, the CLI is following
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            # Generous: on a loaded 2-core machine the CLI's cancel and exit can take a while.
            done = asyncio.ensure_future(proc.communicate())
            finished, _ = await asyncio.wait({done}, timeout=120)
            if not finished:
                proc.kill()
                _, late = await done
                pytest.fail(
                    f"`flywheel run` did not exit within 120 s of SIGINT; its stderr:\n{late.decode()}"
                )
            _, err = done.result()
        finally:
            release.set()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = err.decode()
        assert proc.returncode == 130, stderr
        assert (
            f"interrupted: cancelling run {run_id}" in stderr
            and f"{run_id}: cancelled (cancellation" in stderr
        ), stderr
        async with auth.channel(address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            run = (await stub.GetRun(opb.GetRunRequest(run_id=run_id))).run
        assert run.state == common_pb2.JOB_STATE_CANCELLED


def test_demo_prints_requests_that_repeat_each_stage() -> None:
    """The demo's "repeat" lines are the create requests minus what the services fill in."""
    from flywheel.orchestrator.v1 import run_pb2 as rpb
    from flywheel.trainer.v1 import trainer_pb2 as tpb2
    from flywheel_cli.demo import grpcurl_line, repeatable

    run = rpb.Run(id="run-1", suite="repo-bugs", split=1, teacher_kind=2, loop_id="loop-1", state=3,
                  labels={"loop_id": "loop-1", "source": "demo"}, task_ids=["a"])  # fmt: skip
    run.counters.episodes_total = 4
    again = repeatable(run)
    assert again == rpb.Run(
        suite="repo-bugs", split=1, teacher_kind=2, labels={"source": "demo"}, task_ids=["a"]
    )
    job = tpb2.FineTuneJob(
        id="ftj-1", base_model="b", dataset_id="ds-1", adapter_name="x", loop_id="l", state=3
    )
    assert repeatable(job) == tpb2.FineTuneJob(base_model="b", dataset_id="ds-1", adapter_name="x")
    line = grpcurl_line("127.0.0.1:50051", "svc/CreateRun", again)
    assert line.startswith('grpcurl -plaintext -H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN" -d \'{')
    assert line.endswith("127.0.0.1:50051 svc/CreateRun")
    assert '"task_ids":["a"]' in line and "run-1" not in line


#: An ML solution that crashes (a typo), then its fix: the train majority everywhere, with the
#: validation metric printed as the agent's rules ask.
ML_BUGGY = 'import pandas as pd\ntrain = pd.read_csv("data/train.csv")\nprint(len(trian))\n'
ML_MAJORITY = """\
import os
import pandas as pd
train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
guess = train["species"].iloc[:-50].value_counts().idxmax()
print(f"validation metric: {(train['species'].iloc[-50:] == guess).mean():.4f}")
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "species": guess}).to_csv("submission/submission.csv", index=False)
"""


async def test_ml_run_shows_the_search_tree_growing(
    backends: dict[str, str], service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flywheel run` on an ML task: a line per node as the tree grows, then the trees' table.

    The model is scripted (the one stand-in, see the module docstring): a draft that crashes,
    then a debug that fixes it. The CLI's output is not a terminal here, so the live rows come
    out as one line per node.
    """
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES", "2")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS", "1")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_DEBUG_PROB", "1.0")

    def solve(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        debug = "has a bug shown by its output" in messages[-1]["content"]
        code, plan = (ML_MAJORITY, "Fix the typo; predict the majority.") if debug else (ML_BUGGY, "Count.")
        return text(f"{plan}\n\n```python\n{code}```\n")

    async with orchestrator(backends, service_env, solve, ("scripted",)) as (address, _):
        code, output = await flywheel(
            "run", "--address", address, "--suite", "ml-tasks", "--split", "train", "--model", "scripted",
            "--task", "flower-species",
        )  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    draft = next(line for line in lines if line.startswith("  flower-species #0 n0 "))
    assert draft.startswith("  flower-species #0 n0 draft: bug: ") and "NameError" in output, draft
    assert draft.endswith(" · 1/2 nodes · no working node yet"), draft
    debug = next(line for line in lines if line.startswith("  flower-species #0 n1 "))
    assert re.fullmatch(
        r"  flower-species #0 n1 debug ← n0: metric (0\.\d+) \(held-out 0\.455\) · 2/2 nodes · "
        r"best accuracy \1 \(n1\), held-out 0\.455",
        debug,
    ), debug
    assert (
        lines.index(draft)
        < lines.index(debug)
        < next(i for i, line in enumerate(lines) if line.startswith("✓ flower-species #0"))
    )
    assert "ML search trees" in output
    row = next(line for line in lines if "flower-species #0 │" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:4] == ["flower-species #0", "2", "D✗ d✓", "n1"], (
        row
    )


async def test_ml_eval_shows_each_models_search_tree(
    backends: dict[str, str], service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flywheel eval` on an ML task: a line per node of each model's search, then the trees table.

    Scripted models (the module's one stand-in): `fix` debugs its crashing draft, `crash` only crashes.
    """
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES", "2")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS", "1")
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_MLE_DEBUG_PROB", "1.0")
    objects = service_env["FLYWHEEL_OBJECT_STORE_ROOT"]
    env = {"FLYWHEEL_OBJECT_STORE_BACKEND": "fs", "FLYWHEEL_OBJECT_STORE_ROOT": objects}

    def solve(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        debug = "has a bug shown by its output" in messages[-1]["content"]
        code = ML_MAJORITY if debug and model == "fix" else ML_BUGGY
        return text(f"Plan.\n\n```python\n{code}```\n")

    async with orchestrator(backends, service_env, solve, ("fix", "crash")) as (address, _):
        code, output = await flywheel(
            "eval", "--address", address, "--suite", "ml-tasks", "--split", "train", "--task", "flower-species",
            "--model", "fix", "--model", "crash", "--baseline", "crash", env=env,
        )  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    nodes = sorted(line.split(":")[0] for line in lines if line.startswith(("  fix · ", "  crash · ")))
    assert nodes == [
        "  crash · flower-species #0 n0 draft",
        "  crash · flower-species #0 n1 debug ← n0",
        "  fix · flower-species #0 n0 draft",
        "  fix · flower-species #0 n1 debug ← n0",
    ], output
    rows = {
        cells[0]: cells[1:4]
        for line in lines
        if line.startswith("│") and " · flower-species #0" in line
        for cells in [[c.strip() for c in line.strip("│ ").split("│")]]
    }
    assert rows == {
        "crash · flower-species #0": ["2", "D✗ d✗", "-"],
        "fix · flower-species #0": ["2", "D✗ d✓", "n1"],
    }, output
