"""Benchmark of the step_sft recipe and of a whole build, on one core.

    .venv/bin/python dataset-svc/bench/bench_step_sft.py            # full: a 1,000,000-step build
    .venv/bin/python dataset-svc/bench/bench_step_sft.py --steps 100000

Prints:
1. step_sft examples per second over in-memory Trajectory protos (target >= 20,000), next to a
   baseline measured in the same run: just walking every step of the same trajectories (the
   floor any recipe pays), so the ratio shows what the recipe itself costs;
2. the whole build (spill, order, recipe, dedup, split, chat-messages JSONL, token counts,
   publish to a filesystem object store) over ``--steps`` steps streamed from a generator, in a
   fresh process, with its wall time and peak RSS (target <= 1 GB for 1,000,000 steps).

Trajectories are synthetic JSON-protocol repo episodes: system, task, then (assistant call, tool
result) pairs, 20 steps each, every task distinct.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STEPS_PER_TRAJECTORY = 20


def one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def make_trajectory(n: int):
    from flywheel.common.v1 import common_pb2
    from flywheel.trajectory.v1 import trajectory_pb2 as tpb

    t = tpb.Trajectory(
        id=f"traj-{n:08d}",
        task=tpb.TaskRef(suite="bench", task_id=f"task-{n}", kind=common_pb2.TASK_KIND_REPO),
        tool_protocol=common_pb2.TOOL_PROTOCOL_JSON,
        run_id="run-bench",
        outcome=tpb.Outcome(resolved=n % 3 != 0, failure_category=0 if n % 3 else 1),
    )
    t.steps.add(
        index=0, role=tpb.ROLE_SYSTEM, content="You fix bugs. Reply with one JSON tool call per turn."
    )
    t.steps.add(
        index=1,
        role=tpb.ROLE_USER,
        content=f"Task {n}: the function f{n} fails on empty input; make it return 0.",
    )
    for i in range(2, STEPS_PER_TRAJECTORY, 2):
        args = {"rel_path": f"pkg/mod_{n}_{i}.py"}
        call = json.dumps({"type": "tool_call", "name": "read_file", "args": args})
        step = t.steps.add(index=i, role=tpb.ROLE_ASSISTANT, content=call)
        step.tool_calls.add(id=f"call-{i}", name="read_file", arguments_json=json.dumps(args))
        result = t.steps.add(
            index=i + 1, role=tpb.ROLE_USER, content=f"[tool_result]\ndef f{n}_{i}(xs):\n    return xs[0]\n"
        )
        result.tool_result.status = tpb.TOOL_RESULT_STATUS_OK
    return t


def bench_recipe(trajectories: int) -> dict[str, float]:
    from flywheel_dataset.examples import Counts
    from flywheel_dataset.recipes import RECIPES

    data = [make_trajectory(n) for n in range(trajectories)]
    start = time.perf_counter()
    walked = sum(1 for t in data for s in t.steps if s.role == 3)
    baseline_s = time.perf_counter() - start

    recipe = RECIPES["step_sft"]
    _, params = recipe.resolve({})
    start = time.perf_counter()
    produced = sum(1 for _ in recipe.run(data, params, Counts()))
    recipe_s = time.perf_counter() - start
    assert produced == walked, (produced, walked)
    return {
        "examples": produced,
        "recipe_examples_per_s": produced / recipe_s,
        "baseline_steps_walked_per_s": walked / baseline_s,
    }


def source(total_steps: int) -> Iterator:
    for n in range(total_steps // STEPS_PER_TRAJECTORY):
        yield make_trajectory(n)


class GeneratorSource:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def export(self, query):
        if query.run_ids:
            yield from source(self.total_steps)


def build_child(total_steps: int) -> None:
    """Runs in a fresh process: one whole build, then prints its figures as JSON."""
    one_core()
    from flywheel.dataset.v1 import dataset_pb2 as dpb
    from flywheel_common.objectstore.fs import FilesystemObjectStore
    from flywheel_dataset.build import BuildContext, run_build
    from flywheel_dataset.tokens import TokenCounter
    from flywheel_dataset.validation import resolve_build, spec_from_build

    with tempfile.TemporaryDirectory(prefix="bench-ds-") as tmp:
        store = FilesystemObjectStore(Path(tmp) / "objects")
        store.ensure_ready()
        build = resolve_build(
            dpb.DatasetBuild(recipe="step_sft", source=dpb.DatasetSource(run_ids=["run-bench"])), ""
        )
        build.id = "dsb-bench"
        ctx = BuildContext(
            store=store,
            source=GeneratorSource(total_steps),
            tokenizer=lambda _: TokenCounter(None, "approx"),
            cancel=threading.Event(),
        )
        start = time.perf_counter()
        dataset = run_build(spec_from_build(build), ctx, tmp)
        wall = time.perf_counter() - start
        examples = sum(s.example_count for s in dataset.splits)
        size = sum(f.object.size_bytes for f in dataset.files)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "steps": total_steps,
                "examples": examples,
                "wall_s": wall,
                "peak_rss_mib": peak_kib / 1024,
                "output_bytes": size,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="Steps in the whole-build benchmark.")
    parser.add_argument(
        "--recipe-trajectories", type=int, default=5_000, help="Trajectories in the recipe benchmark."
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build_child(args.steps)
        return 0
    one_core()
    r = bench_recipe(args.recipe_trajectories)
    print(
        f"step_sft recipe: {r['recipe_examples_per_s']:,.0f} examples/s on one core over {r['examples']:,} examples "
        f"(target >= 20,000); baseline walk of the same steps: {r['baseline_steps_walked_per_s']:,.0f} steps/s "
        f"(recipe = {r['recipe_examples_per_s'] / r['baseline_steps_walked_per_s']:.2f} x baseline)"
    )
    child = subprocess.run(
        [sys.executable, __file__, "--child", "--steps", str(args.steps)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return 1
    b = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"whole build over {b['steps']:,} steps: {b['examples']:,} examples in {b['wall_s']:.1f} s "
        f"({b['examples'] / b['wall_s']:,.0f} examples/s end to end), peak RSS {b['peak_rss_mib']:.0f} MiB "
        f"(target <= 1024 MiB), {b['output_bytes'] / 1e6:.0f} MB written"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
