"""ML-agent journals: the node tree of an ML trajectory, as AIDE's ``journal.json`` and as text.

An ML trajectory (task kind ML; written by the orchestrator's ML agent or imported from an AIDE
journal by the trajectory store) holds one ASSISTANT step per node (``<plan>`` then one fenced
code block; attributes ``aide.node_id``, ``aide.stage``, ``aide.buggy``, ``aide.metric``,
``aide.maximize`` and, from our agent, ``mle.operator`` and ``mle.heldout``), each followed by a
USER step with the node's execution output (``parent_index`` = the node's step). A node's
``parent_index`` names its parent's output step. The USER text before the first node is the task.

Shared by the orchestrator (export) and the CLI (``flywheel mle``), which may not import each other.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flywheel.trajectory.v1 import trajectory_pb2 as tpb

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)```", re.DOTALL)


def parse_answer(text: str) -> tuple[str, str]:
    """(plan, code) of a node's text: the text before the first code block, and the longest block."""
    blocks = list(_FENCE.finditer(text))
    if not blocks:
        return text.strip(), ""
    code = max((b.group(1) for b in blocks), key=len).strip("\n")
    return text[: blocks[0].start()].strip(), code


def _output_step(steps: Any, index: int) -> tpb.Step | None:
    for step in steps[index + 1 :]:
        if step.role != tpb.ROLE_ASSISTANT and step.HasField("parent_index") and step.parent_index == index:
            return step  # type: ignore[no-any-return]
    return None


def journal_of(traj: tpb.Trajectory) -> dict[str, Any]:
    """The AIDE ``journal.json`` of an ML trajectory (the trajectory store's importer reads it).

    Per node: ``id``, ``step``, ``parent``, ``plan``, ``code``, ``term_out``, ``analysis``,
    ``is_buggy``, ``metric`` (``{"value", "maximize"}`` or null), ``exec_time``, and ours:
    ``operator`` and ``heldout_metric``. Top level: ``task_id`` and ``task_description``."""
    steps = traj.steps
    description = []
    for step in steps:
        if step.role == tpb.ROLE_ASSISTANT:
            break
        if step.content:
            description.append(step.content)
    from_step: dict[int, str] = {}
    nodes: list[dict[str, Any]] = []
    for step in steps:
        if step.role != tpb.ROLE_ASSISTANT or "aide.node_id" not in step.attributes:
            continue
        node_id = step.attributes["aide.node_id"]
        plan, code = parse_answer(step.content)
        output = _output_step(steps, step.index)
        content = output.content if output is not None else ""
        analysis = output.attributes.get("mle.analysis", "") if output is not None else ""
        suffix = f"\n\n{analysis}"
        term_out = content[: -len(suffix)] if analysis and content.endswith(suffix) else content
        if analysis and not content.endswith(suffix):
            analysis = ""  # not ours to split: the whole text is the output
        parent = None
        if step.HasField("parent_index") and 0 <= step.parent_index < len(steps):
            above = steps[step.parent_index]
            key = above.parent_index if above.role != tpb.ROLE_ASSISTANT else step.parent_index
            parent = from_step.get(key)
        metric = step.attributes.get("aide.metric")
        node: dict[str, Any] = {
            "id": node_id,
            "step": len(nodes),
            "parent": parent,
            "plan": plan,
            "code": code,
            "term_out": term_out,
            "analysis": analysis,
            "is_buggy": step.attributes.get("aide.buggy") == "true",
            "metric": (
                {"value": float(metric), "maximize": step.attributes.get("aide.maximize") == "true"}
                if metric is not None
                else None
            ),
            "operator": step.attributes.get("mle.operator", step.attributes.get("aide.stage", "")),
            "heldout_metric": float(step.attributes["mle.heldout"])
            if "mle.heldout" in step.attributes
            else None,
        }
        if output is not None and output.HasField("duration"):
            node["exec_time"] = output.duration.ToNanoseconds() / 1e9
        from_step[step.index] = node_id
        nodes.append(node)
    return {"task_id": traj.task.task_id, "task_description": "\n\n".join(description), "nodes": nodes}


def export_journal(traj: tpb.Trajectory) -> bytes:
    """``journal_of`` as JSON text (UTF-8)."""
    return json.dumps(journal_of(traj), ensure_ascii=False, indent=1).encode()


def tree_lines(journal: dict[str, Any], best: str = "") -> list[str]:
    """The node tree as indented text lines: operator, metric or bug, held-out score, best marker."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    for node in journal["nodes"]:
        children.setdefault(node["parent"], []).append(node)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for node in children.get(parent, []):
            if node["is_buggy"] or node["metric"] is None:
                what = "bug: " + (node["analysis"].splitlines()[0][:70] if node["analysis"] else "buggy")
            else:
                what = f"metric {node['metric']['value']:.4g}"
                if node.get("heldout_metric") is not None:
                    what += f" (held-out {node['heldout_metric']:.4g})"
            mark = "  ← best" if node["id"] == best else ""
            lines.append(f"{'  ' * depth}{node['id']} {node['operator']}: {what}{mark}")
            walk(node["id"], depth + 1)

    walk(None, 0)
    return lines


def metric_steps(journal: dict[str, Any]) -> list[tuple[int, float | None, float | None]]:
    """Per node in search order: (step, its validation metric or None when buggy, the best so far)."""
    best: float | None = None
    out: list[tuple[int, float | None, float | None]] = []
    for node in journal["nodes"]:
        metric = node["metric"]["value"] if node["metric"] and not node["is_buggy"] else None
        if metric is not None:
            maximize = node["metric"]["maximize"]
            if best is None or (metric > best if maximize else metric < best):
                best = metric
        out.append((node["step"], metric, best))
    return out


def metric_steps_line(journal: dict[str, Any]) -> str:
    """``metric_steps`` on one line: ``0:bug  1:30.5→30.5  2:bug→30.5 …`` (metric → best so far)."""
    parts = []
    for step, metric, best in metric_steps(journal):
        shown = f"{metric:.4g}" if metric is not None else "bug"
        parts.append(f"{step}:{shown}" + (f"→{best:.4g}" if best is not None else ""))
    return "  ".join(parts)
