"""Served aliases at the real gateway: resolution, canary and shadow routing, live signals, feedback,
``/v1/models`` entries and capture labels.

Two real gateway processes (``fast``: our fast path; ``litellm``: every request through LiteLLM) read
one filesystem object store, with the tiny upstream standing in for the model server. The ``fast``
gateway re-reads the alias table every second; the ``litellm`` one only every 60 s, so there a new
revision can only be seen that soon through the ``flywheel.alias.changed`` event that
:func:`set_alias` publishes on the session's real nats-server (as the orchestrator does).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.events.v1.events_pb2 import AliasChanged, EventMeta
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common import aliases as table
from flywheel_common.objectstore import FilesystemObjectStore
from flywheel_common.server import ready_file_info
from flywheel_gateway.aliases import (
    AliasService,
    FeedbackError,
    Resolution,
    object_store_configured,
    parse_feedback,
    resolve_revision,
)
from flywheel_gateway.capture import build_trajectory, is_shadow_copy
from flywheel_gateway.settings import GatewaySettings

from .conftest import BASE_MODEL, MASTER_KEY, Gateway, Sink, _spawn, _stop, load_adapter

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
REFRESH_S = {"fast": "1", "litellm": "60"}


@pytest.fixture(scope="module")
def alias_env(
    upstream: str, trajectory_sink: Sink, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Gateway], FilesystemObjectStore, str]]:
    root = tmp_path_factory.mktemp("alias-gateways")
    objects = root / "objects"
    started = {}
    for mode in ("fast", "litellm"):
        ready, log = root / f"{mode}.ready", root / f"{mode}.log"
        env = {
            "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY,
            "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
            "FLYWHEEL_GATEWAY_PORT": "0",
            "FLYWHEEL_GATEWAY_READY_FILE": str(ready),
            "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": f"{upstream}/v1",
            "FLYWHEEL_GATEWAY_BASE_MODELS": f'["{BASE_MODEL}"]',
            "FLYWHEEL_GATEWAY_CONFIG_DIR": str(root / mode),
            "FLYWHEEL_GATEWAY_FAST_PATH": "true" if mode == "fast" else "false",
            "FLYWHEEL_GATEWAY_CAPTURE": "true",
            "FLYWHEEL_GATEWAY_NUM_RETRIES": "0",
            "FLYWHEEL_GATEWAY_ALIAS_REFRESH_S": REFRESH_S[mode],
            "FLYWHEEL_GATEWAY_ALIAS_STATS_FLUSH_S": "0.3",
            "FLYWHEEL_GATEWAY_REPLICA_ID": f"{mode}-1",
            "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_sink.address,
            "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
            "FLYWHEEL_OBJECT_STORE_ROOT": str(objects),
            "FLYWHEEL_NATS_URL": nats_url,
            "FLYWHEEL_GATEWAY_LOG_FORMAT": "text",
        }
        started[mode] = (_spawn(["-m", "flywheel_gateway", "serve"], env, log), ready, log)
    gateways = {}
    try:
        deadline = time.monotonic() + 90
        for mode, (proc, ready, log) in started.items():
            while (info := ready_file_info(ready)) is None:
                assert proc.poll() is None, f"gateway {mode} exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"gateway {mode} not ready:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
            gateways[mode] = Gateway(f"http://127.0.0.1:{info['port']}", proc, log, mode)
        yield gateways, FilesystemObjectStore(objects), nats_url
    finally:
        for proc, _, _ in started.values():
            _stop(proc)


@pytest.fixture(params=["fast", "litellm"])
def env(
    request: pytest.FixtureRequest, alias_env: tuple[dict[str, Gateway], FilesystemObjectStore, str]
) -> tuple[Gateway, FilesystemObjectStore, str]:
    gateways, store, url = alias_env
    return gateways[request.param], store, url


# ------------------------------------------------------------------------------------------ helpers


def set_alias(
    store: FilesystemObjectStore,
    nats_url: str,
    name: str,
    target: str,
    *,
    canary: apb.Canary | None = None,
    change: int = apb.ALIAS_CHANGE_SET,
    adapter: tpb.AdapterIdentity | None = None,
) -> int:
    """Write the next revision of ``name`` (as the orchestrator does) and announce it; its number."""
    revisions = table.history(store, name)
    now = Timestamp()
    now.GetCurrentTime()
    rev = apb.AliasRevision(
        revision=(revisions[0].revision if revisions else 0) + 1,
        target=apb.AliasTarget(model=target, adapter=adapter),
        change=change,
        actor="test",
        create_time=now,
    )
    if canary is not None:
        rev.canary.CopyFrom(canary)
        rev.change = apb.ALIAS_CHANGE_CANARY_STARTED
    table.write_revision(store, name, rev)

    async def announce() -> None:
        nc = await nats.connect(nats_url)
        event = AliasChanged(
            meta=EventMeta(event_id=f"alias-changed:{name}:{rev.revision}", producer="test"),
            name=name,
            revision=rev,
        )
        await nc.publish("flywheel.alias.changed", event.SerializeToString())
        await nc.flush()
        await nc.close()

    asyncio.run(announce())
    return rev.revision


def chat(gateway: Gateway, model: str, **extra: object) -> httpx.Response:
    return gateway.post("/v1/chat/completions", {"model": model, **CHAT, **extra})


def wait_served(gateway: Gateway, name: str, revision: int, timeout: float = 10.0) -> httpx.Response:
    """The first answer for ``name`` from revision ``revision`` (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = chat(gateway, name)
        if reply.headers.get("x-flywheel-alias-revision") == str(revision):
            return reply
        assert time.monotonic() < deadline, f"revision {revision} of {name} not served: {reply.text[:300]}"
        time.sleep(0.1)


def wait_stats(
    store: FilesystemObjectStore, name: str, revision: int, check, timeout: float = 10.0
) -> dict[str, table.ArmCounters]:
    deadline = time.monotonic() + timeout
    while True:
        stats = table.read_stats(store, name, revision)
        if check(stats):
            return stats
        assert time.monotonic() < deadline, {m: c.to_json() for m, c in stats.items()}
        time.sleep(0.1)


def answered_by(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"].removeprefix("hello from ")


def canary(model: str, fraction: float = 0.0, shadow: bool = False) -> apb.Canary:
    started = Timestamp()
    started.GetCurrentTime()
    return apb.Canary(
        candidate=apb.AliasTarget(model=model),
        policy=apb.CanaryPolicy(fraction=fraction, shadow=shadow),
        start_time=started,
    )


# ------------------------------------------------------------------------------------ unit behaviour


def test_resolution_picks_arms() -> None:
    rev = apb.AliasRevision(revision=3, target=apb.AliasTarget(model="ft/a-v1"))
    plain = resolve_revision("agent/x", rev, lambda: 0.0)
    assert (plain.model, plain.arm, plain.stats_revision, plain.shadow) == ("ft/a-v1", "target", None, None)
    rev.canary.CopyFrom(canary("ft/a-v2"))  # fraction 0 means 0.1
    assert resolve_revision("agent/x", rev, lambda: 0.05).model == "ft/a-v2"
    stay = resolve_revision("agent/x", rev, lambda: 0.2)
    assert (stay.model, stay.arm, stay.stats_revision) == ("ft/a-v1", "target", 3)
    rev.canary.CopyFrom(canary("ft/a-v2", 0.5, shadow=True))
    shadow = resolve_revision("agent/x", rev, lambda: 0.0)
    assert (shadow.model, shadow.shadow, shadow.stats_revision) == ("ft/a-v1", "ft/a-v2", 3)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"[1]", None),
        (b"{nope", None),
        (b'{"success": true}', "id"),
        (b'{"id": "bad id with spaces", "success": true}', "id"),
        (b'{"id": "c-1"}', "success"),
        (b'{"id": "c-1", "success": "yes"}', "success"),
        (b'{"id": "c-1", "success": true, "score": 1.5}', "score"),
        (b'{"id": "c-1", "success": true, "score": true}', "score"),
        (b'{"id": "c-1", "success": true, "comment": 3}', "comment"),
        (b'{"id": "c-1", "success": true, "rating": 3}', "rating"),
    ],
)
def test_bad_feedback_names_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body)
    assert caught.value.param == param and str(caught.value)


