"""Sizing the demo to a time budget: calibrate this machine, plan the loop, estimate each stage.

The demo's two slow stages scale with numbers we choose: the fine-tune with the number of
training examples (train tasks x examples per reference episode x epochs) times the cost of a
LoRA step, and the evaluation with the number of held-out episodes times the cost of generating
their turns. Before the loop starts, :func:`calibrate` measures the two unit costs on this
machine as it is now (one LoRA step of the real base model on a demo-shaped row, in the dtype the
trainer will use; one short generation through the gateway), and :func:`plan` picks the largest
demo that fits what is left of ``--time-budget``, reducing in this order: agent turns per
evaluation episode (to :data:`MIN_TURNS`: list, read, write, finish), train tasks (down to
:data:`MIN_TRAIN_TASKS`), epochs (to :data:`MIN_EPOCHS`), held-out tasks (down to
:data:`MIN_TEST_TASKS`), train tasks again (down to :data:`LAST_TRAIN_TASKS`). Turns go first
since 2026-12-06: the evaluation is the stage the estimate is least sure of, and cutting training
first left a candidate that loops until the turn limit. Completion tokens are never cut: a JSON action cut off
mid-way is a parse error, which is what the gate measures. A value the user set explicitly is
never changed. When even the smallest demo does not fit, the plan says so with its estimate.

The model's constants come from measured demo runs on the 2-core development machine
(2026-12-04/05, README "Latest demo run"): the reference teacher's `repo-bugs` episodes give
:data:`EXAMPLES_PER_TASK` step_sft examples of about :data:`TOKENS_PER_EXAMPLE` tokens each, and an
evaluation episode of the base model takes :data:`BASE_TURNS` turns and one of the freshly tuned
candidate all its turns (:func:`candidate_turns`), each answer :data:`ANSWER_FILL` of the
completion tokens. :class:`Eta` corrects the later stages by how far the finished ones were off.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_common import hardware

EXAMPLES_PER_TASK = 4.0  #: step_sft examples per reference episode (64 from 16 repo-bugs tasks)
TOKENS_PER_EXAMPLE = 600  #: mean tokens of one such example (chat template included)
BATCH_SIZE = 4  #: the demo's fine-tune batch
BASE_TURNS = 2.0  #: the base never writes a valid action: its episodes end on the 2nd parse error in a row
#: Mean share of max_completion_tokens an answer uses (greedy). Until 2026-12-06 the plan took 3
#: turns of 0.6 for every episode; on the AVX2-capped float32 runs the candidate took 5.0 and 5.83
#: turns of its 6 (writing whole files, or looping when lightly trained) and the evaluations ran
#: 1,256 s and 1,019 s against estimates of 583 and 852 (README "Latest demo run"). Two base turns
#: and all the candidate's at 0.8 give 1,213 s and 1,043 s for those two runs; on the faster runs
#: before (bfloat16, AVX-512 float32, better-trained candidates) this over-estimates 1.5-2.3x, which
#: costs a smaller demo there, never a late one.
ANSWER_FILL = 0.8
PROMPT_TOKENS_PER_TURN = 1200  #: prompt tokens the model server reads per turn (prefix cache aside)
CONCURRENCY = 4  #: episodes the demo's loop runs at once
BATCH_GAIN = 1.5  #: evaluation speed-up from the model server's static batching at CONCURRENCY
#: (measured 2.07x at 2 and 2.15x at 4 requests of one model; less here, as a batch waits for its
#: longest answer, the two models' requests never share one, and the last long episodes run alone:
#: the episodes of the 2026-12-06 run overlapped 3.3 at a time for a 1.56x gain)
FINE_TUNE_OVERHEAD_S = 40.0  #: trainer process start, model load, adapter upload
MIN_TRAIN_TASKS = 6  #: the first reduction stops here; the last one goes on to LAST_TRAIN_TASKS
LAST_TRAIN_TASKS = 4
MIN_EPOCHS = 1.0
MIN_TEST_TASKS = 4
MIN_TURNS = 4


@dataclass
class Calibration:
    """What one unit of work costs on this machine, measured just now."""

    step_s: float  #: one LoRA step of BATCH_SIZE rows of TOKENS_PER_EXAMPLE tokens
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    dtype: str  #: what the trainer computes in here ("bfloat16 autocast" or "float32")
    took_s: float = 0.0
    cpu: str = ""  #: the processor, as the README's demo table names it

    def describe(self) -> str:
        on = f" on {self.cpu}" if self.cpu else ""
        return (
            f"LoRA step {self.step_s:.1f} s ({self.dtype}), generation {self.decode_tokens_per_s:.1f} tokens/s, "
            f"prompt reading {self.prefill_tokens_per_s:.0f} tokens/s{on} (calibration took {self.took_s:.0f} s)"
        )


@dataclass
class Sizes:
    """The knobs the plan may turn, and which of them the user fixed."""

    train_tasks: list[str]
    test_tasks: list[str]
    epochs: float
    max_iterations: int
    max_completion_tokens: int
    fixed: set[str] = field(default_factory=set)  #: "train_tasks", "test_tasks", "max_iterations", …


@dataclass
class Plan:
    sizes: Sizes
    stages: dict[int, float]  #: estimated seconds per loop stage (lpb.LoopStage)
    reduced: list[str]
    fits: bool
    budget_s: float  #: what was left of the budget for the loop

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


def fine_tune_steps(train_tasks: int, epochs: float) -> int:
    examples = EXAMPLES_PER_TASK * train_tasks
    return max(1, math.ceil(examples * epochs / BATCH_SIZE))


def candidate_turns(max_iterations: int) -> float:
    """Turns of a candidate's evaluation episode: all of them (measured 4.0, 5.0 and 5.83 of 6: a
    candidate that follows the protocol lists, reads, writes and checks; a lightly trained one
    loops until the limit)."""
    return float(max_iterations)


def estimate(sizes: Sizes, cal: Calibration) -> dict[int, float]:
    """Seconds per loop stage for these sizes on the calibrated machine."""
    steps = fine_tune_steps(len(sizes.train_tasks), sizes.epochs)

    def turn_s(fill: float) -> float:
        return (
            sizes.max_completion_tokens * fill / cal.decode_tokens_per_s
            + PROMPT_TOKENS_PER_TURN / cal.prefill_tokens_per_s
        )

    tasks = len(sizes.test_tasks)  # an episode each for the base and the candidate
    base_s = tasks * min(float(sizes.max_iterations), BASE_TURNS) * turn_s(ANSWER_FILL)
    candidate_s = tasks * candidate_turns(sizes.max_iterations) * turn_s(ANSWER_FILL)
    return {
        lpb.LOOP_STAGE_ROLLOUTS: 0.2 * len(sizes.train_tasks) + 5.0,
        lpb.LOOP_STAGE_DATASET: 5.0,
        lpb.LOOP_STAGE_FINE_TUNE: FINE_TUNE_OVERHEAD_S + steps * cal.step_s,
        lpb.LOOP_STAGE_HOT_LOAD: 10.0,
        lpb.LOOP_STAGE_EVALUATION: (base_s + candidate_s) / BATCH_GAIN,
        lpb.LOOP_STAGE_GATE: 5.0,
    }


def plan(sizes: Sizes, cal: Calibration, budget_s: float) -> Plan:
    """The largest demo (in the reduction order of the module docstring) that fits ``budget_s``."""
    cur = Sizes(list(sizes.train_tasks), list(sizes.test_tasks), sizes.epochs, sizes.max_iterations,
                sizes.max_completion_tokens, set(sizes.fixed))  # fmt: skip
    reduced: list[str] = []

    def total() -> float:
        return sum(estimate(cur, cal).values())

    def fewer_train_tasks(floor: int) -> None:
        before = len(cur.train_tasks)
        while len(cur.train_tasks) > floor and total() > budget_s:
            cur.train_tasks.pop()
        if len(cur.train_tasks) < before:
            reduced.append(
                f"train tasks {before} → {len(cur.train_tasks)} ({fine_tune_steps(before, cur.epochs)} → "
                f"{fine_tune_steps(len(cur.train_tasks), cur.epochs)} LoRA steps)"
            )

    if budget_s > 0:
        if "max_iterations" not in cur.fixed and total() > budget_s and cur.max_iterations > MIN_TURNS:
            reduced.append(f"agent turns per evaluation episode {cur.max_iterations} → {MIN_TURNS}")
            cur.max_iterations = MIN_TURNS
        if "train_tasks" not in cur.fixed:
            fewer_train_tasks(MIN_TRAIN_TASKS)
        if "epochs" not in cur.fixed and total() > budget_s and cur.epochs > MIN_EPOCHS:
            reduced.append(f"epochs {cur.epochs:g} → {MIN_EPOCHS:g}")
            cur.epochs = MIN_EPOCHS
        if "test_tasks" not in cur.fixed and total() > budget_s:
            before = len(cur.test_tasks)
            while len(cur.test_tasks) > MIN_TEST_TASKS and total() > budget_s:
                cur.test_tasks.pop()
            if len(cur.test_tasks) < before:
                reduced.append(f"held-out tasks {before} → {len(cur.test_tasks)}")
        if "train_tasks" not in cur.fixed:
            fewer_train_tasks(LAST_TRAIN_TASKS)
    stages = estimate(cur, cal)
    return Plan(
        cur, stages, reduced, fits=budget_s <= 0 or sum(stages.values()) <= budget_s, budget_s=budget_s
    )


STAGE_LABELS: dict[int, str] = {
    lpb.LOOP_STAGE_ROLLOUTS: "reference rollouts",
    lpb.LOOP_STAGE_DATASET: "dataset",
    lpb.LOOP_STAGE_FINE_TUNE: "fine-tune",
    lpb.LOOP_STAGE_HOT_LOAD: "hot-load",
    lpb.LOOP_STAGE_EVALUATION: "evaluation",
    lpb.LOOP_STAGE_GATE: "gate and report",
}


def plan_lines(p: Plan) -> list[str]:
    s = p.sizes
    steps = fine_tune_steps(len(s.train_tasks), s.epochs)
    lines = [
        f"{len(s.train_tasks)} train tasks ({steps} LoRA steps, {s.epochs:g} epoch{'' if s.epochs == 1 else 's'}), {len(s.test_tasks)} held-out "
        f"tasks x 2 models, up to {s.max_iterations} turns of {s.max_completion_tokens} tokens",
    ]
    lines += [f"  {STAGE_LABELS[k]:<20} ~{v / 60:4.1f} min" for k, v in p.stages.items()]
    lines.append(f"  {'total (estimate)':<20} ~{p.total_s / 60:4.1f} min of {p.budget_s / 60:.1f} min left")
    return lines


class Eta:
    """Minutes left, from the plan's stage estimates corrected by the stages already finished."""

    def __init__(self, p: Plan) -> None:
        self.plan = p

    def seconds_left(self, loop: lpb.Loop, now: float | None = None) -> float:
        now = time.time() if now is None else now
        reached: dict[int, lpb.LoopStageStatus] = {s.stage: s for s in loop.stages}
        est_done = act_done = 0.0
        for stage, est in self.plan.stages.items():
            s = reached.get(stage)
            if s is not None and s.end_time.seconds and est >= 20:
                est_done += est
                act_done += s.end_time.ToSeconds() - s.start_time.ToSeconds()
        ratio = act_done / est_done if est_done else 1.0
        left = 0.0
        for stage, est in self.plan.stages.items():
            s = reached.get(stage)
            if s is None:
                left += est * ratio
            elif not s.end_time.seconds:
                left += max(est * ratio - (now - s.start_time.ToSeconds()), 0.0)
        return left

    def caption(self, loop: lpb.Loop) -> str:
        return f"about {self.seconds_left(loop) / 60:.1f} min left (plan: {self.plan.total_s / 60:.1f} min)"


