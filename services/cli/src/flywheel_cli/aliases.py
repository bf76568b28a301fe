"""``flywheel alias list|show|set|rollback|delete``: served aliases on the orchestrator.

An alias is a stable gateway model name (``agent/repo-fixer``) that points at a base model or an
adapter route; every change is a new revision with who made it and why. These commands call the
orchestrator's alias RPCs; the gateway picks a change up within seconds.

The request builders (:func:`canary_policy`, :func:`set_request`, :func:`rollback_request`) and
the renderers (:func:`list_table`, :func:`history_table`, :func:`arms_table`) are plain functions
of their inputs, so tests check them without a server; ``flywheel loop create`` shares the canary
options (:func:`canary_options`).
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from rich.markup import escape
from rich.table import Table

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, duration, enum_name, out, when

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")
CHANGE_STYLE = {
    apb.ALIAS_CHANGE_SET: "green",
    apb.ALIAS_CHANGE_CANARY_STARTED: "cyan",
    apb.ALIAS_CHANGE_CANARY_PROMOTED: "green",
    apb.ALIAS_CHANGE_CANARY_ROLLED_BACK: "yellow",
    apb.ALIAS_CHANGE_ROLLBACK: "yellow",
    apb.ALIAS_CHANGE_DELETED: "red",
}


def actor() -> str:
    """Who the CLI says is changing an alias: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no USER/LOGNAME (a bare container)
        return "cli:unknown"


