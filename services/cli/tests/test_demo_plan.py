"""The demo's time-budget planner: what it estimates, what it reduces and in which order, what it
never touches, and the ETA it shows as stages finish. The one-step calibration runs for real on a
tiny model; the generation calibration needs a served model and is exercised by `make demo`; its wait
for a model the server has not loaded yet runs against a real local HTTP server that answers like
ours does while loading (503, then 200)."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_cli import demo_plan as dp
from flywheel_cli.demo import DEMO_TEST_TASKS, DEMO_TRAIN_TASKS

FAST = dp.Calibration(
    step_s=10.0, decode_tokens_per_s=25.0, prefill_tokens_per_s=600.0, dtype="bfloat16 autocast"
)
SLOW = dp.Calibration(step_s=72.0, decode_tokens_per_s=10.0, prefill_tokens_per_s=200.0, dtype="float32")


def sizes(**fixed: object) -> dp.Sizes:
    return dp.Sizes(list(DEMO_TRAIN_TASKS), list(DEMO_TEST_TASKS), 2.0, 6, 384, fixed=set(fixed))


def test_estimates_follow_the_measured_unit_costs() -> None:
    est = dp.estimate(sizes(), FAST)
    # 16 tasks x 4 examples x 2 epochs / batch 4 = 32 steps of 10 s, plus the job's overhead.
    assert est[lpb.LOOP_STAGE_FINE_TUNE] == pytest.approx(dp.FINE_TUNE_OVERHEAD_S + 32 * 10.0)
    # 6 held-out tasks: the base's episodes take 2 turns, the candidate's all 6.
    turn = 384 * dp.ANSWER_FILL / 25.0 + dp.PROMPT_TOKENS_PER_TURN / 600.0
    assert est[lpb.LOOP_STAGE_EVALUATION] == pytest.approx((6 * 2 + 6 * 6) * turn / dp.BATCH_GAIN)
    assert dp.candidate_turns(4) == 4 and dp.candidate_turns(6) == 6
    slower = dp.estimate(sizes(), SLOW)
    assert all(slower[k] >= v for k, v in est.items())


def test_a_roomy_budget_changes_nothing() -> None:
    p = dp.plan(sizes(), FAST, budget_s=3600)
    assert p.fits and not p.reduced
    assert len(p.sizes.train_tasks) == 16 and len(p.sizes.test_tasks) == 6 and p.sizes.max_iterations == 6


def test_a_tight_budget_cuts_agent_turns_then_train_tasks_and_fits() -> None:
    full = dp.plan(sizes(), FAST, budget_s=0).total_s
    four = sizes()
    four.max_iterations = 4
    four_turns = dp.plan(four, FAST, budget_s=0).total_s
    slightly = dp.plan(sizes(), FAST, budget_s=full - 10)
    assert slightly.fits and slightly.reduced == ["agent turns per evaluation episode 6 → 4"]
    assert len(slightly.sizes.train_tasks) == 16
    p = dp.plan(sizes(), FAST, budget_s=four_turns - 100)
    assert p.fits and p.total_s <= four_turns - 100
    assert len(p.sizes.train_tasks) < 16 and p.sizes.max_iterations == 4 and len(p.sizes.test_tasks) == 6
    assert [r.split()[0] for r in p.reduced] == ["agent", "train"]
    # The kept tasks are the first ones, in order: the same budget gives the same demo.
    assert p.sizes.train_tasks == list(DEMO_TRAIN_TASKS[: len(p.sizes.train_tasks)])


def test_a_slow_machine_reduces_in_order_and_says_when_it_cannot_fit() -> None:
    p = dp.plan(sizes(), SLOW, budget_s=8 * 60)
    assert len(p.sizes.train_tasks) == dp.LAST_TRAIN_TASKS and p.sizes.epochs == dp.MIN_EPOCHS
    assert p.sizes.max_iterations == dp.MIN_TURNS
    assert len(p.sizes.test_tasks) == dp.MIN_TEST_TASKS
    assert [r.split()[0] for r in p.reduced] == ["agent", "train", "epochs", "held-out", "train"]
    assert not p.fits and p.total_s > 8 * 60
    assert any("total (estimate)" in line for line in dp.plan_lines(p))


def test_values_the_user_set_are_never_reduced() -> None:
    p = dp.plan(sizes(train_tasks=1, max_iterations=1, epochs=1), SLOW, budget_s=10 * 60)
    assert len(p.sizes.train_tasks) == 16 and p.sizes.max_iterations == 6 and p.sizes.epochs == 2.0
    assert len(p.sizes.test_tasks) == dp.MIN_TEST_TASKS  # the one knob left free
    assert p.sizes.max_completion_tokens == 384  # never planned


def _ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def test_eta_scales_what_is_left_by_how_far_finished_stages_were_off() -> None:
    p = dp.plan(sizes(), FAST, budget_s=0)
    eta = dp.Eta(p)
    fresh = lpb.Loop()
    assert eta.seconds_left(fresh, now=1000.0) == pytest.approx(p.total_s)
    ft = p.stages[lpb.LOOP_STAGE_FINE_TUNE]
    loop = lpb.Loop(
        stages=[
            lpb.LoopStageStatus(stage=lpb.LOOP_STAGE_ROLLOUTS, start_time=_ts(0), end_time=_ts(5)),
            lpb.LoopStageStatus(stage=lpb.LOOP_STAGE_DATASET, start_time=_ts(5), end_time=_ts(10)),
            # The fine-tune took twice its estimate: the evaluation still to come is doubled too.
            lpb.LoopStageStatus(
                stage=lpb.LOOP_STAGE_FINE_TUNE, start_time=_ts(10), end_time=_ts(10 + 2 * ft)
            ),
        ]
    )
    left = eta.seconds_left(loop, now=10 + 2 * ft)
    rest = sum(v for k, v in p.stages.items() if k > lpb.LOOP_STAGE_FINE_TUNE)
    assert left == pytest.approx(2 * rest)
    assert "min left" in eta.caption(loop)


def test_one_lora_step_is_measured_for_real(tmp_path: Path) -> None:
    from flywheel_testing.trainer import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny", ["def f(x):\n    return x + 1\n"] * 8)
    step_s, dtype = dp.measure_step(folder)
    assert step_s > 0 and dtype in ("bfloat16 autocast", "float32")


@pytest.fixture
def loading_server() -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server whose chat completions answer the statuses queued in the list (503 while
    "loading"), then 200 with a usage body once the list is empty; yields (base URL, queue)."""
    queue: list[int] = []
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            code = queue.pop(0) if queue else 200
            body = (
                {"usage": {"completion_tokens": 2}}
                if code == 200
                else {"error": {"message": f"status {code} while loading", "type": "unavailable"}}
            )
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", queue
    finally:
        server.shutdown()
        server.server_close()
    assert all(path == "/v1/chat/completions" for path in seen)


def test_calibration_waits_for_a_model_still_loading(loading_server: tuple[str, list[int]]) -> None:
    url, queue = loading_server
    queue += [503, 503, 404, 503]  # the model server loading, the gateway not yet routing it
    dp.wait_until_served(url, "key", "gemma-3-270m", timeout_s=60, poll_s=0.01)
    assert queue == []  # every "not yet" was waited through, none skipped


def test_calibration_wait_gives_up_with_the_last_answer(loading_server: tuple[str, list[int]]) -> None:
    url, queue = loading_server
    queue += [503] * 10_000
    with pytest.raises(TimeoutError, match=r"not served .* within 0 s; last answer: HTTP 503: .*while loading"):
        dp.wait_until_served(url, "key", "gemma-3-270m", timeout_s=0.2, poll_s=0.01)


def test_calibration_wait_does_not_hide_other_errors(loading_server: tuple[str, list[int]]) -> None:
    url, queue = loading_server
    queue += [401, 503]
    with pytest.raises(urllib.error.HTTPError) as raised:
        dp.wait_until_served(url, "key", "gemma-3-270m", timeout_s=60, poll_s=0.01)
    assert raised.value.code == 401 and queue == [503]