# --- calibration ------------------------------------------------------------------------------


def calibrate(base_dir: Path, gateway_url: str, api_key: str, model: str, prompt_text: str) -> Calibration:
    """Measure one LoRA step here (in-process, the trainer's dtype choice) and the model server's
    prefill and decode speed through the gateway."""
    started = time.monotonic()
    # First until the model server has loaded the base (just imported on a first run): its loading
    # would otherwise share the cores with the timed step.
    wait_until_served(gateway_url, api_key, model)
    step_s, dtype = measure_step(base_dir)
    prefill, decode = measure_generation(gateway_url, api_key, model, prompt_text)
    return Calibration(
        step_s, decode, prefill, dtype, took_s=time.monotonic() - started, cpu=hardware.cpu_summary()
    )


def measure_step(base_dir: Path) -> tuple[float, str]:
    """Seconds of one demo-shaped LoRA step: a warm-up on a short row, then one row of
    TOKENS_PER_EXAMPLE tokens timed and scaled by BATCH_SIZE (a step's cost grows with its tokens)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from flywheel_common.hardware import cpu_has_fast_bf16

    bf16 = cpu_has_fast_bf16()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model: Any = get_peft_model(
        base,
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    vocab = int(model.config.get_text_config().vocab_size)
    gen = torch.Generator().manual_seed(0)

    def step(tokens: int) -> float:
        ids = torch.randint(100, vocab - 1, (1, tokens), generator=gen)
        # Loss on the answer part only (the last 40%, as step_sft's assistant turns), and logits only
        # there: TRL's chunked loss never computes the 262k-vocabulary head for prompt positions, so a
        # full-sequence head here would overstate the step several times.
        answer = tokens - int(tokens * 0.6)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, logits_to_keep=answer + 1).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     ids[:, tokens - answer :].reshape(-1))  # fmt: skip
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t

    step(64)
    one = step(TOKENS_PER_EXAMPLE)
    return one * BATCH_SIZE, "bfloat16 autocast" if bf16 else "float32"


def _chat(url: str, key: str, body: dict[str, Any]) -> tuple[float, int]:
    req = urllib.request.Request(
        url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - t, int(answer.get("usage", {}).get("completion_tokens") or 0)


def wait_until_served(url: str, key: str, model: str, timeout_s: float = 600.0, poll_s: float = 2.0) -> float:
    """Poll a 2-token completion until ``model`` answers; returns the seconds waited.

    Right after the demo imports the base model, the model server has not loaded it yet: it looks
    for it in the registry every 30 s and answers 503 until then (and the gateway 404 while adapter
    sync has not registered it). Those two answers, and a refused connection, mean "not yet"; any
    other error, or ``timeout_s`` without an answer, is raised with what the server said last."""
    started = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    last = ""
    while True:
        try:
            _chat(url, key, body)
            return time.monotonic() - started
        except urllib.error.HTTPError as e:
            if e.code not in (404, 503):
                raise
            last = f"HTTP {e.code}: {e.read()[:500].decode(errors='replace')}"
        except urllib.error.URLError as e:
            last = f"no connection: {e.reason}"
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"model {model!r} was not served at {url} within {timeout_s:.0f} s; last answer: {last}")
        time.sleep(poll_s)


def measure_generation(url: str, key: str, model: str, prompt_text: str) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s) of the served base model: a 1-token answer to a long
    prompt (mostly prompt reading), then a 33-token answer to a short one (mostly decoding)."""
    long_prompt = [{"role": "user", "content": prompt_text}]
    wait_until_served(url, key, model)  # also the warm-up
    t_prefill, _ = _chat(
        url, key, {"model": model, "messages": long_prompt, "max_tokens": 1, "temperature": 0}
    )
    counting = [{"role": "user", "content": "Count from 1 to 200, separated by commas: 1, 2, 3,"}]
    t_short1, _ = _chat(url, key, {"model": model, "messages": counting, "max_tokens": 1, "temperature": 0})
    t_decode, n = _chat(url, key, {"model": model, "messages": counting, "max_tokens": 33, "temperature": 0})
    prompt_tokens = max(len(prompt_text) / 4.0, 1.0)  # ~4 characters a token for English and code
    prefill = prompt_tokens / max(t_prefill, 1e-3)
    decode = max(n - 1, 1) / max(t_decode - t_short1, 1e-3)
    return prefill, decode


def calibration_prompt(texts: Sequence[str], chars: int = 4800) -> str:
    """About PROMPT_TOKENS_PER_TURN tokens of real task text (repeated if short)."""
    text = "\n\n".join(t for t in texts if t) or "def f(x):\n    return x\n"
    while len(text) < chars:
        text += "\n\n" + text
    return text[:chars]
