"""The kubernetes backend against a fake Kubernetes API server.

A cluster cannot run here, so the Kubernetes API is faked: :class:`FakeKube` is a small HTTP
server implementing only the endpoints the trainer's official ``kubernetes`` client calls (create,
read and delete a batch/v1 Job; list and read pods; follow a pod's log), with a scripted Job
controller: each pod it makes is unschedulable, OOMKilled, evicted, or runs — the last for real,
as a local subprocess of the pod's command (``python -m flywheel_trainer run-job`` with the env of
the Job's container) whose output is served as the pod's log. Everything else is real: the
kubernetes client, the trainer's gRPC service, the object store, the training on the tiny model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from flywheel.trainer.v1 import trainer_pb2 as S
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import sft_job, wait_for
from flywheel_trainer.protocol import PREFIX, Resuming, decode
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = 1, 2, 3, 4, 5
NAMESPACE = "flywheel"
IMAGE = "registry.example/flywheel/trainer-svc:test"
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


class Pod:
    """One pod of the fake cluster; ``log`` grows while its process runs."""

    def __init__(self, name: str, job: dict[str, Any]) -> None:
        self.name = name
        self.uid = str(uuid.uuid4())
        self.created = datetime.now(UTC).isoformat()
        self.spec = job["spec"]["template"]["spec"]
        self.labels = job["spec"]["template"]["metadata"]["labels"]
        self.status: dict[str, Any] = {"phase": "Pending"}
        self.log: list[bytes] = []
        self.ended = False  # no more log lines will come
        self.proc: subprocess.Popen[bytes] | None = None

    def as_json(self) -> dict[str, Any]:
        meta = {
            "name": self.name,
            "namespace": NAMESPACE,
            "uid": self.uid,
            "labels": self.labels,
            "creationTimestamp": self.created,
        }
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": self.spec, "status": self.status}


class FakeKube:
    """The fake API server and Job controller. ``behaviour(n)`` says what a Job's n-th pod does:
    ``unschedulable``, ``oom``, ``evicted`` or ``run``."""

    def __init__(self, behaviour: Callable[[int], str]) -> None:
        self.behaviour = behaviour
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, Pod] = {}
        self.created: list[dict[str, Any]] = []  # every Job manifest POSTed
        self.deleted: list[tuple[str, dict[str, Any]]] = []  # (Job name, delete options)
        self.pod_lists = 0  # pod list requests served
        self.changed = threading.Condition()
        self._counter = itertools.count()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.get(self)

            def do_POST(self) -> None:
                fake.post(self)

            def do_DELETE(self) -> None:
                fake.delete(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ the API

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _not_found(self, h: BaseHTTPRequestHandler) -> None:
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
        }
        self._send(h, 404, status)

    def _body(self, h: BaseHTTPRequestHandler) -> dict[str, Any]:
        length = int(h.headers.get("Content-Length") or 0)
        return json.loads(h.rfile.read(length) or b"{}")

    def post(self, h: BaseHTTPRequestHandler) -> None:
        assert urlparse(h.path).path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", h.path
        job = self._body(h)
        with self.changed:
            self.created.append(json.loads(json.dumps(job)))
            job["metadata"]["uid"] = str(uuid.uuid4())
            job["status"] = {"active": 1}
            self.jobs[job["metadata"]["name"]] = job
        self._send(h, 201, job)
        self._start_pod(job)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        if match := re.fullmatch(rf"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/([^/]+)", url.path):
            job = self.jobs.get(match.group(1))
            return self._send(h, 200, job) if job else self._not_found(h)
        if url.path == f"/api/v1/namespaces/{NAMESPACE}/pods":
            key, _, value = parse_qs(url.query)["labelSelector"][0].partition("=")
            with self.changed:
                self.pod_lists += 1
                items = [p.as_json() for p in self.pods.values() if p.labels.get(key) == value]
            return self._send(h, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        if match := re.fullmatch(rf"/api/v1/namespaces/{NAMESPACE}/pods/([^/]+)(/log)?", url.path):
            pod = self.pods.get(match.group(1))
            if pod is None:
                return self._not_found(h)
            if match.group(2):
                return self._stream_log(h, pod)
            return self._send(h, 200, pod.as_json())
        raise AssertionError(f"the trainer called an endpoint the fake lacks: GET {h.path}")

    def delete(self, h: BaseHTTPRequestHandler) -> None:
        match = re.fullmatch(rf"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/([^/]+)", urlparse(h.path).path)
        assert match, h.path
        options = self._body(h)
        with self.changed:
            self.deleted.append((match.group(1), options))
            job = self.jobs.pop(match.group(1), None)
            pods = [
                p
                for p in self.pods.values()
                if job and p.labels == job["spec"]["template"]["metadata"]["labels"]
            ]
        if job is None:
            return self._not_found(h)
        for pod in pods:
            self._remove_pod(pod)
        self._send(h, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def _stream_log(self, h: BaseHTTPRequestHandler, pod: Pod) -> None:
        """The log from its start, then each new line until the container ends (chunked, as the API
        server follows a log)."""
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        while True:
            with self.changed:
                self.changed.wait_for(lambda s=sent: len(pod.log) > s or pod.ended, timeout=1.0)
                lines, ended = pod.log[sent:], pod.ended
            for line in lines:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            h.wfile.flush()
            sent += len(lines)
            if ended and not lines:
                h.wfile.write(b"0\r\n\r\n")
                return

    # ------------------------------------------------------------------ the Job controller

    def _start_pod(self, job: dict[str, Any]) -> None:
        name = f"{job['metadata']['name']}-{next(self._counter)}"
        index = sum(1 for p in self.pods.values() if p.name.startswith(job["metadata"]["name"]))
        pod = Pod(name, job)
        what = self.behaviour(index)
        if what == "unschedulable":
            pod.status["conditions"] = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": UNSCHEDULABLE,
                }
            ]
        elif what in ("oom", "evicted"):
            pod.log.append(b"loading the base model\n")
            pod.ended = True
            pod.status = {"phase": "Failed"}
            if what == "oom":
                terminated = {"exitCode": 137, "reason": "OOMKilled"}
                pod.status["containerStatuses"] = [
                    {
                        "name": "train",
                        "ready": False,
                        "restartCount": 0,
                        "image": IMAGE,
                        "imageID": "",
                        "state": {"terminated": terminated},
                    }
                ]
            else:
                pod.status.update(reason="Evicted", message="The node was low on resource: memory.")
        with self.changed:
            self.pods[name] = pod
            self.changed.notify_all()
        if what == "run":
            self._run(pod)

    def _run(self, pod: Pod) -> None:
        container = pod.spec["containers"][0]
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
        command = [sys.executable if part == "python" else part for part in container["command"]]
        pod.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        pod.status = {"phase": "Running"}

        def pump() -> None:
            assert pod.proc is not None and pod.proc.stdout is not None
            for line in pod.proc.stdout:
                with self.changed:
                    pod.log.append(line)
                    self.changed.notify_all()
            rc = pod.proc.wait()
            with self.changed:
                if pod.name in self.pods:
                    terminated = {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error"}
                    pod.status = {
                        "phase": "Succeeded" if rc == 0 else "Failed",
                        "containerStatuses": [
                            {
                                "name": "train",
                                "ready": False,
                                "restartCount": 0,
                                "image": IMAGE,
                                "imageID": "",
                                "state": {"terminated": terminated},
                            }
                        ],
                    }
                pod.ended = True
                self.changed.notify_all()

        threading.Thread(target=pump, daemon=True).start()

    def _remove_pod(self, pod: Pod) -> None:
        if pod.proc is not None and pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.proc.pid, signal.SIGKILL)
            pod.proc.wait()
        with self.changed:
            self.pods.pop(pod.name, None)
            pod.ended = True
            self.changed.notify_all()

    def replace_pod(self, pod: Pod) -> None:
        """The pod goes (its node is lost) while the Job lives: the controller makes a new one."""
        self._remove_pod(pod)
        job = next(j for j in self.jobs.values() if j["spec"]["template"]["metadata"]["labels"] == pod.labels)
        self._start_pod(job)

    def close(self) -> None:
        for pod in list(self.pods.values()):
            self._remove_pod(pod)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube_env(
    trainer_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., tuple[FakeKube, dict[str, str]]]]:
    """A fake API server with the given pod behaviour, and the trainer's env for the kubernetes backend."""
    fakes: list[FakeKube] = []

    def make(behaviour: Callable[[int], str]) -> tuple[FakeKube, dict[str, str]]:
        fake = FakeKube(behaviour)
        fakes.append(fake)
        store_env = [
            {"name": k, "value": v} for k, v in trainer_env.items() if k.startswith("FLYWHEEL_OBJECT_STORE_")
        ]
        # Shaped like the chart's trainer-job-template (backoffLimit 0, restartPolicy Never, GPU
        # node selector and toleration); the scratch folder stands for the pod's emptyDir.
        template = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"labels": {"app.kubernetes.io/component": "trainer-job"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "trainer-job"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"nvidia.com/gpu.present": "true"},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "train",
                                "image": "placeholder",
                                "command": ["python", "-m", "flywheel_trainer", "run-job"],
                                "env": [
                                    {
                                        "name": "FLYWHEEL_TRAINER_STATE_DIR",
                                        "value": str(tmp_path / "pod-scratch"),
                                    },
                                    *store_env,
                                ],
                                "resources": {"limits": {"memory": "64Gi"}},
                            }
                        ],
                    },
                },
            },
        }
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(template))
        env = {
            **trainer_env,
            "FLYWHEEL_TRAINER_BACKEND": "kubernetes",
            "FLYWHEEL_TRAINER_JOB_TEMPLATE": str(path),
            "FLYWHEEL_TRAINER_JOB_API_URL": fake.url,
            "FLYWHEEL_TRAINER_JOB_NAMESPACE": NAMESPACE,
            "FLYWHEEL_TRAINER_JOB_IMAGE": IMAGE,
            "FLYWHEEL_TRAINER_JOB_GPUS": "2",
            "FLYWHEEL_TRAINER_JOB_POLL_S": "0.2",
        }
        return fake, env

    yield make
    for fake in fakes:
        fake.close()