def test_feedback_comment_bound_and_good_body() -> None:
    with pytest.raises(FeedbackError, match="2000"):
        parse_feedback(json.dumps({"id": "c-1", "success": False, "comment": "x" * 2001}).encode())
    good = parse_feedback(b'{"id": "chatcmpl-1", "success": false, "score": 0, "comment": "wrong file"}')
    assert good == {"id": "chatcmpl-1", "success": False, "score": 0.0, "comment": "wrong file"}


def test_aliases_off_without_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKEND", "ROOT", "ENDPOINT"):
        monkeypatch.delenv(f"FLYWHEEL_OBJECT_STORE_{name}", raising=False)
    assert not object_store_configured()
    assert AliasService.from_environment(GatewaySettings(master_key="sk-test-12345678")) is None
    assert object_store_configured({"FLYWHEEL_OBJECT_STORE_ROOT": "/tmp/x"})


async def test_signals_and_feedback_are_written_at_close(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path / "objects")
    settings = GatewaySettings(master_key="sk-test-12345678", replica_id="r-1", alias_stats_flush_s=3600)
    service = AliasService(settings, store)
    res = Resolution("agent/x", 4, "ft/a-v2", "canary", stats_revision=4)
    service.record(res, "ft/a-v2", 12.0, 200)
    service.record(res, "ft/a-v2", 0.0, 503)
    service.record(res, "ft/a-v2", 3.0, 400)  # the caller's fault: a request, not an error
    service.remember("chatcmpl-7", res, "ft/a-v2")
    answer = await service.feedback(b'{"id": "chatcmpl-7", "success": true}')
    assert answer == {"object": "feedback", "id": "chatcmpl-7", "recorded": True, "alias": "agent/x"}
    await service.feedback(b'{"id": "chatcmpl-7", "success": false}')  # a changed verdict replaces it
    assert table.read_stats(store, "agent/x", 4) == {}  # nothing flushed yet
    await service.close()
    arm = table.read_stats(store, "agent/x", 4)["ft/a-v2"]
    assert (arm.requests, arm.errors, sum(arm.latency)) == (3, 1, 1)
    assert (arm.feedback, arm.feedback_success) == (1, 0)
    stored = table.read_feedback(store, "chatcmpl-7")
    assert stored is not None and stored["success"] is False and stored["alias_revision"] == 4


