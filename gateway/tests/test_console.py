"""The console's sign-in, roles and guards, without services (tests/test_console_e2e.py has the
pages on a real stack in a real browser).

The services behind the console are absent here on purpose: a port nothing listens on, so the
pages must say which service is unreachable instead of failing.
"""

from __future__ import annotations

import json
import socket

import pytest
from starlette.testclient import TestClient

from flywheel_gateway.console import ConsoleApp
from flywheel_gateway.console.app import COOKIE, SESSION_S, Sessions, short_enum, to_json
from flywheel_gateway.console.data import Backends, ServiceAddresses

MASTER = "sk-master-0123456789"
VIEWER = "sk-viewer-0123456789"


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def client() -> TestClient:
    async def viewer(key: str) -> str | None:  # stands in for LiteLLM's virtual-key check
        return "viewer" if key == VIEWER else None

    nowhere = closed_port()
    addresses = ServiceAddresses(nowhere, nowhere, nowhere, nowhere)
    return TestClient(ConsoleApp(MASTER, viewer, Backends(addresses)), follow_redirects=False)


def test_sessions_are_signed_expire_and_keep_their_role() -> None:
    sessions = Sessions(MASTER.encode())
    token = sessions.issue("admin", now=1000.0)
    assert sessions.role(token, now=1001.0) == "admin"
    assert sessions.role(token, now=1000.0 + SESSION_S + 1) is None  # expired
    body, sig = token.split(".")
    forged = json.dumps({"role": "admin", "exp": 10**12}).encode()
    import base64

    assert sessions.role(base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + sig) is None
    assert sessions.role(body + ".x") is None and sessions.role("") is None
    assert Sessions(b"another-master-key").role(token, now=1001.0) is None  # another gateway's key


def test_pages_need_a_key_and_the_sign_in_sets_a_cookie(client: TestClient) -> None:
    page = client.get("/console/runs")
    assert page.status_code == 303 and page.headers["location"] == "/console/login?next=/console/runs"
    api = client.get("/console/api/stream/job/ftj-1")
    assert api.status_code == 401 and api.json()["error"]["code"] == "missing_api_key"
    refused = client.post("/console/login?next=/console/runs", data={"key": "sk-wrong-key-000"})
    assert refused.status_code == 401 and "not accepted" in refused.text
    signed = client.post("/console/login?next=/console/runs", data={"key": MASTER})
    assert signed.status_code == 303 and signed.headers["location"] == "/console/runs"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/console" in cookie


def test_the_sign_in_never_redirects_off_the_console(client: TestClient) -> None:
    signed = client.post("/console/login?next=https://evil.example/", data={"key": MASTER})
    assert signed.headers["location"] == "/console/"


def test_an_unreachable_service_is_named_on_the_page(client: TestClient) -> None:
    page = client.get("/console/jobs", headers={"authorization": f"Bearer {MASTER}"})
    assert page.status_code == 502
    assert "trainer at 127.0.0.1:" in page.text and "UNAVAILABLE" in page.text


def test_viewers_may_look_but_not_cancel(client: TestClient) -> None:
    viewer = {"authorization": f"Bearer {VIEWER}", "x-flywheel-console": "1"}
    assert client.get("/console/jobs", headers=viewer).status_code == 502  # looked (trainer absent)
    refused = client.post("/console/api/job/ftj-1/cancel", headers=viewer)
    assert refused.status_code == 403 and "master key" in refused.json()["error"]["message"]
    assert client.get("/console/jobs", headers={"authorization": "Bearer sk-nobody-000"}).status_code == 303


def test_changes_need_the_same_origin_header(client: TestClient) -> None:
    no_header = client.post("/console/api/job/ftj-1/cancel", headers={"authorization": f"Bearer {MASTER}"})
    assert no_header.status_code == 403 and "x-flywheel-console" in no_header.json()["error"]["message"]
    unknown = client.post(
        "/console/api/widget/1/cancel",
        headers={"authorization": f"Bearer {MASTER}", "x-flywheel-console": "1"},
    )
    assert unknown.status_code == 404


def test_page_data_cannot_end_its_script_element() -> None:
    text = str(to_json({"content": "</script><script>alert(1)</script> & more"}))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["content"].startswith("</script>")


