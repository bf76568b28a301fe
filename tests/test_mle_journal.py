"""Journals of the ML agent: export → the trajectory store's AIDE importer → identical dataset pairs.

Crosses three services' code on purpose (the orchestrator writes the trajectory and exports the
journal, the trajectory store's importer reads it, the dataset builder's ``journal_pairs`` recipe
makes the pairs), as a user does with ``journal.json`` files. The trajectory is built by the
agent's own recorder from a tree of nodes given here (no model, no sandbox: what is tested is
the record and its round trip; the search itself is tested in the orchestrator's test_mle.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_dataset.examples import Counts
from flywheel_dataset.recipes import get_recipe
from flywheel_orchestrator.mle import MleEpisode, MleSettings, MleSpec, Node, export_journal, journal_of
from flywheel_orchestrator.mltasks import MlTask
from flywheel_orchestrator.suites import BUNDLED_DIR, load_folder
from flywheel_trajectory.importers import ImportContext, convert_aide

TASK = load_folder(BUNDLED_DIR / "ml-tasks", bundled=True).tasks["house-prices"]


def _trajectory() -> tpb.Trajectory:
    assert isinstance(TASK, MlTask)
    spec = MleSpec(
        "traj-journal", "run-journal", 0, "ml-tasks", "v1", TASK, common_pb2.SamplingParams(),
        tpb.TEACHER_KIND_MODEL, tpb.Policy(model="m"), 60, 60,
    )  # fmt: skip
    ep = MleEpisode(spec, policy=None, sandbox=None, settings=MleSettings())  # type: ignore[arg-type]
    nodes = [
        Node("n0", 0, "draft", None, plan="Mean price.", code="print(1/0)", buggy=True,
             term_out="Traceback...\nZeroDivisionError: division by zero\n",
             analysis="the script failed (RUNTIME_ERROR): ZeroDivisionError", exec_time_s=0.4),
        Node("n1", 1, "draft", None, plan="Linear model.", code="import x\nprint('validation metric: 30.5')",
             buggy=False, metric=30.5, heldout=31.25, valid_submission=True, term_out="validation metric: 30.5\n",
             analysis="validation metric 30.5; submission valid", exec_time_s=1.5),
        Node("n2", 2, "debug", "n0", plan="Guard the division.", code="print(1)", buggy=True, debug_depth=1,
             term_out="1\n", analysis="no submission/submission.csv was written"),
        Node("n3", 3, "improve", "n1", plan="Gradient boosting.", code="import y", buggy=False, metric=22.0,
             heldout=22.4, valid_submission=True, term_out="validation metric: 22.0", analysis="ok"),
        # A critique that quotes code: its fence must not be read as the node's code.
        Node("n4", 4, "reflect", "n3", plan="Critique:\n1. Use ```log(price)```.\n\nEdit:\nLog target.",
             code="import z", buggy=False, metric=21.0, heldout=21.5, valid_submission=True, term_out="",
             analysis="validation metric 21; submission valid"),
        Node("n5", 5, "reflect", "n2", plan="Critique:\n1. Write the file.", code="", buggy=True,
             analysis="the answer had no ```python code block"),
    ]  # fmt: skip
    for node in nodes:
        ep._add(node)
    ts = Timestamp()
    ts.FromSeconds(1_700_000_000)
    return ep.trajectory(ts, None)


def _pairs(traj: tpb.Trajectory, **params: object) -> tuple[list[tuple], Counts]:
    recipe = get_recipe("journal_pairs")
    _, p = recipe.resolve({k: str(v).lower() for k, v in params.items()})
    counts = Counts()
    out = []
    for ex in recipe.run([traj], p, counts):
        out.append((ex.pair_type, ex.instruction, ex.input, json.dumps(ex.messages)))
    return out, counts


@pytest.mark.parametrize("params", [{}, {"skip_buggy_outputs": True}, {"include_draft": False}])
def test_export_then_import_gives_identical_pairs(params: dict) -> None:
    native = _trajectory()
    journal = export_journal(native)
    imported = convert_aide(journal, ImportContext("ml/house-prices/journal.json", "imp-1", "", {}))
    assert imported.task.kind == common_pb2.TASK_KIND_ML
    assert imported.task.task_id == "house-prices"
    pairs_native, counts_native = _pairs(native, **params)
    pairs_imported, counts_imported = _pairs(imported, **params)
    assert pairs_native == pairs_imported
    assert asdict(counts_native) == asdict(counts_imported)
    assert pairs_native, "the tree makes pairs"
    if not params:
        # n5 has no code; every other node is a pair, by the stage its parent gives it.
        assert [p[0] for p in pairs_native] == ["draft", "draft", "debug", "improve", "improve"]
        assert counts_native.filter_reasons["missing_code"] == 1
        # The task description the drafts saw is the pairs' task.
        assert "House prices" in pairs_native[0][1] and "Metric: rmse" in pairs_native[0][1]
    # The imported tree is the same tree: same parents, same buggy flags, same best node.
    assert imported.labels["aide.best_node"] == native.labels["aide.best_node"] == "n4"
    assert imported.outcome.reward == 21.0  # the importer's reward: the best validation metric


def test_journal_holds_the_whole_tree() -> None:
    journal = journal_of(_trajectory())
    assert journal["task_id"] == "house-prices"
    by_id = {n["id"]: n for n in journal["nodes"]}
    assert [(n["id"], n["parent"], n["operator"], n["is_buggy"]) for n in journal["nodes"]] == [
        ("n0", None, "draft", True),
        ("n1", None, "draft", False),
        ("n2", "n0", "debug", True),
        ("n3", "n1", "improve", False),
        ("n4", "n3", "reflect", False),
        ("n5", "n2", "reflect", True),
    ]
    assert by_id["n1"]["metric"] == {"value": 30.5, "maximize": False}
    assert by_id["n1"]["heldout_metric"] == 31.25
    assert by_id["n0"]["metric"] is None
    assert by_id["n0"]["term_out"].endswith("division by zero\n")
    assert by_id["n0"]["analysis"].startswith("the script failed")
    assert by_id["n1"]["exec_time"] == 1.5
    assert by_id["n4"]["code"] == "import z"


def test_cli_draws_the_tree_and_the_metric_per_step() -> None:
    from flywheel_cli.mle import render

    lines = render(_trajectory())
    assert lines[0].startswith("ml-tasks/house-prices · traj-journal · 6 nodes · ")
    assert "best n4: held-out 21.5 (normalised " in lines[0]
    assert lines[1:] == [
        "  n0 draft: bug: the script failed (RUNTIME_ERROR): ZeroDivisionError",
        "    n2 debug: bug: no submission/submission.csv was written",
        "      n5 reflect: bug: the answer had no ```python code block",
        "  n1 draft: metric 30.5 (held-out 31.25)",
        "    n3 improve: metric 22 (held-out 22.4)",
        "      n4 reflect: metric 21 (held-out 21.5)  ← best",
        "  metric per step (→ best so far): 0:bug  1:30.5→30.5  2:bug→30.5  3:22→22  4:21→21  5:bug→21",
    ]


def test_step_sft_trains_each_node_on_the_prompt_it_was_given() -> None:
    """step_sft on our own ML trajectory: a node's example is its recorded prompt → its answer.

    The prompts are the agent's own prompt builders on the bundled task (what the search sends).
    """
    from flywheel_orchestrator.mle import debug_prompt, draft_prompt, improve_prompt

    assert isinstance(TASK, MlTask)
    s = MleSettings()
    draft = Node("n0", 0, "draft", None, plan="Mean price.", code="print(1/0)", buggy=True)
    draft.prompt = draft_prompt(TASK, [], s)
    fixed = Node("n1", 1, "debug", "n0", plan="No division.", code="print('validation metric: 3')",
                 buggy=False, metric=3.0, heldout=3.5, valid_submission=True, debug_depth=1)  # fmt: skip
    fixed.prompt = debug_prompt(TASK, draft, s)
    better = Node("n2", 2, "improve", "n1", plan="Boosting.", code="import y", buggy=False, metric=2.0,
                  heldout=2.5, valid_submission=True)  # fmt: skip
    better.prompt = improve_prompt(TASK, fixed, [draft, fixed], s)
    reflect = Node(
        "n3", 3, "reflect", "n2", plan="Critique:\n1. ok", code="import z", buggy=False, metric=1.0
    )
    spec = MleSpec(
        "traj-sft", "run-sft", 0, "ml-tasks", "v1", TASK, common_pb2.SamplingParams(),
        tpb.TEACHER_KIND_MODEL, tpb.Policy(model="m"), 60, 60,
    )  # fmt: skip
    ep = MleEpisode(spec, policy=None, sandbox=None, settings=s)  # type: ignore[arg-type]
    for node in (draft, fixed, better, reflect):
        ep._add(node)
    ts = Timestamp()
    ts.FromSeconds(1_700_000_000)
    traj = ep.trajectory(ts, None)

    recipe = get_recipe("step_sft")
    _, p = recipe.resolve({})
    counts = Counts()
    examples = list(recipe.run([traj], p, counts))
    assert [e.messages for e in examples] == [
        [
            *fixed.prompt,
            {"role": "assistant", "content": "No division.\n\n```python\nprint('validation metric: 3')\n```"},
        ],
        [*better.prompt, {"role": "assistant", "content": "Boosting.\n\n```python\nimport y\n```"}],
    ]
    assert "print(1/0)" in examples[0].messages[-2]["content"]  # the debug prompt shows the bug
    assert counts.filter_reasons == {"buggy_node": 1, "no_recorded_prompt": 1}

    _, loose = recipe.resolve({"require_valid_tool_call": "false", "max_steps_per_trajectory": "2"})
    counts = Counts()
    examples = list(recipe.run([traj], loose, counts))
    assert [e.messages[-1]["content"].split("\n")[0] for e in examples] == ["Mean price.", "No division."]
    assert counts.filter_reasons == {"beyond_max_steps": 1, "no_recorded_prompt": 1}


def test_report_charts_the_pick_per_step() -> None:
    """The report's search chart: per step, the held-out score of the node the search would pick."""
    from flywheel_orchestrator.mle_eval import picked_per_step, search_chart_png

    traj = _trajectory()
    # n1 (30.5) is picked at step 1, n3 (22) at 3, n4 (21) at 4; buggy steps keep the pick.
    assert picked_per_step(journal_of(traj)) == [
        (0, None),
        (1, 31.25),
        (2, 31.25),
        (3, 22.4),
        (4, 21.5),
        (5, 21.5),
    ]
    assert isinstance(TASK, MlTask)
    png = search_chart_png([("m", [traj])], {TASK.id: TASK})
    assert png is not None and png.startswith(b"\x89PNG")
    assert search_chart_png([("m", [])], {TASK.id: TASK}) is None
