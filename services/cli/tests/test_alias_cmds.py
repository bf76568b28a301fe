"""``flywheel alias …`` against a scripted orchestrator (a real gRPC server, see conftest.py).

A real alias needs the orchestrator, the gateway and a served model; what these tests check is
the CLI's half: that each command line becomes the right request (actor, reason, canary policy,
expected revision), that responses are printed (target, history, canary arms) and that a gRPC
error is one line with its status code and a non-zero exit. The request builders and parsers are
also checked as plain functions.
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import click
import grpc
import pytest
from click.testing import CliRunner, Result

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli.aliases import canary_policy, parse_duration, set_request
from flywheel_cli.main import cli

ME = f"cli:{getpass.getuser()}"


def flywheel(address: str, *args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "260"})
    return runner.invoke(cli, ["alias", "--address", address, *args], catch_exceptions=False)


def stamp(seconds: int) -> dict[str, int]:
    return {"seconds": 1_796_000_000 + seconds}


def revision(rev: int, change: int, model: str, **extra: object) -> apb.AliasRevision:
    r = apb.AliasRevision(revision=rev, change=change, target=apb.AliasTarget(model=model), **extra)  # type: ignore[arg-type]
    r.create_time.FromSeconds(1_796_000_000 + rev * 60)
    return r


def fixer_alias() -> apb.Alias:
    """agent/fixer: set to the base, promoted by a loop, then a canary of v3 running."""
    v2 = apb.AliasTarget(
        model="ft/fixer-v2",
        adapter=tpb.AdapterIdentity(
            adapter_id="fixer/v2", name="fixer", version=2, digest="sha256:" + "ab" * 32
        ),
    )
    first = revision(1, apb.ALIAS_CHANGE_SET, "gemma-3-270m", actor="cli:alice", reason="first")
    second = revision(2, apb.ALIAS_CHANGE_SET, "", actor="loop/loop-01", reason="gate promoted",
                      evaluation_id="eval-07", loop_id="loop-01")  # fmt: skip
    second.target.CopyFrom(v2)
    third = revision(3, apb.ALIAS_CHANGE_CANARY_STARTED, "", actor="loop/loop-02", loop_id="loop-02")
    third.target.CopyFrom(v2)
    third.canary.candidate.model = "ft/fixer-v3"
    third.canary.policy.fraction = 0.25
    third.canary.start_time.FromSeconds(1_796_000_000 + 180)
    alias = apb.Alias(name="agent/fixer", current=third, history=[third, second, first])
    alias.canary_stats.extend(
        [
            apb.ArmStats(model="ft/fixer-v2", requests=60, errors=3, error_rate=0.05, latency_p50_ms=41),
            apb.ArmStats(
                model="ft/fixer-v3",
                requests=20,
                errors=0,
                latency_p50_ms=37,
                feedback=4,
                feedback_success=3,
                success_rate=0.75,
            ),
        ]
    )
    return alias


def test_set_sends_the_actor_reason_and_expected_revision(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    after = revision(4, apb.ALIAS_CHANGE_SET, "ft/fixer-v3", actor=ME, reason="by hand")
    orch.answers["SetAlias"] = apb.SetAliasResponse(alias=apb.Alias(name="agent/fixer", current=after))
    result = flywheel(orch.address, "set", "agent/fixer", "ft/fixer-v3", "--reason", "by hand",
                      "--expected-revision", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orch.asked("SetAlias") == [
        apb.SetAliasRequest(
            name="agent/fixer",
            target=apb.AliasTarget(model="ft/fixer-v3"),
            expected_revision=3,
            actor=ME,
            reason="by hand",
        )
    ]
    assert "agent/fixer: set at revision 4" in result.output
    assert "agent/fixer → ft/fixer-v3 · revision 4" in result.output


def test_set_with_canary_options_starts_a_canary(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    orch.answers["SetAlias"] = apb.SetAliasResponse(alias=fixer_alias())
    result = flywheel(orch.address, "set", "agent/fixer", "ft/fixer-v3", "--canary-fraction", "0.25",
                      "--canary-min-requests", "50", "--canary-max-duration", "1h30m")  # fmt: skip
    assert result.exit_code == 0, result.output
    (request,) = orch.asked("SetAlias")
    assert request.HasField("canary")
    assert request.canary.fraction == 0.25 and request.canary.min_requests == 50
    assert request.canary.max_duration.seconds == 5400 and not request.canary.shadow
    assert "canary started at revision 3" in result.output
    assert "canary of ft/fixer-v3 at 25%" in result.output

    shadow = flywheel(orch.address, "set", "agent/fixer", "ft/fixer-v3", "--shadow")
    assert shadow.exit_code == 0, shadow.output
    assert orch.asked("SetAlias")[1].canary == apb.CanaryPolicy(shadow=True)


def test_a_bad_duration_is_refused_before_any_call(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    result = flywheel(orch.address, "set", "agent/fixer", "m", "--canary-max-duration", "ten minutes")
    assert result.exit_code == 2
    assert "--canary-max-duration" in result.output and "'ten minutes'" in result.output
    assert orch.asked("SetAlias") == []


def test_show_prints_target_canary_arms_and_history(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    orch.answers["GetAlias"] = apb.GetAliasResponse(alias=fixer_alias())
    result = flywheel(orch.address, "show", "agent/fixer")
    assert result.exit_code == 0, result.output
    assert orch.asked("GetAlias") == [apb.GetAliasRequest(name="agent/fixer")]
    text = result.output
    assert "agent/fixer → ft/fixer-v2 (fixer/v2, sha256:abababababab…) · revision 3" in text
    assert "canary of ft/fixer-v3 at 25% since 2026-" in text and "min 20 requests" in text
    # Arms: incumbent and candidate with their live signals.
    incumbent = next(line for line in text.splitlines() if "incumbent" in line and "ft/fixer-v2" in line)
    assert "60" in incumbent and "5.0%" in incumbent and "41 ms" in incumbent
    candidate = next(line for line in text.splitlines() if "candidate" in line and "ft/fixer-v3" in line)
    assert "75.0%" in candidate
    # History, newest first, with who, why and from where.
    rows = [line for line in text.splitlines() if "loop/loop-0" in line or "cli:alice" in line]
    assert len(rows) == 3
    assert "canary started" in rows[0] and "+ canary of ft/fixer-v3" in rows[0]
    assert "gate promoted" in rows[1] and "eval-07 / loop-01" in rows[1]
    assert "gemma-3-270m" in rows[2] and "first" in rows[2]

    as_json = flywheel(orch.address, "show", "agent/fixer", "--json")
    assert as_json.exit_code == 0
    shown = json.loads(as_json.output)
    assert shown["name"] == "agent/fixer" and len(shown["history"]) == 3


def test_list_shows_each_alias_and_passes_show_deleted(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    gone = apb.Alias(name="agent/old", current=revision(7, apb.ALIAS_CHANGE_DELETED, "", actor=ME))
    fixer = fixer_alias()
    del fixer.history[:]
    orch.answers["ListAliases"] = apb.ListAliasesResponse(aliases=[fixer, gone])
    result = flywheel(orch.address, "list", "--show-deleted")
    assert result.exit_code == 0, result.output
    assert orch.asked("ListAliases") == [apb.ListAliasesRequest(show_deleted=True)]
    fixer_row = next(line for line in result.output.splitlines() if "agent/fixer" in line)
    assert "ft/fixer-v2" in fixer_row and "canary of ft/fixer-v3 at 25%" in fixer_row
    old_row = next(line for line in result.output.splitlines() if "agent/old" in line)
    assert "deleted" in old_row and "7" in old_row

    lines = flywheel(orch.address, "list", "--json").output.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["agent/fixer", "agent/old"]


def test_rollback_and_delete_send_actor_and_reason(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    back = revision(5, apb.ALIAS_CHANGE_ROLLBACK, "gemma-3-270m", actor=ME, reason="worse")
    orch.answers["RollbackAlias"] = apb.RollbackAliasResponse(
        alias=apb.Alias(name="agent/fixer", current=back)
    )
    result = flywheel(orch.address, "rollback", "agent/fixer", "--to-revision", "1", "--reason", "worse")
    assert result.exit_code == 0, result.output
    assert orch.asked("RollbackAlias") == [
        apb.RollbackAliasRequest(name="agent/fixer", to_revision=1, actor=ME, reason="worse")
    ]
    assert "rolled back at revision 5" in result.output and "→ gemma-3-270m" in result.output

    gone = revision(6, apb.ALIAS_CHANGE_DELETED, "", actor=ME)
    orch.answers["DeleteAlias"] = apb.DeleteAliasResponse(alias=apb.Alias(name="agent/fixer", current=gone))
    result = flywheel(orch.address, "delete", "agent/fixer", "--reason", "retired")
    assert result.exit_code == 0, result.output
    assert orch.asked("DeleteAlias") == [
        apb.DeleteAliasRequest(name="agent/fixer", actor=ME, reason="retired")
    ]
    assert "deleted at revision 6" in result.output


@pytest.mark.parametrize(
    ("args", "method", "code"),
    [
        (("set", "agent/fixer", "m", "--expected-revision", "2"), "SetAlias", grpc.StatusCode.ABORTED),
        (("show", "agent/none"), "GetAlias", grpc.StatusCode.NOT_FOUND),
        (
            ("rollback", "agent/fixer", "--to-revision", "9"),
            "RollbackAlias",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_grpc_errors_are_one_line_with_the_code(
    scripted_orchestrator: Any, args: tuple[str, ...], method: str, code: grpc.StatusCode
) -> None:
    orch = scripted_orchestrator
    orch.refuse(method, code, f"{method} refused: the details")
    result = flywheel(orch.address, *args)
    assert result.exit_code == 1
    assert result.output.strip() == f"error ({code.name}): {method} refused: the details"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45), ("1H", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).ToNanoseconds() == seconds * 1_000_000_000


@pytest.mark.parametrize("text", ["", "0", "-5", "10 minutes", "m", "1d", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(text)


def test_request_builders() -> None:
    assert canary_policy({}) is None
    assert canary_policy({"canary_fraction": None, "shadow": False}) is None
    plain = set_request("a/b", "m", {}, "cli:x")
    assert not plain.HasField("canary") and plain.actor == "cli:x" and plain.expected_revision == 0
    canary = set_request("a/b", "m", {"canary_min_requests": 5}, "cli:x")
    assert canary.canary == apb.CanaryPolicy(min_requests=5)