def test_enum_names_read_as_words() -> None:
    assert short_enum("JOB_STATE_SUCCEEDED") == "succeeded"
    assert short_enum("LOOP_STAGE_FINE_TUNE") == "fine tune"
    assert short_enum(None) == ""


class ScriptedBackends(Backends):
    """Answers a skill optimisation's page from fixed data in the shapes the orchestrator's RPCs
    give (a stand-in for the orchestrator: its real pages run in tests/test_console_e2e.py)."""

    SKILLS = {"skill-a": "# Skill\nBe careful.\n", "skill-b": "# Skill\nBe careful.\nRun the tests first.\n"}

    async def skill_optimization(self, optimization_id: str) -> dict:
        return {
            "id": optimization_id,
            "state": "JOB_STATE_SUCCEEDED",
            "stage": "SKILL_OPT_STAGE_DONE",
            "suite": "mini",
            "target_model": "tiny",
            "optimizer_model": "openai/big",
            "baseline_score": 0.25,
            "best_score": 0.75,
            "current_score": 0.75,
            "current_skill_id": "skill-b",
            "test": {"baseline": 0.5, "best": 1.0, "final": 1.0, "episodes": 4},
            "steps": [
                {
                    "index": 1,
                    "epoch": 1,
                    "skill_before_id": "skill-a",
                    "candidate_skill_id": "skill-b",
                    "score_before": 0.25,
                    "candidate_score": 0.75,
                    "decision": "SKILL_GATE_DECISION_ACCEPTED",
                    "reason": "0.75 > 0.25",
                    "selected": [
                        {"op": "SKILL_EDIT_OP_APPEND", "rationale": "tests catch the bug", "support": 3}
                    ],
                },
                {
                    "index": 2,
                    "epoch": 1,
                    "skill_before_id": "skill-b",
                    "candidate_skill_id": "skill-a",
                    "score_before": 0.75,
                    "candidate_score": 0.25,
                    "decision": "SKILL_GATE_DECISION_REJECTED",
                    "reason": "0.25 <= 0.75",
                },
            ],
        }

    async def skill(self, skill_id: str) -> dict:
        return {"id": skill_id, "text": self.SKILLS[skill_id]}


def test_a_skill_optimisation_page_shows_steps_decisions_and_diffs() -> None:
    async def nobody(key: str) -> None:
        return None

    app = ConsoleApp(MASTER, nobody, ScriptedBackends(ServiceAddresses()))
    page = TestClient(app).get("/console/skills/sko-1", headers={"authorization": f"Bearer {MASTER}"})
    assert page.status_code == 200, page.text
    html = page.text
    assert "+Run the tests first." in html and "-Run the tests first." in html  # both steps' diffs
    assert "accepted" in html and "rejected" in html and "tests catch the bug" in html
    assert "baseline 50.0%, best 100.0%, final 100.0%" in html  # the TEST scores
    data = html.split('id="skill-data">', 1)[1].split("</script>", 1)[0]
    assert [p["candidate_score"] for p in json.loads(data)["points"]] == [0.75, 0.25]  # the chart's points


class WaitingJobBackends(Backends):
    """A QUEUED fine-tune whose pod waits for a GPU, in the shape GetFineTuneJob gives (a stand-in
    for the trainer: the real page runs in tests/test_console_e2e.py)."""

    async def job(self, job_id: str) -> dict:
        reason = "waiting for a node (Unschedulable): 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        return {
            "id": job_id,
            "state": "JOB_STATE_QUEUED",
            "method": "FINE_TUNE_METHOD_SFT",
            "status_message": reason,
        }

    async def history(self, job: dict) -> list:
        return []


def test_a_waiting_job_says_why_and_is_not_an_error() -> None:
    async def nobody(key: str) -> None:
        return None

    app = ConsoleApp(MASTER, nobody, WaitingJobBackends(ServiceAddresses()))
    page = TestClient(app).get("/console/jobs/ft-1", headers={"authorization": f"Bearer {MASTER}"})
    assert page.status_code == 200, page.text
    assert (
        "waiting: waiting for a node (Unschedulable)" in page.text
        and "Insufficient nvidia.com/gpu" in page.text
    )
    assert 'class="banner bad"' not in page.text