# ------------------------------------------------------------------------------- the real gateway


def test_alias_answers_from_its_target_with_headers(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    name = f"agent/basic-{gateway.mode}"
    revision = set_alias(store, url, name, BASE_MODEL)
    reply = wait_served(gateway, name, revision)
    assert answered_by(reply) == BASE_MODEL
    assert reply.json()["model"] == name  # the caller's name, not the target's
    assert reply.headers["x-flywheel-alias"] == name
    assert reply.headers["x-flywheel-served-model"] == BASE_MODEL
    # Streams too: every chunk shows the alias, the headers come first.
    text, ids = [], set()
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": name, "stream": True, **CHAT}) as stream:  # fmt: skip
        assert stream.status_code == 200 and stream.headers["x-flywheel-alias"] == name
        assert stream.headers["x-flywheel-alias-revision"] == str(revision)
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert chunk["model"] == name, chunk
                ids.add(chunk["id"])
                text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    assert "".join(text) == f"hello from {BASE_MODEL}" and len(ids) == 1
    # Completions (not chat) resolve too.
    done = gateway.post("/v1/completions", {"model": name, "prompt": "x", "max_tokens": 2})
    assert done.status_code == 200 and done.headers["x-flywheel-alias"] == name, done.text


def test_new_revision_is_served_within_the_refresh_period(
    env: tuple[Gateway, FilesystemObjectStore, str], upstream: str, tmp_path: Path
) -> None:
    """fast: by the 1 s poll; litellm (60 s poll): only the flywheel.alias.changed event can do it."""
    gateway, store, url = env
    name = f"agent/moves-{gateway.mode}"
    adapter = f"moved-{gateway.mode}-v1"
    load_adapter(upstream, adapter, tmp_path / adapter)
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    revision = set_alias(store, url, name, f"ft/{adapter}")
    reply = wait_served(gateway, name, revision, timeout=5.0)
    assert answered_by(reply) == adapter and reply.headers["x-flywheel-served-model"] == f"ft/{adapter}"


def test_canary_splits_traffic_and_counts_each_arm(
    env: tuple[Gateway, FilesystemObjectStore, str], upstream: str, tmp_path: Path
) -> None:
    gateway, store, url = env
    name = f"agent/canary-{gateway.mode}"
    candidate = f"cand-{gateway.mode}-v1"
    load_adapter(upstream, candidate, tmp_path / candidate)
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    revision = set_alias(store, url, name, BASE_MODEL, canary=canary(f"ft/{candidate}", 0.5))
    first = wait_served(gateway, name, revision)
    seen = [answered_by(first)] + [answered_by(chat(gateway, name)) for _ in range(39)]
    counts = {model: seen.count(model) for model in set(seen)}
    assert set(counts) == {BASE_MODEL, candidate}, counts  # P(one arm only) = 2 * 0.5**40
    stats = wait_stats(store, name, revision, lambda s: sum(c.requests for c in s.values()) == 40)
    assert stats[BASE_MODEL].requests == counts[BASE_MODEL]
    assert stats[f"ft/{candidate}"].requests == counts[candidate]
    assert all(c.errors == 0 and sum(c.latency) == c.requests for c in stats.values())
    assert (store.root / f"alias-stats/{name}/{revision:010d}/{gateway.mode}-1.json").is_file()


def test_failing_candidate_shows_errors_in_its_arm(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    name = f"agent/bad-{gateway.mode}"
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    # `fail-*` models answer 503 upstream; a missing adapter answers 404: both are the arm's errors.
    revision = set_alias(store, url, name, BASE_MODEL, canary=canary("ft/fail-canary-v1", 0.5))
    replies = [wait_served(gateway, name, revision)] + [chat(gateway, name) for _ in range(19)]
    failed = [r for r in replies if r.status_code >= 500]
    assert failed and len(failed) < 20, [r.status_code for r in replies]
    assert all(r.json()["error"]["message"] for r in failed)
    stats = wait_stats(store, name, revision, lambda s: sum(c.requests for c in s.values()) == 20)
    bad = stats["ft/fail-canary-v1"]
    assert bad.errors == bad.requests == len(failed) and stats[BASE_MODEL].errors == 0


def test_shadow_answers_from_target_and_counts_the_candidate(
    env: tuple[Gateway, FilesystemObjectStore, str], upstream: str, tmp_path: Path
) -> None:
    gateway, store, url = env
    name = f"agent/shadow-{gateway.mode}"
    candidate = f"shadowed-{gateway.mode}-v1"
    load_adapter(upstream, candidate, tmp_path / candidate)
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    revision = set_alias(store, url, name, BASE_MODEL, canary=canary(f"ft/{candidate}", 0.5, shadow=True))
    replies = [wait_served(gateway, name, revision)] + [chat(gateway, name) for _ in range(5)]
    assert {answered_by(r) for r in replies} == {BASE_MODEL}  # the caller always gets the target
    stats = wait_stats(
        store,
        name,
        revision,
        lambda s: s.get(BASE_MODEL, table.ArmCounters()).requests == 6 and f"ft/{candidate}" in s,
    )
    shadow = stats[f"ft/{candidate}"]
    assert 1 <= shadow.requests <= 6 and shadow.errors == 0


def test_feedback_is_stored_and_counted(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    name = f"agent/feedback-{gateway.mode}"
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    revision = set_alias(store, url, name, BASE_MODEL, canary=canary("ft/never-loaded-v1", 0.01))
    reply = wait_served(gateway, name, revision)
    while reply.status_code != 200:  # the 1 % candidate is missing: ask again
        reply = chat(gateway, name)
    answer_id = reply.json()["id"]
    sent = gateway.post(
        "/v1/feedback", {"id": answer_id, "success": True, "score": 0.9, "comment": "fixed it"}
    )
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"object": "feedback", "id": answer_id, "recorded": True, "alias": name}
    stored = table.read_feedback(store, answer_id)
    assert stored is not None and stored["success"] is True and stored["score"] == 0.9
    assert (stored["alias"], stored["alias_revision"], stored["model"]) == (name, revision, BASE_MODEL)
    wait_stats(store, name, revision, lambda s: s.get(BASE_MODEL) is not None and s[BASE_MODEL].feedback == 1)
    assert table.read_stats(store, name, revision)[BASE_MODEL].feedback_success == 1
    # An id this replica never served is still stored, without an alias.
    other = gateway.post("/v1/feedback", {"id": f"unknown-{gateway.mode}", "success": False})
    assert other.status_code == 200 and other.json()["alias"] is None
    assert table.read_feedback(store, f"unknown-{gateway.mode}")["alias"] is None
    # Bad bodies: 400 naming the field; no key: 401.
    for body, param in (({"success": True}, "id"), ({"id": "x", "success": 1}, "success"),
                        ({"id": "x", "success": True, "score": -0.1}, "score"),
                        ({"id": "x", "success": True, "comment": "c" * 2001}, "comment")):  # fmt: skip
        bad = gateway.post("/v1/feedback", body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert gateway.post("/v1/feedback", {"id": "x", "success": True}, key=None).status_code == 401
    assert (
        gateway.post("/v1/feedback", {"id": "x", "success": True}, key="sk-wrong-0000000").status_code == 401
    )


def test_models_list_the_alias(
    env: tuple[Gateway, FilesystemObjectStore, str], upstream: str, tmp_path: Path
) -> None:
    gateway, store, url = env
    name = f"agent/listed-{gateway.mode}"
    adapter = f"lister-{gateway.mode}-v2"
    load_adapter(upstream, adapter, tmp_path / adapter)
    identity = tpb.AdapterIdentity(adapter_id=f"lister-{gateway.mode}/v2", name=f"lister-{gateway.mode}",
                                   version=2, digest="sha256:" + "0" * 64)  # fmt: skip
    revision = set_alias(store, url, name, f"ft/{adapter}", adapter=identity)
    wait_served(gateway, name, revision)
    revision = set_alias(store, url, name, f"ft/{adapter}", adapter=identity,
                         canary=canary(BASE_MODEL, 0.25))  # fmt: skip
    wait_served(gateway, name, revision)
    reply = httpx.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert reply.status_code == 200
    entry = next(m for m in reply.json()["data"] if m["id"] == name)
    assert entry["object"] == "model" and entry["owned_by"] == "flywheel" and entry["created"] > 0
    assert entry["root"] == f"ft/{adapter}" and entry["parent"] == BASE_MODEL
    assert entry["flywheel_alias"] == {
        "target": f"ft/{adapter}",
        "revision": revision,
        "adapter": {"name": f"lister-{gateway.mode}", "version": 2, "digest": "sha256:" + "0" * 64},
        "canary": {"model": BASE_MODEL, "fraction": 0.25, "shadow": False},
    }


def test_deleted_alias_is_404(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    name = f"agent/gone-{gateway.mode}"
    wait_served(gateway, name, set_alias(store, url, name, BASE_MODEL))
    set_alias(store, url, name, BASE_MODEL, change=apb.ALIAS_CHANGE_DELETED)
    deadline = time.monotonic() + 10
    while (reply := chat(gateway, name)).status_code == 200:
        assert time.monotonic() < deadline, "the deleted alias is still served"
        time.sleep(0.1)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found", reply.text
    assert "x-flywheel-alias" not in reply.headers


def test_routes_win_over_an_alias_of_the_same_name(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    probe = f"agent/probe-{gateway.mode}"
    set_alias(store, url, BASE_MODEL, "ft/fail-shadowed-v1")  # written directly: the orchestrator refuses it
    wait_served(gateway, probe, set_alias(store, url, probe, BASE_MODEL))  # the table has been re-read
    reply = chat(gateway, BASE_MODEL)
    assert answered_by(reply) == BASE_MODEL and "x-flywheel-alias" not in reply.headers
    assert "is not served: a route of the same name answers it" in gateway.log.read_text()


def test_capture_labels_of_alias_calls(
    env: tuple[Gateway, FilesystemObjectStore, str], trajectory_sink: Sink
) -> None:
    gateway, store, url = env
    name = f"agent/captured-{gateway.mode}"
    revision = set_alias(store, url, name, BASE_MODEL)
    wait_served(gateway, name, revision)
    marker = f"alias-capture-{gateway.mode}"
    reply = gateway.post(
        "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": marker}]}
    )
    assert reply.status_code == 200, reply.text
    stored = trajectory_sink.wait_for(lambda t: any(marker in s.content for s in t.steps))
    assert stored.policy.model == name
    labels = dict(stored.labels)
    assert labels["gateway_alias"] == name and labels["alias_revision"] == str(revision)
    assert labels["alias_arm"] == "target" and labels["served_model"].endswith(BASE_MODEL)
    assert labels["completion_id"] == reply.json()["id"]


def test_capture_labels_from_metadata_and_answer() -> None:
    """The labels capture derives: alias lineage from the call's metadata, id and digest from the answer."""
    metadata = {"model_group": "ft/a-v2", "flywheel_alias": "agent/x", "flywheel_alias_revision": 7,
                "flywheel_alias_arm": "canary", "served_model": "ft/a-v2"}  # fmt: skip
    kwargs = {"messages": [{"role": "user", "content": "q"}], "litellm_call_id": "c1",
              "litellm_params": {"metadata": metadata}}  # fmt: skip
    answer = {"id": "chatcmpl-9", "system_fingerprint": "sha256:" + "ab" * 32,
              "choices": [{"message": {"role": "assistant", "content": "a"}}]}  # fmt: skip
    labels = dict(build_trajectory(kwargs, answer, None, None).labels)
    assert build_trajectory(kwargs, answer, None, None).policy.model == "agent/x"
    assert labels["completion_id"] == "chatcmpl-9" and labels["adapter_digest"] == "sha256:" + "ab" * 32
    assert (labels["gateway_alias"], labels["alias_revision"], labels["alias_arm"], labels["served_model"]) == (
        "agent/x", "7", "canary", "ft/a-v2")  # fmt: skip
    plain = build_trajectory({"messages": [], "litellm_params": {"metadata": {}}},
                             {**answer, "system_fingerprint": "fp_44709d6fcb"}, None, None)  # fmt: skip
    assert "adapter_digest" not in plain.labels and "gateway_alias" not in plain.labels
    assert is_shadow_copy({"litellm_params": {"metadata": {**metadata, "flywheel_alias_arm": "shadow"}}})
    assert not is_shadow_copy(kwargs)


async def test_shadow_copies_are_bounded(tmp_path: Path) -> None:
    settings = GatewaySettings(master_key="sk-test-12345678", alias_shadow_max_in_flight=2)
    service = AliasService(settings, FilesystemObjectStore(tmp_path / "objects"))
    release = asyncio.Event()
    ran = []

    async def copy() -> None:
        ran.append(1)
        await release.wait()

    assert [service.shadow(copy) for _ in range(4)] == [True, True, False, False]
    assert service.shadow_dropped == 2
    release.set()
    await service.close()
    assert len(ran) == 2 and service.shadow(copy)  # room again once the first ones ended
    await service.close()


def test_alias_of_a_model_nothing_serves_is_404(env: tuple[Gateway, FilesystemObjectStore, str]) -> None:
    gateway, store, url = env
    name = f"agent/nowhere-{gateway.mode}"
    revision = set_alias(store, url, name, "anthropic/claude-x")  # no Anthropic key: no such route
    reply = wait_served(gateway, name, revision)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert "anthropic/claude-x" in reply.json()["error"]["message"]
