"""The kubernetes backend's side of the Kubernetes API: the Job of a fine-tune, its pods, their logs.

Blocking calls of the official client (the job manager runs them in worker threads). A fine-tune's
Job is the template (``FLYWHEEL_TRAINER_JOB_TEMPLATE``) with, filled in here: its name (the job id
in lower case: Kubernetes names are DNS labels), the label :data:`JOB_LABEL` on the Job and its
pods (how the service finds them), ``FLYWHEEL_TRAINER_JOB_ID`` in the first container's env, the
image (``job_image``) and the ``nvidia.com/gpu`` limit (``job_gpus``). Tolerations, node selector,
priority class and the rest come from the template as they are.

:func:`pod_view` reads a pod's status as the states the service acts on (see the trainer's README):
an OOMKilled container or a node-pressure eviction ends the job (a new pod would fail the same way);
any other disruption (``DisruptionTarget``) or failure leaves it to the Job controller to replace the
pod, up to the Job's ``backoffLimit``, and the new pod resumes from the newest checkpoint.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from kubernetes import client, config  # type: ignore[import-untyped]  # the client ships no types
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

from flywheel_trainer.settings import TrainerSettings

#: Label of a fine-tune's Job and pods: the fine-tune job id.
JOB_LABEL = "flywheel.dev/fine-tune-job"
GPU_RESOURCE = "nvidia.com/gpu"
#: Waiting reasons of a container that will not start without a change to the cluster or the image.
_STUCK = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}
)

#: The pod condition every disruption sets (Kubernetes ≥ 1.26): its reason is PreemptionByScheduler,
#: EvictionByEvictionAPI (a drain), DeletionByTaintManager (a NoExecute taint, node loss),
#: DeletionByPodGC (the node is gone) or TerminationByKubelet (node-pressure eviction, graceful node
#: shutdown, preemption for a critical pod). The chart's Job ignores these pods' failures
#: (podFailurePolicy), so the Job controller replaces the pod without counting it.
DISRUPTION_TARGET = "DisruptionTarget"
TERMINATION_BY_KUBELET = "TerminationByKubelet"
#: The start of the kubelet's node-pressure eviction message ("The node was low on resource: memory. …").
_PRESSURE = "low on resource"

PodKind = Literal["pending", "running", "succeeded", "failed", "disrupted", "oom", "evicted", "gone"]


@dataclass(frozen=True)
class PodView:
    """What a pod's status means to the job: its kind and a one-line reason for a user."""

    kind: PodKind
    reason: str = ""


def job_name(job_id: str) -> str:
    return job_id.lower()