def parse_duration(text: str, param_hint: str = "--canary-max-duration") -> Duration:
    """``10m``, ``90s``, ``1h30m``, ``2.5m`` or plain seconds (``600``) as a positive Duration."""
    value = text.strip().lower()
    seconds: float | None = None
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.match(value)
        if value and match:
            parts = match.groupdict()
            seconds = sum(float(parts[u] or 0) * k for u, k in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds is None or not seconds > 0 or seconds > 10 * 365 * 86400:
        raise click.BadParameter(
            f"{text!r} is not a positive duration like 10m, 90s or 1h30m", param_hint=param_hint
        )
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def canary_options(fn: F) -> F:
    """``--canary-fraction``, ``--canary-min-requests``, ``--canary-max-duration``, ``--shadow``."""
    options = [
        click.option(
            "--canary-fraction",
            type=float,
            default=None,
            help="Canary: share of the alias's requests the candidate answers, in (0, 1) (default 0.1).",
        ),
        click.option(
            "--canary-min-requests",
            type=int,
            default=None,
            help="Canary: requests the candidate answers before it is judged (default 20).",
        ),
        click.option(
            "--canary-max-duration",
            default=None,
            metavar="DURATION",
            help="Canary: longest it runs, e.g. 10m, 90s, 1h30m (default 10m); then it is rolled back.",
        ),
        click.option(
            "--shadow",
            is_flag=True,
            help="Shadow instead of canary: callers keep the incumbent's answers, the candidate "
            "answers a copy of each request and only its signals are recorded.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def canary_policy(opts: dict[str, Any]) -> apb.CanaryPolicy | None:
    """The CanaryPolicy the canary options describe; None when none of them was given."""
    fraction, min_requests = opts.get("canary_fraction"), opts.get("canary_min_requests")
    max_duration, shadow = opts.get("canary_max_duration"), opts.get("shadow")
    if fraction is None and min_requests is None and max_duration is None and not shadow:
        return None
    policy = apb.CanaryPolicy(shadow=bool(shadow))
    if fraction is not None:
        policy.fraction = fraction
    if min_requests is not None:
        policy.min_requests = min_requests
    if max_duration is not None:
        policy.max_duration.CopyFrom(parse_duration(max_duration))
    return policy


def set_request(name: str, model: str, opts: dict[str, Any], who: str) -> apb.SetAliasRequest:
    """SetAlias: move ``name`` to ``model`` at once, or start a canary of it."""
    request = apb.SetAliasRequest(
        name=name,
        target=apb.AliasTarget(model=model, skill_id=opts.get("skill") or ""),
        expected_revision=opts.get("expected_revision") or 0,
        actor=who,
        reason=opts.get("reason") or "",
        evaluation_id=opts.get("evaluation_id") or "",
    )
    policy = canary_policy(opts)
    if policy is not None:
        request.canary.CopyFrom(policy)
    return request


def rollback_request(name: str, to_revision: int, reason: str, who: str) -> apb.RollbackAliasRequest:
    return apb.RollbackAliasRequest(name=name, to_revision=to_revision, actor=who, reason=reason)


def change_name(change: int) -> str:
    return enum_name(change, apb.AliasChange, "ALIAS_CHANGE_").replace("_", " ")


def target_text(target: apb.AliasTarget) -> str:
    """``ft/coder-v3 (coder/v3, sha256:0123456789ab…)``, or the bare model name of a base model."""
    if not target.model:
        return "-"
    skill = f" + skill {target.skill_id}" if target.skill_id else ""
    adapter = target.adapter
    if not adapter.adapter_id and not adapter.name:
        return target.model + skill
    ident = adapter.adapter_id or f"{adapter.name}/v{adapter.version}"
    digest = f", {adapter.digest[:19]}…" if adapter.digest else ""
    return f"{target.model} ({ident}{digest}){skill}"


def canary_text(canary: apb.Canary) -> str:
    """``canary of ft/x-v2 at 10%`` or ``shadow of ft/x-v2``; empty when there is none."""
    if not canary.candidate.model:
        return ""
    policy = canary.policy
    if policy.shadow:
        return f"shadow of {canary.candidate.model}"
    return f"canary of {canary.candidate.model} at {(policy.fraction or 0.1):.0%}"


def policy_text(policy: apb.CanaryPolicy) -> str:
    """A canary's settings on one line, defaults filled in as the orchestrator applies them."""
    parts = ["shadow" if policy.shadow else f"fraction {(policy.fraction or 0.1):g}"]
    parts.append(f"min {policy.min_requests or 20} requests")
    limit = duration(policy.max_duration) if policy.max_duration.ToNanoseconds() else "10m00s"
    parts.append(f"max {limit}")
    if policy.HasField("max_error_rate_increase"):
        parts.append(f"error rate +{policy.max_error_rate_increase:g} at most")
    if policy.max_latency_ratio:
        parts.append(f"latency x{policy.max_latency_ratio:g} at most")
    if policy.HasField("max_success_drop"):
        parts.append(f"success -{policy.max_success_drop:g} at most")
    return ", ".join(parts)


def origin_text(revision: apb.AliasRevision) -> str:
    """The evaluation and loop behind a change."""
    return " / ".join(x for x in (revision.evaluation_id, revision.loop_id) if x) or "-"


def list_table(aliases: Sequence[apb.Alias]) -> Table:
    table = Table("alias", "rev", "target", "canary", "last change", "when", "by")
    for alias in aliases:
        cur = alias.current
        style = CHANGE_STYLE.get(cur.change, "white")
        table.add_row(
            escape(alias.name),
            str(cur.revision),
            escape(target_text(cur.target)) if cur.change != apb.ALIAS_CHANGE_DELETED else "[red]deleted[/]",
            escape(canary_text(cur.canary)),
            f"[{style}]{change_name(cur.change)}[/]",
            when(cur.create_time),
            escape(cur.actor),
        )
    return table


def history_table(alias: apb.Alias) -> Table:
    """Every revision, newest first: what changed, the target from then on, who, why, and from
    which evaluation or loop."""
    table = Table(
        "rev", "time", "change", "target", "actor", "reason", "evaluation / loop",
        title=f"history of {escape(alias.name)}", title_justify="left",
    )  # fmt: skip
    for rev in alias.history or [alias.current]:
        style = CHANGE_STYLE.get(rev.change, "white")
        target = target_text(rev.target)
        if rev.canary.candidate.model:
            target += f" + {canary_text(rev.canary)}"
        table.add_row(
            str(rev.revision),
            when(rev.create_time),
            f"[{style}]{change_name(rev.change)}[/]",
            escape(target),
            escape(rev.actor),
            escape(rev.reason),
            escape(origin_text(rev)),
        )
    return table


def arms_table(stats: Sequence[apb.ArmStats], title: str = "canary arms") -> Table:
    """Live signals of a canary's arms (incumbent first, then the candidate)."""
    table = Table("arm", "model", "requests", "errors", "error rate", "p50 latency", "feedback", "success",
                  title=title, title_justify="left")  # fmt: skip
    for i, arm in enumerate(stats):
        table.add_row(
            "incumbent" if i == 0 else "candidate" if i == 1 else str(i),
            escape(arm.model),
            str(arm.requests),
            str(arm.errors),
            f"{arm.error_rate:.1%}",
            f"{arm.latency_p50_ms:.0f} ms" if arm.requests else "-",
            str(arm.feedback),
            f"{arm.success_rate:.1%}" if arm.feedback else "-",
        )
    return table


def summary_lines(alias: apb.Alias) -> list[str]:
    """What ``show`` prints above the tables: the target, and a running canary."""
    cur = alias.current
    if cur.change == apb.ALIAS_CHANGE_DELETED:
        lines = [f"[bold]{escape(alias.name)}[/] · revision {cur.revision} · [red]deleted[/]"]
    else:
        lines = [
            f"[bold]{escape(alias.name)}[/] → {escape(target_text(cur.target))} · revision {cur.revision}"
        ]
    if cur.canary.candidate.model:
        lines.append(
            f"{escape(canary_text(cur.canary))} since {when(cur.canary.start_time)} "
            f"({escape(policy_text(cur.canary.policy))})"
        )
    return lines


def print_alias(alias: apb.Alias, as_json: bool, history: bool = True) -> None:
    if as_json:
        out.print_json(json_format.MessageToJson(alias, preserving_proto_field_name=True))
        return
    for line in summary_lines(alias):
        out.print(line, highlight=False, soft_wrap=True)
    if alias.canary_stats:
        out.print(arms_table(alias.canary_stats))
    if history:
        out.print(history_table(alias))


@click.group("alias")
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.pass_context
def alias_cmd(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Served aliases: stable gateway model names that point at a model or adapter."""
    rpc.remember_connection(ctx, address, state_dir)


@alias_cmd.command("list")
@click.option("--show-deleted", is_flag=True, help="Also list deleted aliases.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def alias_list(ctx: click.Context, show_deleted: bool, as_json: bool) -> None:
    """List aliases: current revision, target, running canary, last change."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        aliases = stub.ListAliases(apb.ListAliasesRequest(show_deleted=show_deleted)).aliases
    if as_json:
        for alias in aliases:
            click.echo(json_format.MessageToJson(alias, indent=None, preserving_proto_field_name=True))
        return
    out.print(list_table(aliases))


@alias_cmd.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the alias and its history as JSON.")
@click.pass_context
def alias_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show an alias's target, a running canary's live signals, and its whole history."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        alias = stub.GetAlias(apb.GetAliasRequest(name=name)).alias
    print_alias(alias, as_json)


@alias_cmd.command("set")
@click.argument("name")
@click.argument("model")
@canary_options
@click.option("--reason", default="", help="Why (kept in the alias's history).")
@click.option(
    "--skill",
    default="",
    metavar="SKILL_ID",
    help="Serve this stored skill with MODEL (a pair): runs and evaluations of the alias play with it.",
)
@click.option("--evaluation-id", default="", help="The evaluation behind the change, if any.")
@click.option(
    "--expected-revision",
    type=int,
    default=0,
    help="Refuse (ABORTED) if the alias has moved past this revision since you looked (0 = any).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the alias after the change as JSON.")
@click.pass_context
def alias_set(ctx: click.Context, /, name: str, model: str, as_json: bool, **opts: Any) -> None:
    """Point NAME at MODEL (a gateway model name: a base model or an adapter route like ft/coder-v3).

    With a canary option (or --shadow) the alias keeps its target and MODEL is tried on a share
    of its traffic first; the orchestrator then promotes or rolls it back by itself.
    """
    request = set_request(name, model, opts, actor())
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        alias = stub.SetAlias(request).alias
    if not as_json:
        what = "canary started" if request.HasField("canary") else "set"
        console.print(f"{escape(alias.name)}: {what} at revision {alias.current.revision}")
    print_alias(alias, as_json, history=False)


@alias_cmd.command("rollback")
@click.argument("name")
@click.option(
    "--to-revision", type=int, default=0, help="Revision whose target to go back to (0 = the one before)."
)
@click.option("--reason", default="", help="Why (kept in the alias's history).")
@click.option("--json", "as_json", is_flag=True, help="Print the alias after the rollback as JSON.")
@click.pass_context
def alias_rollback(ctx: click.Context, name: str, to_revision: int, reason: str, as_json: bool) -> None:
    """Point NAME back at an earlier revision's target (a running canary is dropped)."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        alias = stub.RollbackAlias(rollback_request(name, to_revision, reason, actor())).alias
    if not as_json:
        console.print(f"{escape(alias.name)}: rolled back at revision {alias.current.revision}")
    print_alias(alias, as_json, history=False)


@alias_cmd.command("delete")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the alias's history).")
@click.option("--json", "as_json", is_flag=True, help="Print the alias after the deletion as JSON.")
@click.pass_context
def alias_delete(ctx: click.Context, name: str, reason: str, as_json: bool) -> None:
    """Stop serving NAME at the gateway; its history stays, and setting it again continues it."""
    request = apb.DeleteAliasRequest(name=name, actor=actor(), reason=reason)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        alias = stub.DeleteAlias(request).alias
    if as_json:
        print_alias(alias, as_json)
        return
    console.print(f"{escape(alias.name)}: deleted at revision {alias.current.revision}")