@contextlib.asynccontextmanager
async def _trainer(
    env: dict[str, str], channel_to: Callable
) -> AsyncIterator[trainer_pb2_grpc.TrainerServiceStub]:
    async with boot_service(build_app, TrainerSettings, env) as address:
        yield trainer_pb2_grpc.TrainerServiceStub(channel_to(address))


async def _until(check: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_the_backend_is_validated(trainer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown backend, or kubernetes without a Job template, fails the boot naming the variable."""
    monkeypatch.setenv("FLYWHEEL_TRAINER_BACKEND", "slurm")
    with pytest.raises(ValueError, match="backend"):
        TrainerSettings()
    monkeypatch.setenv("FLYWHEEL_TRAINER_BACKEND", "kubernetes")
    with pytest.raises(ValueError, match="FLYWHEEL_TRAINER_JOB_TEMPLATE"):
        TrainerSettings()
    monkeypatch.delenv("FLYWHEEL_TRAINER_BACKEND")
    assert TrainerSettings().backend == "local"


async def test_pending_job_is_queued_with_the_reason_and_cancel_deletes_it(
    kube_env: Callable, channel_to: Callable
) -> None:
    """The Job's manifest; an unschedulable pod keeps the job QUEUED with the scheduler's reason;
    a restarted trainer re-attaches to the Job instead of creating another; cancel deletes it."""
    fake, env = kube_env(lambda n: "unschedulable")
    async with _trainer(env, channel_to) as stub:
        job = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=sft_job("pending")))).job
        waiting = await wait_for(stub, job.id, lambda j: UNSCHEDULABLE in j.status_message, limit_s=30)
    assert waiting.state == QUEUED and "Unschedulable" in waiting.status_message
    assert not waiting.HasField("error")  # waiting for a GPU is not an error
    [manifest] = fake.created
    assert manifest["metadata"]["name"] == job.id.lower()
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert {"name": "FLYWHEEL_TRAINER_JOB_ID", "value": job.id} in container["env"]
    assert container["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert container["command"] == ["python", "-m", "flywheel_trainer", "run-job"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert manifest["spec"]["backoffLimit"] == 0

    async with _trainer(env, channel_to) as stub:
        seen = fake.pod_lists
        await _until(lambda: fake.pod_lists > seen + 2, "the restarted trainer to read the Job's pods")
        assert len(fake.created) == 1  # re-attached, not a second Job
        again = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=job.id))).job
        assert again.state == QUEUED and UNSCHEDULABLE in again.status_message
        await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=job.id))
        final = await wait_for(stub, job.id, lambda j: j.state in (SUCCEEDED, FAILED, CANCELLED), limit_s=30)
    assert final.state == CANCELLED
    assert fake.deleted[0][0] == job.id.lower()
    assert fake.deleted[0][1].get("propagationPolicy") == "Background"
    assert fake.jobs == {} and fake.pods == {}


@pytest.mark.parametrize(
    ("behaviour", "reason", "code"),
    [("oom", "OOMKilled", 8), ("evicted", "evicted: The node was low on resource: memory.", 10)],
)
async def test_a_killed_pod_fails_the_job_with_the_reason(
    kube_env: Callable, channel_to: Callable, behaviour: str, reason: str, code: int
) -> None:
    """An OOMKilled container (RESOURCE_EXHAUSTED) or an evicted pod (ABORTED) ends the job FAILED
    with the reason Kubernetes gave."""
    fake, env = kube_env(lambda n: behaviour)
    async with _trainer(env, channel_to) as stub:
        job = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=sft_job("killed")))).job
        final = await wait_for(stub, job.id, lambda j: j.state in (SUCCEEDED, FAILED, CANCELLED), limit_s=30)
    assert final.state == FAILED
    assert reason in final.error.message and final.error.code == code
    assert len(fake.created) == 1


async def test_the_pod_trains_publishes_and_a_replaced_pod_resumes(
    kube_env: Callable, channel_to: Callable
) -> None:
    """End to end through the pod path: the pod runs ``python -m flywheel_trainer run-job`` (here a
    local process) and its log drives the job's progress; the trainer restarts mid-run and
    re-attaches to the Job while the pod trains on; the pod is then lost after a checkpoint, its
    replacement resumes from it, and the service publishes the adapter the pod uploaded."""
    fake, env = kube_env(lambda n: "run")
    # Slow steps: the pod must still be training when the restarted trainer has re-attached.
    env = {**env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.5"}
    request = S.CreateFineTuneJobRequest(job=sft_job("kube", max_steps=16, checkpoint_every_steps=3))
    async with _trainer(env, channel_to) as stub:
        job = (await stub.CreateFineTuneJob(request)).job
        await wait_for(stub, job.id, lambda j: j.progress.step >= 1 or j.state in (FAILED, CANCELLED), 120)
    [first] = list(fake.pods.values())
    async with _trainer(env, channel_to) as stub:
        running = await wait_for(
            stub, job.id, lambda j: j.HasField("last_checkpoint") or j.state in (4, 5), 120
        )
        assert running.state == RUNNING and running.resume_count == 0, running
        assert list(fake.pods.values()) == [first] and first.proc is not None and first.proc.poll() is None
        fake.replace_pod(first)
        final = await wait_for(stub, job.id, lambda j: j.state in (SUCCEEDED, FAILED, CANCELLED), limit_s=120)
        adapter = (await stub.GetAdapter(S.GetAdapterRequest(name="kube"))).adapter
    assert final.state == SUCCEEDED, final.error
    assert final.resume_count == 1 and final.progress.step == 16
    assert final.latest_metrics.loss > 0
    assert final.adapter.version == 1 and adapter.job_id == job.id
    assert len(fake.created) == 1  # the restart re-attached; the replacement pod is the Job's
    [second] = list(fake.pods.values())
    records = [decode(line.decode()) for line in second.log if line.startswith(PREFIX.encode())]
    resumed = [r.step for r in records if isinstance(r, Resuming)]
    assert len(resumed) == 1 and 3 <= resumed[0] < 16, records  # from a checkpoint of the lost pod