def load_template(path: Path) -> dict[str, Any]:
    """The Job template; ValueError naming the file if it is not a batch/v1 Job with a container."""
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"FLYWHEEL_TRAINER_JOB_TEMPLATE {path}: cannot read it: {err}") from err
    containers = (
        (((manifest or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    )
    if not isinstance(manifest, dict) or manifest.get("kind") != "Job" or not containers:
        raise ValueError(f"FLYWHEEL_TRAINER_JOB_TEMPLATE {path}: not a batch/v1 Job with a container")
    return manifest


class KubeJobs:
    """The training Jobs of one namespace."""

    def __init__(self, settings: TrainerSettings) -> None:
        assert settings.job_template is not None  # the settings refuse kubernetes without one
        self.settings = settings
        self.namespace = settings.job_namespace
        self.template = load_template(settings.job_template)
        if settings.job_api_url:
            configuration = client.Configuration()
            configuration.host = settings.job_api_url
            api = client.ApiClient(configuration)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.ApiClient()
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    def manifest(self, job_id: str, gpus: int = 0) -> dict[str, Any]:
        """The Job for ``job_id``; ``gpus`` > 1 (the job's data-parallel processes) overrides the
        ``job_gpus`` limit."""
        job = copy.deepcopy(self.template)
        meta = job.setdefault("metadata", {})
        meta["name"] = job_name(job_id)
        meta.pop("generateName", None)
        meta.setdefault("labels", {})[JOB_LABEL] = job_id
        pod = job["spec"]["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {})[JOB_LABEL] = job_id
        container = pod["spec"]["containers"][0]
        env = [e for e in container.get("env") or [] if e.get("name") != "FLYWHEEL_TRAINER_JOB_ID"]
        container["env"] = [*env, {"name": "FLYWHEEL_TRAINER_JOB_ID", "value": job_id}]
        if self.settings.job_image:
            container["image"] = self.settings.job_image
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {}) or {}
        resources["limits"] = limits
        wanted = gpus if gpus > 1 else self.settings.job_gpus
        if wanted:
            limits[GPU_RESOURCE] = str(wanted)
            if (resources.get("requests") or {}).get(GPU_RESOURCE):
                resources["requests"][GPU_RESOURCE] = str(wanted)  # requests may not differ from limits
        else:
            limits.pop(GPU_RESOURCE, None)
            (resources.get("requests") or {}).pop(GPU_RESOURCE, None)
        return job

    def create(self, job_id: str, gpus: int = 0) -> None:
        self.batch.create_namespaced_job(self.namespace, self.manifest(job_id, gpus))

    def get(self, job_id: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(job_name(job_id), self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete(self, job_id: str) -> None:
        """Delete the Job and, in the background, its pods (a missing Job is not an error)."""
        try:
            self.batch.delete_namespaced_job(
                job_name(job_id), self.namespace, body=client.V1DeleteOptions(propagation_policy="Background")
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def pods(self, job_id: str) -> list[client.V1Pod]:
        """The Job's pods, oldest first."""
        found = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={job_id}").items
        return sorted(
            found, key=lambda p: (p.metadata.creation_timestamp is None, p.metadata.creation_timestamp)
        )

    def pod(self, name: str) -> client.V1Pod | None:
        try:
            return self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def follow_log(self, name: str, on_line: Callable[[str | None], None]) -> Callable[[], None]:
        """Stream the pod's log from its start in a daemon thread: ``on_line`` gets every line, then
        None when the stream ends (the container exited, the pod went, the connection broke).
        Returns a function that stops the stream early."""
        stopped = threading.Event()
        holder: dict[str, Any] = {}

        def pump() -> None:
            try:
                response = self.core.read_namespaced_pod_log(
                    name, self.namespace, follow=True, _preload_content=False
                )
                holder["response"] = response
                pending = b""
                for chunk in response.stream(decode_content=True):
                    if stopped.is_set():
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line.decode("utf-8", "replace"))
                if pending and not stopped.is_set():
                    on_line(pending.decode("utf-8", "replace"))
            except Exception:  # the caller reads the pod's status to learn what happened
                pass
            finally:
                on_line(None)

        def stop() -> None:
            stopped.set()
            response = holder.get("response")
            if response is not None:
                try:
                    response.shutdown()
                    response.release_conn()
                except Exception:  # closing a broken stream: nothing to save
                    pass

        threading.Thread(target=pump, name=f"log {name}", daemon=True).start()
        return stop


def pod_view(pod: client.V1Pod | None) -> PodView:
    """The pod's status as the service acts on it."""
    if pod is None:
        return PodView("gone", "the pod was deleted")
    status = pod.status
    phase = status.phase if status is not None else None
    if pod.metadata.deletion_timestamp is not None and phase in (None, "Pending", "Running"):
        return PodView("gone", "the pod is being deleted")
    statuses = (status.container_statuses or []) if status is not None else []
    if phase == "Failed":
        disruption = next(
            (c for c in status.conditions or [] if c.type == DISRUPTION_TARGET and c.status == "True"),
            None,
        )
        for cs in statuses:
            term = cs.state.terminated if cs.state is not None else None
            if term is not None and term.reason == "OOMKilled":
                return PodView(
                    "oom",
                    f"the training container was OOMKilled (exit code {term.exit_code}): it needs more than "
                    "the memory limit of the Job template (trainer.job.resources in the chart)",
                )
        # A node-pressure eviction: the kubelet sets reason Evicted (and, since 1.26, DisruptionTarget
        # with reason TerminationByKubelet and the same message). The pod used more of the node's
        # memory (or disk) than it requested; a new pod would be evicted again.
        pressure = (
            disruption is not None
            and disruption.reason == TERMINATION_BY_KUBELET
            and (_PRESSURE in (disruption.message or ""))
        )
        if status.reason == "Evicted" or pressure:
            message = status.message or (disruption.message if disruption is not None else "") or "no message"
            return PodView(
                "evicted",
                f"the training pod was evicted by the kubelet: {message} (raise trainer.job.resources.requests "
                "in the chart to what the training uses)",
            )
        if disruption is not None:  # preempted, drained, its node lost or shut down: a new pod resumes
            return PodView(
                "disrupted",
                f"the training pod was disrupted ({disruption.reason}): {disruption.message or 'no message'}",
            )
        for cs in statuses:
            term = cs.state.terminated if cs.state is not None else None
            if term is not None:
                why = term.reason or "Error"
                return PodView(
                    "failed", f"the training container ended {why} with exit code {term.exit_code}"
                )
        return PodView(
            "failed", f"the training pod failed: {status.reason or ''} {status.message or ''}".strip()
        )
    if phase == "Succeeded":
        return PodView("succeeded")
    if phase == "Running":
        return PodView("running")
    # Pending (or no phase yet): unschedulable, pulling, stuck on an image or a config.
    for cond in (status.conditions or []) if status is not None else []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return PodView("pending", f"waiting for a node ({cond.reason}): {cond.message or 'no message'}")
    for cs in statuses:
        waiting = cs.state.waiting if cs.state is not None else None
        if waiting is not None and waiting.reason:
            stuck = " (it will not start without a fix)" if waiting.reason in _STUCK else ""
            return PodView(
                "pending", f"container waiting ({waiting.reason}){stuck}: {waiting.message or ''}".strip()
            )
    return PodView("pending", "the training pod is starting")


def job_failure(job: client.V1Job) -> str:
    """The reason of a Job that has failed, or empty."""
    for cond in (job.status.conditions or []) if job.status is not None else []:
        if cond.type == "Failed" and cond.status == "True":
            return f"the Kubernetes Job failed ({cond.reason}): {cond.message or 'no message'}"
    return ""
