"""The Helm chart (deploy/helm/flywheel), rendered, linted and schema-checked by Helm's own Go engine.

Helm v4's engine runs in-process through ``helm-python-sdk`` (no ``helm`` binary, no cluster, no
network). There is no Kubernetes cluster here, so nothing is installed: every rendered object is
validated against the Kubernetes API's JSON schemas (``kubernetes-validate``, strict: unknown
fields are errors) and the chart's properties are asserted on the rendered objects.

The NATS subchart (the official chart, a dependency) cannot be fetched here: it is declared with
``condition: nats.enabled`` and Helm renders the parent without it. Strict lint, which flags a
declared but absent dependency, runs on a copy of the chart holding an empty stand-in
``charts/nats`` written by this test; a separate test checks that this is the only finding
without it.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from helm_python import HelmRenderError, HelmValuesError, chart
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "flywheel"
RELEASE = "fw"
NAMESPACE = "flywheel"
# The Kubernetes API schemas rendered objects must satisfy: the oldest the chart supports
# (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
KUBE_VERSION = KUBE_VERSIONS[0]
GPU = "nvidia.com/gpu"


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text())


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-s3": {
        "minio": {"enabled": False},
        "objectStore": {
            "existingSecret": "my-s3",
            "external": {"endpoint": "s3.example.com:443", "secure": True},
        },
    },
    "capture-on": {"gateway": {"capture": {"enabled": True}}},
    "two-vllm-replicas": {"modelServer": {"replicas": 2}},
    "trainer-jobs": {"trainer": {"backend": "kubernetes", "job": {"gpus": 2}}},
    "trainer-local": {"trainer": {"backend": "local", "local": {"gpus": 1}}},
    "ingress-on": {
        "ingress": {"enabled": True, "className": "nginx", "host": "llm.example.com", "tlsSecret": "llm-tls"}
    },
    "shared-volume": {
        "adapterSync": {"mode": "sharedVolume", "storageClass": "nfs"},
        "modelServer": {"replicas": 3},
    },
    "postgres-on": {"postgres": {"enabled": True}},
    "store-replicas-on-postgres": {
        "trajectoryStore": {"replicas": 3, "database": {"existingSecret": "store-db", "urlKey": "dsn"}}
    },
    "external-nats": {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.messaging:4222"}},
    "sandbox-object-store": {
        "minio": {"enabled": False},
        "objectStore": {"existingSecret": "my-s3", "external": {"endpoint": "s3.example.com"}},
        "sandboxRunner": {
            "objectStore": {"enabled": True, "egressTo": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}
        },
    },
    "cpu-only": {"modelServer": {"engine": "embedded", "replicas": 2}, "trainer": {"backend": "local"}},
    "sandbox-delegated": {
        "sandboxRunner": {
            "cgroupAccess": "delegated",
            "hostUsers": False,
            "runtimeClassName": "runc-cgroup-writable",
            "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/flywheel-sandbox.json"},
        }
    },
    "registered-base-models": {
        "baseModels": [
            {"name": "gemma-3-270m", "hfId": "google/gemma-3-270m", "source": {"prefix": "uploads/gemma/"}},
            {"name": "local-qwen", "description": "it's on a volume", "source": {"folder": "/models/qwen"}},
        ],
        "trainer": {"modelVolume": {"existingClaim": "hf-models"}},
        "modelServer": {
            "model": {"id": "google/gemma-3-270m", "source": "registry", "registryName": "gemma-3-270m"}
        },
    },
    "example-gpu": _example("values-gpu.example.yaml"),
    "example-one-gpu-node": _example("values-one-gpu-node.example.yaml"),
    "example-external-s3": _example("values-external-s3.example.yaml"),
}

STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)


@functools.cache
def _chart() -> chart.Chart:
    """The chart as committed (a charts/ folder fetched on a developer's machine is left out, so
    the official NATS chart's objects never mix into what these tests check)."""
    folder = tempfile.mkdtemp(prefix="flywheel-chart-")
    atexit.register(shutil.rmtree, folder, True)
    copy = Path(folder) / "flywheel"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    return chart.Chart.load(copy)


@functools.cache
def _render(name: str) -> dict[str, str]:
    return _chart().render(values=VALUE_SETS[name], name=RELEASE, namespace=NAMESPACE)


# libyaml's parser when PyYAML was built with it: the pure-Python one dominated the run time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _objects(name: str) -> str:
    found = []
    for path, text in _render(name).items():
        if path.endswith("NOTES.txt"):
            continue
        found += [doc for doc in yaml.load_all(text, Loader=_YAML_LOADER) if doc]
    for cm in [o for o in found if o["kind"] == "ConfigMap" and "job.yaml" in o.get("data", {})]:
        found.append(yaml.load(cm["data"]["job.yaml"], Loader=_YAML_LOADER))
    return json.dumps(found)


def objects(name: str) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object, plus the training Job held in the trainer's ConfigMap
    (parsed once per value set; each call returns a fresh copy, so a test may change it)."""
    return json.loads(_objects(name))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def component(objs: list[dict[str, Any]], kind: str, comp: str) -> dict[str, Any]:
    matches = [
        o for o in of_kind(objs, kind) if o["metadata"]["labels"]["app.kubernetes.io/component"] == comp
    ]
    assert len(matches) == 1, f"expected one {kind} for {comp}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _grpc_components():
    """The gRPC services as `flywheel up` knows them (name, port, settings prefix, service)."""
    from flywheel_cli.components import COMPONENTS

    return [c for c in COMPONENTS if c.protocol == "grpc"]


# --- lint -----------------------------------------------------------------------------------------


def _copy_without_fetched_dependencies(tmp_path_factory) -> Path:
    """The chart as committed: without a charts/ folder that `helm dependency build` may have
    filled on a developer's machine."""
    copy = tmp_path_factory.mktemp("chart") / "flywheel"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    return copy


@pytest.fixture(scope="module")
def chart_with_stand_in_nats(tmp_path_factory) -> Path:
    """A copy of the chart with an empty charts/nats, so the declared dependency counts as present."""
    copy = _copy_without_fetched_dependencies(tmp_path_factory)
    stand_in = copy / "charts" / "nats"
    stand_in.mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text("apiVersion: v2\nname: nats\nversion: 1.3.0\n")
    return copy


@pytest.mark.parametrize("values", ["defaults", "example-gpu", "external-nats", "cpu-only", "shared-volume"])
def test_lint_strict_is_clean(chart_with_stand_in_nats: Path, values: str) -> None:
    report = chart.lint(
        chart_with_stand_in_nats, VALUE_SETS[values], strict=True, namespace=NAMESPACE, kube_version="v1.31.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_without_the_dependency_reports_only_that(tmp_path_factory) -> None:
    report = chart.lint(
        _copy_without_fetched_dependencies(tmp_path_factory), strict=True, namespace=NAMESPACE
    )
    assert report["errors"] == ["chart directory is missing these dependencies: nats"], report


# --- every object is a valid Kubernetes object ------------------------------------------------------


_VALIDATED: set[str] = set()


@functools.cache
def _kubernetes_validator(version: str, kind: str, api_version: str) -> jsonschema.Validator:
    """kubernetes-validate's strict schema for one kind, compiled once.

    ``kubernetes_validate.validate`` re-reads and re-parses the API's definitions file (several
    MB) for every object; over ~400 objects that was most of this file's run time. Same files,
    same rules, same draft, read once per kind.
    """
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kubernetes_validate.utils.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = kubernetes_validate.utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kubernetes(obj: dict[str, Any], version: str) -> None:
    """Raises jsonschema.ValidationError naming the first field the API would reject."""
    _kubernetes_validator(version, obj["kind"], obj["apiVersion"]).validate(obj)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_object_is_valid_for_the_kubernetes_api(values: str) -> None:
    objs = objects(values)
    assert len(objs) > 20
    for obj in objs:
        fingerprint = json.dumps(obj, sort_keys=True)
        if fingerprint in _VALIDATED:  # the same object rendered by another value set
            continue
        for version in KUBE_VERSIONS:
            try:
                validate_kubernetes(obj, version)
            except jsonschema.ValidationError as err:
                pytest.fail(f"Kubernetes {version}: {obj['kind']} {obj['metadata'].get('name')}: {err}")
        _VALIDATED.add(fingerprint)


def test_the_kubernetes_validator_rejects_a_misspelt_field() -> None:
    deployment = next(o for o in objects("defaults") if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)
    # ... and so does the compiled copy the tests above use, for the same object.
    validate_kubernetes(deployment, KUBE_VERSION)
    with pytest.raises(jsonschema.ValidationError, match="readinessProbes"):
        validate_kubernetes(broken, KUBE_VERSION)


# --- hardening, probes, resources, labels ---------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_container_is_hardened_and_has_resources(values: str) -> None:
    """Every pod but the sandbox runner's, which must be root with a writable cgroup tree (its own
    test below)."""
    checked = 0
    for obj in objects(values):
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{obj['kind']} {obj['metadata'].get('name', '(job template)')}"
        if (
            obj["kind"] == "Deployment"
            and obj["metadata"]["labels"]["app.kubernetes.io/component"] == "sandbox-runner"
        ):
            assert spec["containers"][0]["resources"]["limits"].get("memory"), where
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for c in containers(spec):
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert ctx.get("privileged") is not True, (where, c["name"])
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", (where, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (where, c["name"])
            assert c["resources"]["limits"].get("memory"), (where, c["name"])
            checked += 1
    assert checked >= 11


@pytest.mark.parametrize("values", ["defaults", "shared-volume", "postgres-on", "trainer-local"])
def test_every_long_running_container_has_probes(values: str) -> None:
    """Adapter sync serves no health endpoint yet (adapterSync.healthPort 0): the one exception."""
    for obj in objects(values):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "adapter-sync":
                assert "livenessProbe" not in c and "ports" not in c
                continue
            assert "readinessProbe" in c and "livenessProbe" in c, (obj["metadata"]["name"], c["name"])


def test_adapter_sync_is_probed_once_it_has_a_health_port() -> None:
    objs = _chart_objects({"adapterSync": {"healthPort": 8081}})
    spec = component(objs, "StatefulSet", "model-server")["spec"]["template"]["spec"]
    sync = next(c for c in spec["containers"] if c["name"] == "adapter-sync")
    assert sync["readinessProbe"]["httpGet"] == {"path": "/health", "port": "sync-health"}
    assert env_of(sync)["FLYWHEEL_ADAPTER_SYNC_HEALTH_PORT"]["value"] == "8081"


def test_grpc_services_use_native_grpc_probes_on_their_port() -> None:
    objs = objects("defaults")
    for comp in _grpc_components():
        deployment = component(objs, "Deployment", comp.name)
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": comp.default_port}, (comp.name, probe)
        env = env_of(c)
        assert env[f"{comp.env_prefix}PORT"]["value"] == str(comp.default_port)
        service = component(objs, "Service", comp.name)
        assert service["spec"]["ports"][0]["port"] == comp.default_port


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_labels_on_everything(values: str) -> None:
    for obj in objects(values):
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata'].get('name')} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        template = obj.get("spec", {}).get("template")
        if template:
            assert all(k in template["metadata"]["labels"] for k in STANDARD_LABELS), obj["metadata"].get(
                "name"
            )


def test_flywheel_images_default_to_the_app_version_and_follow_overrides() -> None:
    app_version = _chart().metadata["appVersion"]
    flywheel = [
        c["image"]
        for o in objects("defaults")
        if (spec := pod_spec(o))
        for c in containers(spec)
        if c["image"].startswith("ghcr.io/flywheel/")
    ]
    assert len(flywheel) >= 7 and all(i.endswith(f":{app_version}") for i in flywheel), flywheel
    out = _chart().render(values={"image": {"tag": "v9"}, "gateway": {"image": {"tag": "v10"}}}, name=RELEASE)
    gateway = yaml.safe_load(out["flywheel/templates/gateway.yaml"].split("---")[1])
    assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/flywheel/gateway:v10"
    assert "ghcr.io/flywheel/orchestrator:v9" in out["flywheel/templates/grpc-services.yaml"]


def test_disruption_budgets_where_more_than_one_replica() -> None:
    budgets = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]
        for p in of_kind(objects("defaults"), "PodDisruptionBudget")
    }
    assert budgets == {"gateway", "sandbox-runner"}
    two = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]
        for p in of_kind(objects("two-vllm-replicas"), "PodDisruptionBudget")
    }
    assert "model-server" in two


# --- GPUs, vLLM and adapters --------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["defaults", "two-vllm-replicas", "example-gpu"])
def test_vllm_runs_on_gpu_nodes_with_lora(values: str) -> None:
    wanted = {**VALUE_SETS["defaults"], **VALUE_SETS[values]}.get("modelServer", {})
    deployment = component(objects(values), "StatefulSet", "model-server")
    spec = deployment["spec"]["template"]["spec"]
    vllm = next(c for c in spec["containers"] if c["name"] == "vllm")
    assert deployment["spec"]["replicas"] == wanted.get("replicas", 1)
    assert deployment["spec"]["podManagementPolicy"] == "Parallel"
    assert deployment["spec"]["updateStrategy"] == {"type": "RollingUpdate"}, "no surge pod waiting for a GPU"
    assert vllm["resources"]["limits"][GPU] == wanted.get("gpus", 1)
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    args = vllm["args"]
    assert "--enable-lora" in args
    assert args[args.index("--max-loras") + 1] == str(wanted.get("lora", {}).get("maxLoras", 4))
    assert args[args.index("--max-lora-rank") + 1] == str(wanted.get("lora", {}).get("maxLoraRank", 64))
    env = env_of(vllm)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["VLLM_PLUGINS"]["value"] == "lora_filesystem_resolver"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"]["value"] == "/adapters"
    if values == "example-gpu":
        assert spec["runtimeClassName"] == "nvidia"
        volume = next(v for v in spec["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"]["claimName"] == "hf-model-cache"
        assert "initContainers" not in spec
    else:
        assert spec["initContainers"][0]["name"] == "download-model"


def test_base_models_are_registered_by_an_idempotent_hook_job() -> None:
    """One grpcurl call of RegisterBaseModel per baseModels entry, its request as JSON in the
    environment (no shell quoting), the token flags in one place; no Job without entries. (That the
    token comes from the chart's Secret is checked for every container by the service-token test.)"""
    job = component(objects("registered-base-models"), "Job", "register-base-models")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("fullstorydev/grpcurl:")
    env = env_of(container)
    assert json.loads(env["REGISTER_0"]["value"]) == {
        "name": "gemma-3-270m",
        "hf_id": "google/gemma-3-270m",
        "description": "",
        "source_prefix": "uploads/gemma/",
    }
    assert json.loads(env["REGISTER_1"]["value"]) == {
        "name": "local-qwen",
        "hf_id": "local-qwen",
        "description": "it's on a volume",
        "source_folder": "/models/qwen",
    }
    script = container["args"][0]
    assert script.count('-H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"') == 1  # one place
    assert script.count("flywheel.trainer.v1.TrainerService/RegisterBaseModel") == 2
    assert '-d "$REGISTER_1"' in script and f"trainer={RELEASE}-flywheel-trainer-svc:50055" in script
    assert "grpc.health.v1.Health/Check" in script  # waits for the trainer first
    for values in ("defaults", "cpu-only"):
        jobs = of_kind(objects(values), "Job")
        assert not [
            o
            for o in jobs
            if o["metadata"]["labels"]["app.kubernetes.io/component"] == "register-base-models"
        ]


def test_the_trainer_mounts_a_model_volume_for_folder_sources() -> None:
    spec = component(objects("registered-base-models"), "Deployment", "trainer-svc")["spec"]["template"][
        "spec"
    ]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": "hf-models", "readOnly": True}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    default = component(objects("defaults"), "Deployment", "trainer-svc")["spec"]["template"]["spec"]
    assert "models" not in [v["name"] for v in default["volumes"]]
    # Local sources only from the mount path, whether a volume is there or not (the settings parse it).
    from flywheel_trainer.settings import TrainerSettings

    for pod in (spec, default):
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        roots = TrainerSettings.model_validate(
            {"model_roots": json.loads(env["FLYWHEEL_TRAINER_MODEL_ROOTS"])}
        )
        assert [str(r) for r in roots.model_roots] == ["/models"]


def test_vllm_can_serve_the_registered_weights_under_the_hf_id() -> None:
    import flywheel_model_server.hf_cache as hf_cache  # what the init container runs

    spec = component(objects("registered-base-models"), "StatefulSet", "model-server")["spec"]["template"][
        "spec"
    ]
    (init,) = spec["initContainers"]
    assert init["name"] == "fetch-registered-model" and init["image"].endswith("/model-server:0.1.0")
    assert init["command"] == ["python", "-m", hf_cache.__name__]
    assert init["args"] == [
        "--name",
        "gemma-3-270m",
        "--hf-id",
        "google/gemma-3-270m",
        "--hf-home",
        "/models/hf",
    ]
    assert "FLYWHEEL_OBJECT_STORE_SECRET_KEY" in env_of(init)
    vllm = next(c for c in spec["containers"] if c["name"] == "vllm")
    assert vllm["args"][0] == "google/gemma-3-270m"  # --model: the id the adapters record
    assert vllm["args"][vllm["args"].index("--served-model-name") + 1] == "gemma-3-270m"
    env = env_of(vllm)
    assert env["HF_HOME"]["value"] == "/models/hf" and env["HF_HUB_OFFLINE"]["value"] == "1"
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "models")


def _vllm_args(values: dict[str, Any]) -> list[str]:
    rendered = _chart().render(values=values, name=RELEASE, namespace=NAMESPACE)
    docs = [
        d for p, t in rendered.items() if p.endswith("model-server.yaml") for d in yaml.safe_load_all(t) if d
    ]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")["args"]


def test_vllm_parses_tool_calls_as_values_say() -> None:
    args = _vllm_args({})
    # Defaults: the hermes parser, which reads the calls of Flywheel's default chat template.
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes"
    assert "--chat-template" not in args
    custom = _vllm_args(
        {"modelServer": {"toolCalling": {"parser": "llama3_json", "chatTemplate": "/templates/tools.jinja"}}}
    )
    assert custom[custom.index("--tool-call-parser") + 1] == "llama3_json"
    assert custom[custom.index("--chat-template") + 1] == "/templates/tools.jinja"
    off = _vllm_args({"modelServer": {"toolCalling": {"enabled": False}}})
    assert "--enable-auto-tool-choice" not in off and "--tool-call-parser" not in off
    with pytest.raises(HelmValuesError):
        _chart().render(
            values={"modelServer": {"toolCalling": {"parser": "bad parser"}}},
            name=RELEASE,
            namespace=NAMESPACE,
        )


def test_every_vllm_replica_gets_every_adapter_through_its_sidecar() -> None:
    spec = component(objects("two-vllm-replicas"), "StatefulSet", "model-server")["spec"]["template"]["spec"]
    names = [c["name"] for c in spec["containers"]]
    assert names == ["vllm", "adapter-sync"]
    env = env_of(spec["containers"][1])
    assert json.loads(env["FLYWHEEL_ADAPTER_SYNC_REPLICAS"]["value"]) == ["http://127.0.0.1:8000"]
    assert env["FLYWHEEL_ADAPTER_SYNC_DURABLE"]["value"] == "adapter-sync-$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["FLYWHEEL_ADAPTER_SYNC_ADAPTER_DIR"]["value"] == "/adapters"
    adapters = next(v for v in spec["volumes"] if v["name"] == "adapters")
    assert "emptyDir" in adapters
    assert all(any(m["name"] == "adapters" for m in c["volumeMounts"]) for c in spec["containers"])


def test_shared_volume_mode_mounts_one_read_write_many_claim_in_every_replica() -> None:
    objs = objects("shared-volume")
    claim = component(objs, "PersistentVolumeClaim", "adapter-sync")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs"
    spec = component(objs, "StatefulSet", "model-server")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["vllm"]
    volume = next(v for v in spec["volumes"] if v["name"] == "adapters")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    sync = component(objs, "Deployment", "adapter-sync")["spec"]["template"]["spec"]
    replicas = json.loads(env_of(sync["containers"][0])["FLYWHEEL_ADAPTER_SYNC_REPLICAS"]["value"])
    pods = f"{RELEASE}-flywheel-model-server"
    assert replicas == [f"http://{pods}-{i}.{pods}-pods.{NAMESPACE}.svc:8000" for i in range(3)]
    headless = [o for o in of_kind(objs, "Service") if o["spec"].get("clusterIP") == "None"]
    assert [h["metadata"]["name"] for h in headless] == [f"{pods}-pods"]
    assert component(objs, "StatefulSet", "model-server")["spec"]["serviceName"] == f"{pods}-pods"
    assert (
        next(v for v in sync["volumes"] if v["name"] == "adapters")["persistentVolumeClaim"]["claimName"]
        == claim["metadata"]["name"]
    )


def test_training_jobs_request_gpus_and_use_a_namespaced_role() -> None:
    objs = objects("trainer-jobs")
    job = next(o for o in objs if o["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"][GPU] == 2
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 3
    job_env = env_of(spec["containers"][0])
    assert job_env["FLYWHEEL_OBJECT_STORE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretKey"

    trainer = component(objs, "Deployment", "trainer-svc")["spec"]["template"]["spec"]
    env = env_of(trainer["containers"][0])
    assert env["FLYWHEEL_TRAINER_BACKEND"]["value"] == "kubernetes"
    assert env["FLYWHEEL_TRAINER_JOB_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["FLYWHEEL_TRAINER_JOB_TEMPLATE"]["value"] == "/etc/flywheel/trainer/job.yaml"
    assert env["FLYWHEEL_TRAINER_JOB_IMAGE"]["value"].startswith("ghcr.io/flywheel/trainer-svc:")
    assert GPU not in trainer["containers"][0]["resources"]["limits"], "the service itself holds no GPU"
    state = next(v for v in trainer["volumes"] if v["name"] == "state")
    claim = component(objs, "PersistentVolumeClaim", "trainer-svc")
    assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert component(objs, "Deployment", "trainer-svc")["spec"]["strategy"] == {"type": "Recreate"}
    assert trainer["automountServiceAccountToken"] is True

    (role,) = of_kind(objs, "Role")
    (binding,) = of_kind(objs, "RoleBinding")
    assert {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    } in role["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": trainer["serviceAccountName"], "namespace": NAMESPACE}
    ]


def test_a_lost_training_pod_is_replaced_but_a_no_retry_exit_fails_the_job() -> None:
    """Disruptions (the DisruptionTarget condition) do not count against backoffLimit; the
    worker's no-retry exit statuses (the same list as flywheel_trainer.protocol's) fail the Job."""
    from flywheel_trainer.protocol import NO_RETRY_EXIT_STATUSES

    job = next(o for o in objects("trainer-jobs") if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    ignore, fail = job["spec"]["podFailurePolicy"]["rules"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert fail["action"] == "FailJob" and not fail["onPodConditions"]
    assert fail["onExitCodes"] == {
        "containerName": job["spec"]["template"]["spec"]["containers"][0]["name"],
        "operator": "In",
        "values": sorted(NO_RETRY_EXIT_STATUSES),
    }
    tuned = _chart().render(
        values={"trainer": {"job": {"backoffLimit": 0}}}, name=RELEASE, namespace=NAMESPACE
    )
    config = next(t for path, t in tuned.items() if path.endswith("trainer-job-template.yaml"))
    assert yaml.safe_load(yaml.safe_load(config)["data"]["job.yaml"])["spec"]["backoffLimit"] == 0


def test_the_trainer_makes_its_jobs_from_the_rendered_template(tmp_path: Path) -> None:
    """The kubernetes backend's KubeJobs reads the rendered Job template as the trainer pod would
    and fills in the name, the job id, the image and the GPU limit; the rest is the chart's."""
    from flywheel_trainer.kube import JOB_LABEL, KubeJobs
    from flywheel_trainer.settings import TrainerSettings

    job = next(o for o in objects("trainer-jobs") if o["kind"] == "Job")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    settings = TrainerSettings(
        backend="kubernetes",
        job_template=path,
        job_api_url="http://127.0.0.1:9",
        job_gpus=2,
        job_image="img:1",
    )
    manifest = KubeJobs(settings).manifest("ftj-01KBCDEF")
    assert manifest["metadata"]["name"] == "ftj-01kbcdef"
    pod = manifest["spec"]["template"]
    assert pod["metadata"]["labels"][JOB_LABEL] == "ftj-01KBCDEF"
    container = pod["spec"]["containers"][0]
    assert {"name": "FLYWHEEL_TRAINER_JOB_ID", "value": "ftj-01KBCDEF"} in container["env"]
    assert container["image"] == "img:1" and container["resources"]["limits"][GPU] == "2"
    assert container["command"] == ["python", "-m", "flywheel_trainer", "run-job"]
    assert pod["spec"]["tolerations"] == job["spec"]["template"]["spec"]["tolerations"]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_no_cluster_wide_rbac_and_tokens_only_for_the_trainer(values: str) -> None:
    objs = objects(values)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    jobs_mode = any(o["kind"] == "Role" for o in objs)
    assert jobs_mode == (_trainer_backend(values) == "kubernetes")
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        is_trainer = obj["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer-svc"
        assert spec["automountServiceAccountToken"] is (is_trainer and jobs_mode), obj["metadata"].get("name")


def test_local_trainer_has_no_role_and_its_own_gpu() -> None:
    objs = objects("trainer-local")
    assert not of_kind(objs, "Role") and not of_kind(objs, "RoleBinding")
    assert not [o for o in objs if o["kind"] == "Job"]
    trainer = component(objs, "Deployment", "trainer-svc")["spec"]["template"]["spec"]
    assert trainer["containers"][0]["resources"]["limits"][GPU] == 1
    assert component(objs, "Deployment", "trainer-svc")["spec"]["strategy"] == {"type": "Recreate"}
    assert env_of(trainer["containers"][0])["FLYWHEEL_TRAINER_BACKEND"]["value"] == "local"


def test_cpu_only_cluster_requests_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine=embedded with the local trainer: nothing asks for a GPU or a GPU node, and the
    embedded model server's real settings class loads the environment the chart renders."""
    import os

    from flywheel_common.settings import load_settings
    from flywheel_model_server.settings import ModelServerSettings

    objs = objects("cpu-only")
    for obj in objs:
        if spec := pod_spec(obj):
            assert "nodeSelector" not in spec and "tolerations" not in spec, obj["metadata"].get("name")
            for c in containers(spec):
                assert GPU not in c["resources"].get("limits", {}), (obj["metadata"].get("name"), c["name"])
    spec = component(objs, "StatefulSet", "model-server")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["model-server", "adapter-sync"]
    server = spec["containers"][0]
    assert server["image"].startswith("ghcr.io/flywheel/model-server:")
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in _resolved_env(server).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(ModelServerSettings)
    assert (settings.port, settings.base_model, settings.served_model_name) == (
        8000,
        "gemma-3-270m",
        "gemma-3-270m",
    )
    assert str(settings.cache_dir) == "/models/cache" and settings.object_store.backend == "s3"


# --- secrets -------------------------------------------------------------------------------------------


def _trainer_backend(values: str) -> str:
    return VALUE_SETS[values].get("trainer", {}).get("backend", "kubernetes")


def _secret_values(objs: list[dict[str, Any]]) -> list[str]:
    return [base64.b64decode(v).decode() for s in of_kind(objs, "Secret") for v in s.get("data", {}).values()]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_no_secret_value_in_any_configmap_or_plain_env(values: str) -> None:
    objs = objects(values)
    secrets = _secret_values(objs)
    if "existingSecret" not in json.dumps(VALUE_SETS[values]):
        assert secrets, "the chart generates the master key and the MinIO credentials"
    plain = [json.dumps(cm.get("data", {})) for cm in of_kind(objs, "ConfigMap")]
    sensitive = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN)$")
    for obj in objs:
        if spec := pod_spec(obj):
            for c in containers(spec):
                for e in c.get("env", []):
                    plain.append(json.dumps(e.get("value", "")))
                    if sensitive.search(e["name"]):
                        assert "valueFrom" in e, f"{e['name']} of {c['name']} must come from a Secret"
    for secret in secrets:
        assert not any(secret in text for text in plain)


def test_generated_master_key_is_an_sk_key_and_not_reused_between_installs() -> None:
    keys = []
    for _ in range(2):
        out = _chart().render(values={}, name=RELEASE, namespace=NAMESPACE)
        gateway = next(
            o
            for o in yaml.safe_load_all(out["flywheel/templates/secrets.yaml"])
            if o["metadata"]["name"].endswith("gateway")
        )
        keys.append(base64.b64decode(gateway["data"]["masterKey"]).decode())
    assert all(k.startswith("sk-") and len(k) == 43 for k in keys) and keys[0] != keys[1]


def test_values_hold_no_secrets() -> None:
    """Secret-looking keys of values.yaml only name Secrets or keys in them, and default to no value."""

    def walk(node: Any, path: str = ""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else key)
        else:
            yield path, node

    suspicious = {
        p: v
        for p, v in walk(_chart().values)
        if re.search(r"(?i)(password|secret|token|masterkey|apikey)", p.split(".")[-1])
    }
    assert suspicious, "the walk must find the Secret-name keys"
    for path, value in suspicious.items():
        leaf = path.split(".")[-1]
        assert leaf.endswith(("Secret", "Secrets", "Key")) and not leaf.endswith(("ApiKey", "apiKey")), path
        if leaf.endswith("KeyKey") or path in ("serviceAuth.tokenKey", "serviceAuth.nextTokenKey"):
            # the name of a key inside a Secret, never a secret itself
            names = ("accessKey", "secretKey", "masterKey", "service-token", "service-token-next")
            assert value in names, f"{path} defaults to {value!r}"
        else:  # names of Secrets the user creates; none by default
            assert value in ("", []), f"{path} defaults to {value!r}"


# --- networking ----------------------------------------------------------------------------------------


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())


def test_sandbox_runner_has_no_egress_and_no_infrastructure_settings() -> None:
    objs = objects("defaults")
    sandbox = component(objs, "Deployment", "sandbox-runner")
    labels = sandbox["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in of_kind(objs, "NetworkPolicy") if _selects(p, labels)]
    egress_policies = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    assert egress_policies, "a policy must restrict the sandbox runner's egress"
    assert all(p["spec"].get("egress", []) == [] for p in egress_policies), "no egress rule may exist"
    spec = sandbox["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec  # the node's runc: gVisor's cgroupfs cannot hold the runner
    env = env_of(spec["containers"][0])
    assert not [n for n in env if n.startswith(("FLYWHEEL_NATS", "FLYWHEEL_OBJECT_STORE"))]


def test_sandbox_runner_reaches_only_the_object_store_when_given_it() -> None:
    dns = {
        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
    bundled = _chart_objects({"sandboxRunner": {"objectStore": {"enabled": True}}})
    policy = component(bundled, "NetworkPolicy", "sandbox-runner")
    minio_labels = component(bundled, "StatefulSet", "minio")["spec"]["template"]["metadata"]["labels"]
    (minio_rule, dns_rule) = policy["spec"]["egress"]
    assert all(minio_labels[k] == v for k, v in minio_rule["to"][0]["podSelector"]["matchLabels"].items())
    assert minio_rule["ports"] == [{"port": 9000, "protocol": "TCP"}] and dns_rule == dns

    objs = objects("sandbox-object-store")
    policy = component(objs, "NetworkPolicy", "sandbox-runner")
    (s3_rule, dns_rule) = policy["spec"]["egress"]
    assert s3_rule == {
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }
    env = env_of(component(objs, "Deployment", "sandbox-runner")["spec"]["template"]["spec"]["containers"][0])
    assert env["FLYWHEEL_OBJECT_STORE_ENDPOINT"]["value"] == "s3.example.com"
    assert "FLYWHEEL_NATS_URL" not in env

    with pytest.raises(HelmRenderError, match=r"sandboxRunner\.objectStore\.egressTo is required"):
        _chart().render(
            values={
                **VALUE_SETS["sandbox-object-store"],
                "sandboxRunner": {"objectStore": {"enabled": True}},
            },
            name=RELEASE,
        )


def test_every_flywheel_pod_accepts_traffic_only_from_the_release() -> None:
    objs = objects("defaults")
    policies = of_kind(objs, "NetworkPolicy")
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        selecting = [p for p in policies if _selects(p, labels)]
        assert selecting, obj["metadata"]["name"]
        for policy in selecting:
            for rule in policy["spec"]["ingress"]:
                if labels["app.kubernetes.io/component"] == "gateway" and "from" not in rule:
                    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
                    continue
                assert rule["from"] == [
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}}
                ]
    assert not of_kind(_chart_objects({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def _chart_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = _chart().render(values=values, name=RELEASE, namespace=NAMESPACE)
    return [d for p, t in out.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def test_external_s3_replaces_minio() -> None:
    objs = objects("external-s3")
    assert not [
        o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] in ("minio", "object-store")
    ]
    c = component(objs, "Deployment", "trajectory-store")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    assert env["FLYWHEEL_OBJECT_STORE_ENDPOINT"]["value"] == "s3.example.com:443"
    assert env["FLYWHEEL_OBJECT_STORE_SECURE"]["value"] == "true"
    assert env["FLYWHEEL_OBJECT_STORE_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "my-s3"
    defaults = env_of(
        component(objects("defaults"), "Deployment", "trajectory-store")["spec"]["template"]["spec"][
            "containers"
        ][0]
    )
    assert defaults["FLYWHEEL_OBJECT_STORE_ENDPOINT"]["value"] == f"{RELEASE}-flywheel-minio:9000"
    assert defaults["FLYWHEEL_NATS_URL"]["value"] == f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"


def test_gateway_settings_capture_ingress_and_database() -> None:
    env = env_of(
        component(objects("capture-on"), "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["FLYWHEEL_GATEWAY_CAPTURE"]["value"] == "true"
    assert json.loads(env["FLYWHEEL_GATEWAY_BASE_MODELS"]["value"]) == ["gemma-3-270m"]
    assert (
        env["FLYWHEEL_GATEWAY_MODEL_SERVER_URL"]["value"] == f"http://{RELEASE}-flywheel-model-server:8000/v1"
    )
    assert env["FLYWHEEL_GATEWAY_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "masterKey"
    ingress = component(objects("ingress-on"), "Ingress", "gateway")
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.com"], "secretName": "llm-tls"}]
    pg_env = env_of(
        component(objects("postgres-on"), "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][
            0
        ]
    )
    assert "$(POSTGRES_PASSWORD)" in pg_env["DATABASE_URL"]["value"]


# --- helm test pods and NOTES ----------------------------------------------------------------------


def test_helm_test_pods_cover_every_service_and_a_chat_completion() -> None:
    pods = [o for o in objects("defaults") if o["kind"] == "Pod"]
    assert all(p["metadata"]["annotations"]["helm.sh/hook"] == "test" for p in pods)
    scripts = {p["metadata"]["name"]: p["spec"]["containers"][0]["args"][0] for p in pods}
    for comp in _grpc_components():
        script = scripts[f"{RELEASE}-flywheel-test-health-{comp.name}"]
        assert f"{RELEASE}-flywheel-{comp.name}:{comp.default_port}" in script
        assert comp.grpc_service in script and "grpc.health.v1.Health/Check" in script and "SERVING" in script
    assert "/health/readiness" in scripts[f"{RELEASE}-flywheel-test-gateway-ready"]
    chat = scripts[f"{RELEASE}-flywheel-test-chat-completion"]
    body = json.loads(re.search(r"-d '(\{.*\})'", chat).group(1))
    assert body["model"] == "gemma-3-270m" and body["messages"]
    assert "$MASTER_KEY" in chat


def _proto_services() -> set[str]:
    """Every gRPC service Flywheel's protos declare, as package.Service."""
    found = set()
    for proto in (ROOT / "proto" / "flywheel").rglob("*.proto"):
        text = proto.read_text()
        package = re.search(r"^package ([\w.]+);", text, re.M)
        assert package, proto
        found |= {f"{package.group(1)}.{name}" for name in re.findall(r"^service (\w+)", text, re.M)}
    return found


def test_every_grpc_service_of_the_protos_has_a_health_test_pod() -> None:
    """Not only the services `flywheel up` knows: every service any proto declares."""
    pods = [o for o in objects("defaults") if o["kind"] == "Pod"]
    health = " ".join(
        p["spec"]["containers"][0]["args"][0] for p in pods if "-test-health-" in p["metadata"]["name"]
    )
    services = _proto_services()
    assert len(services) >= 5
    assert [s for s in sorted(services) if f'"service": "{s}"' not in health] == []


HELM_TEST_SCRIPT = CHART / "files" / "helm-test.py"


def _helm_test_pods(values: str = "defaults") -> dict[str, dict[str, Any]]:
    pods = [o for o in objects(values) if o["kind"] == "Pod"]
    return {p["metadata"]["name"].removeprefix(f"{RELEASE}-flywheel-test-"): p for p in pods}


def test_dataset_build_and_fine_tune_test_pods_run_the_script_in_the_trainer_image() -> None:
    """Two `helm test` hooks run files/helm-test.py (which compiles) with python -c in the trainer
    image, one per mode, with what the script reads: the addresses, the object store (credentials
    from the Secret), the deadline and base model of the values, a writable /tmp."""
    import ast

    pods = _helm_test_pods()
    trainer = component(objects("defaults"), "Deployment", "trainer-svc")["spec"]["template"]["spec"]
    trainer_image = trainer["containers"][0]["image"]
    script = HELM_TEST_SCRIPT.read_text()
    compile(script, str(HELM_TEST_SCRIPT), "exec")
    modes = {
        k.value
        for node in ast.walk(ast.parse(script))
        if isinstance(node, ast.Dict)
        for k in node.keys
        if isinstance(k, ast.Constant)
    }
    for name, mode in (("dataset-build", "dataset"), ("fine-tune", "fine-tune")):
        pod = pods[name]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        container = pod["spec"]["containers"][0]
        assert container["image"] == trainer_image
        assert container["command"] == ["python", "-c"] and container["args"] == [script, mode]
        assert mode in modes
        env = env_of(container)
        for variable in (
            "FLYWHEEL_TRAJECTORY_ADDRESS",
            "FLYWHEEL_DATASET_ADDRESS",
            "FLYWHEEL_TRAINER_ADDRESS",
        ):
            assert env[variable]["value"].endswith(tuple(f":{p}" for p in (50053, 50054, 50055))), variable
            assert variable in script
        assert env["FLYWHEEL_OBJECT_STORE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretKey"
        assert env["FLYWHEEL_TEST_DEADLINE_S"]["value"] == "900"
        assert env["FLYWHEEL_TEST_BASE_MODEL"]["value"] == ""
        if "FLYWHEEL_SERVICE_TOKEN" in env:  # service authentication: the token comes from its Secret
            assert env["FLYWHEEL_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert container["resources"]["limits"]["memory"] == "2Gi"
    tuned = _chart_objects(
        {"tests": {"datasetAndFineTune": {"baseModel": "gemma-3-270m", "deadlineSeconds": 1800}}}
    )
    fine_tune = next(o for o in tuned if o["metadata"]["name"] == f"{RELEASE}-flywheel-test-fine-tune")
    env = env_of(fine_tune["spec"]["containers"][0])
    assert env["FLYWHEEL_TEST_BASE_MODEL"]["value"] == "gemma-3-270m"
    assert env["FLYWHEEL_TEST_DEADLINE_S"]["value"] == "1800"
    off = _chart_objects({"tests": {"datasetAndFineTune": {"enabled": False}}})
    assert not [o for o in off if o["metadata"]["name"].endswith(("-test-fine-tune", "-test-dataset-build"))]


def _grpcurl_commands(notes: str) -> list[list[str]]:
    commands = []
    for line in notes.replace("\\\n", " ").splitlines():
        if "grpcurl -plaintext" not in line:
            continue
        part = line[line.index("grpcurl") :]
        part = part.split(" | ")[0].rstrip(")")
        commands.append(shlex.split(part))
    return commands


@pytest.mark.parametrize("values", ["defaults", "ingress-on", "example-one-gpu-node"])
def test_notes_give_ready_to_paste_commands_that_match_the_protos(values: str) -> None:
    from google.protobuf import descriptor_pool, json_format, message_factory

    import flywheel.dataset.v1.dataset_pb2  # registers the descriptors in the default pool
    import flywheel.trainer.v1.trainer_pb2  # noqa: F401

    notes = _render(values)["flywheel/templates/NOTES.txt"]
    assert f"get secret {RELEASE}-flywheel-gateway" in notes
    if values == "ingress-on":
        assert "https://llm.example.com" in notes
    else:
        assert f"port-forward svc/{RELEASE}-flywheel-gateway" in notes
    assert "WARNING: the sandbox runner's pod is privileged" in notes  # the default cgroupAccess
    commands = _grpcurl_commands(notes)
    methods = {c[-1] for c in commands}
    assert "flywheel.dataset.v1.DatasetService/CreateDatasetBuild" in methods
    assert "flywheel.trainer.v1.TrainerService/CreateFineTuneJob" in methods
    pool = descriptor_pool.Default()
    for command in commands:
        method = pool.FindMethodByName(command[-1].replace("/", "."))
        if "-d" not in command:
            continue
        body = re.sub(r"\$[A-Z_]+", "x", command[command.index("-d") + 1])
        request = message_factory.GetMessageClass(method.input_type)()
        json_format.Parse(body, request)  # unknown fields or enum names fail here
        assert request.ByteSize() > 0, command


# --- values.yaml and the schema -----------------------------------------------------------------------


BAD_VALUES = [
    ({"gateway": {"masterKey": "sk-plain-text"}}, "/gateway': additional properties 'masterKey' not allowed"),
    ({"objectStore": {"secretKey": "hunter2"}}, "additional properties 'secretKey' not allowed"),
    ({"trainer": {"backend": "slurm"}}, "/trainer/backend': value must be one of 'kubernetes', 'local'"),
    ({"modelServer": {"replicas": 0}}, "/modelServer/replicas': minimum: got 0, want 1"),
    ({"modelServer": {"lora": {"maxLoraRank": 48}}}, "/modelServer/lora/maxLoraRank': value must be one of"),
    ({"modelServer": {"resources": {"limits": {"memory": "lots"}}}}, "/modelServer/resources/limits/memory"),
    ({"minio": {"enabled": False}}, "/objectStore/external/endpoint': minLength: got 0, want 1"),
    ({"minio": {"enabled": False}}, "/objectStore/existingSecret': minLength: got 0, want 1"),
    (
        {"objectStore": {"external": {"endpoint": "https://s3.amazonaws.com"}}},
        "/objectStore/external/endpoint': 'https://s3.amazonaws.com' does not match",
    ),
    ({"nats": {"enabled": False}}, "/externalNats/url': minLength: got 0, want 1"),
    (
        {"sandboxRunner": {"seccompProfile": {"type": "Unconfined"}}},
        "/sandboxRunner/seccompProfile/type': value must be one of",
    ),
    (
        {"sandboxRunner": {"cgroupAccess": "hostPath"}},
        "/sandboxRunner/cgroupAccess': value must be one of 'privileged', 'delegated'",
    ),
    ({"modelServer": {"model": {"source": "pvc"}}}, "/modelServer/model/existingClaim': minLength"),
    ({"modelServer": {"model": {"source": "registry"}}}, "/modelServer/model/registryName': minLength"),
    (
        {"baseModels": [{"name": "Gemma", "source": {"prefix": "a/"}}]},
        "/baseModels/0/name': 'Gemma' does not match",
    ),
    ({"baseModels": [{"name": "g", "source": {"prefix": "a/", "folder": "/b"}}]}, "/baseModels/0/source'"),
    ({"baseModels": [{"name": "g", "source": {}}]}, "/baseModels/0/source'"),
    ({"baseModels": [{"name": "g", "source": {"folder": "relative"}}]}, "/baseModels/0/source/folder'"),
    (
        {"baseModels": [{"name": "Gemma", "source": {"prefix": "a/"}}]},
        "/baseModels/0/name': 'Gemma' does not match",
    ),
    ({"gatewy": {}}, "additional properties 'gatewy' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_schema_rejects_bad_values_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError) as at_validate:
        _chart().validate_schema(values)
    assert message in str(at_validate.value)
    with pytest.raises(HelmValuesError) as at_install:
        _chart().render(values=values, name=RELEASE)
    assert message in str(at_install.value)


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_schema_accepts_every_shipped_value_set(values: str) -> None:
    _chart().validate_schema(VALUE_SETS[values])


def test_committed_schema_is_what_the_generator_writes() -> None:
    generated = subprocess.run(
        [sys.executable, "-c", "import values_schema; print(values_schema.render(), end='')"],
        cwd=ROOT / "deploy" / "helm" / "tools",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == (CHART / "values.schema.json").read_text(), "run deploy/helm/tools/values_schema.py"


def test_every_key_of_values_yaml_is_commented() -> None:
    """Every block key has a comment line right above it, except the inside of Kubernetes-native
    objects (resources, nodeSelector, tolerations, affinity) which their parent's comment describes."""
    native = {"resources", "nodeSelector", "tolerations", "affinity", "annotations", "podAnnotations"}
    stack: list[tuple[int, str]] = []
    previous = ""
    uncommented = []
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            previous = ""
            continue
        if stripped.startswith("#"):
            previous = stripped
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"(-\s+)?([A-Za-z0-9_.\"/-]+):", stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if match and not match.group(1):
            key = match.group(2)
            inside_native = any(name in native for _, name in stack)
            if not inside_native and not previous.startswith("#"):
                uncommented.append(f"line {number}: {key}")
            stack.append((indent, key))
        previous = stripped
    assert not uncommented, uncommented


# --- the services accept the environment the chart gives them -------------------------------------------

SETTINGS_CLASSES = {
    "orchestrator": ("flywheel_orchestrator.settings", "OrchestratorSettings"),
    "sandbox-runner": ("flywheel_sandbox.settings", "SandboxSettings"),
    "trajectory-store": ("flywheel_trajectory.settings", "TrajectorySettings"),
    "dataset-svc": ("flywheel_dataset.settings", "DatasetSettings"),
    "trainer-svc": ("flywheel_trainer.settings", "TrainerSettings"),
    "gateway": ("flywheel_gateway.settings", "GatewaySettings"),
}


def _resolved_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would give it: Secrets replaced by stand-ins,
    the downward API by a pod name, and $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = f"sk-stand-in-for-{e['valueFrom']['secretKeyRef']['key']}"
        else:
            env[e["name"]] = "flywheel-0"
    return env


@pytest.mark.parametrize("values", ["defaults", "shared-volume"])
def test_adapter_sync_loads_its_settings_from_the_rendered_environment(
    values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from flywheel_common.settings import load_settings
    from flywheel_gateway.adapter_sync import AdapterSyncSettings

    objs = objects(values)
    if values == "shared-volume":
        spec = component(objs, "Deployment", "adapter-sync")["spec"]["template"]["spec"]
    else:
        spec = component(objs, "StatefulSet", "model-server")["spec"]["template"]["spec"]
    env = _resolved_env(next(c for c in spec["containers"] if c["name"] == "adapter-sync"))
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(AdapterSyncSettings)
    assert str(settings.adapter_dir) == "/adapters"
    assert settings.gateway_key.get_secret_value() == "sk-stand-in-for-masterKey"
    assert settings.object_store.backend == "s3" and settings.nats.url.startswith("nats://")
    if values == "defaults":
        assert settings.replicas == ["http://127.0.0.1:8000"]
        assert settings.durable == "adapter-sync-flywheel-0"
    else:
        assert len(settings.replicas) == 3 and settings.durable == "adapter-sync"


@pytest.mark.parametrize("values", ["defaults", "external-s3", "example-gpu"])
@pytest.mark.parametrize("comp", sorted(SETTINGS_CLASSES))
def test_services_load_their_settings_from_the_rendered_environment(
    values: str, comp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's real settings class reads the env the chart renders (a wrong name or format fails)."""
    import importlib
    import os

    from flywheel_common.settings import load_settings

    module, name = SETTINGS_CLASSES[comp]
    settings_class = getattr(importlib.import_module(module), name)
    container = component(objects(values), "Deployment", comp)["spec"]["template"]["spec"]["containers"][0]
    env = _resolved_env(container)
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(settings_class)
    assert str(settings.port) == env[f"{settings_class.model_config['env_prefix']}PORT"]
    if comp == "gateway":
        from flywheel_gateway.config import build_config

        routes = [m["model_name"] for m in build_config(settings)["model_list"]]
        assert routes[:2] == ["ft/*", "gemma-3-270m"]
        assert settings.model_server_url == f"http://{RELEASE}-flywheel-model-server:8000/v1"
        return
    assert settings.log_format == "json" and settings.metrics_port == 9090
    if comp == "sandbox-runner":
        assert settings.max_concurrency == 4 and settings.unsafe_local is False
        return
    if comp == "trainer-svc":
        lora = {**VALUE_SETS["defaults"], **VALUE_SETS[values]}.get("modelServer", {}).get("lora", {})
        assert settings.max_lora_rank == lora.get("maxLoraRank", 64)
        assert settings.slots == VALUE_SETS[values].get("trainer", {}).get("maxConcurrentJobs", 1)
        assert str(settings.state_dir) == "/var/lib/flywheel/trainer"
        trainer = {**VALUE_SETS["defaults"], **VALUE_SETS[values]}.get("trainer", {})
        assert settings.backend == trainer.get("backend", "kubernetes")
    assert settings.object_store.backend == "s3"
    assert settings.object_store.endpoint == env["FLYWHEEL_OBJECT_STORE_ENDPOINT"]
    assert settings.object_store.secure is (values != "defaults")
    assert settings.object_store.secret_key.get_secret_value() == "sk-stand-in-for-secretKey"
    assert settings.nats.url == env["FLYWHEEL_NATS_URL"]


@pytest.mark.parametrize(
    ("values", "want"), [({}, "auto"), ({"sandboxRunner": {"cgroupVersion": "v2"}}, "v2")]
)
def test_sandbox_runner_cgroup_version_reaches_the_runner(values: dict[str, Any], want: str) -> None:
    objs = _chart_objects(values)
    env = env_of(component(objs, "Deployment", "sandbox-runner")["spec"]["template"]["spec"]["containers"][0])
    assert env["FLYWHEEL_SANDBOX_CGROUP_VERSION"]["value"] == want


def test_sandbox_runner_cgroup_version_is_validated() -> None:
    with pytest.raises(HelmValuesError, match="cgroupVersion"):
        _chart_objects({"sandboxRunner": {"cgroupVersion": "v3"}})


def _sandbox_pod(values: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = component(objects(values), "Deployment", "sandbox-runner")["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_sandbox_runner_default_can_start_on_a_stock_cgroup_v2_node() -> None:
    """The runner must be root (it creates cgroups and drops to uid 65534) and needs a writable
    /sys/fs/cgroup and an unmasked /proc: on a stock node only a privileged container has both."""
    spec, c = _sandbox_pod("defaults")
    assert spec["securityContext"]["runAsUser"] == 0 and spec["securityContext"]["runAsNonRoot"] is False
    ctx = c["securityContext"]
    assert ctx["privileged"] is True and ctx["allowPrivilegeEscalation"] is True
    assert ctx["runAsUser"] == 0 and ctx["readOnlyRootFilesystem"] is True
    assert "hostUsers" not in spec and "runtimeClassName" not in spec
    assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
    assert env_of(c)["FLYWHEEL_SANDBOX_CGROUP_VERSION"]["value"] == "auto"
    # No host path is mounted: the runner uses the container's own cgroup (v2: its namespace root).
    assert not [v for v in spec["volumes"] if "hostPath" in v]


def test_sandbox_runner_delegated_is_not_privileged() -> None:
    spec, c = _sandbox_pod("sandbox-delegated")
    ctx = c["securityContext"]
    assert "privileged" not in ctx and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {
        "drop": ["ALL"],
        "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID", "SYS_PTRACE"],
    }
    assert ctx["procMount"] == "Unmasked" and spec["hostUsers"] is False
    assert ctx["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/flywheel-sandbox.json",
    }
    assert spec["runtimeClassName"] == "runc-cgroup-writable"
    assert (
        "WARNING: the sandbox runner's pod is privileged"
        not in _chart().render(values=VALUE_SETS["sandbox-delegated"], name=RELEASE, namespace=NAMESPACE)[
            "flywheel/templates/NOTES.txt"
        ]
    )


def test_sandbox_runner_delegated_needs_its_own_user_namespace() -> None:
    with pytest.raises(HelmRenderError, match=r"cgroupAccess delegated needs sandboxRunner\.hostUsers false"):
        _chart_objects({"sandboxRunner": {"cgroupAccess": "delegated"}})


# --- wiring a reviewer checks in the default install ------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_orchestrator_calls_the_gateway_with_its_master_key(values: str) -> None:
    """Rollouts and evaluations go through the gateway: without its key every call would be 401."""
    objs = objects(values)
    gateway = env_of(containers(pod_spec(component(objs, "Deployment", "gateway")))[0])
    orchestrator = env_of(containers(pod_spec(component(objs, "Deployment", "orchestrator")))[0])
    key = orchestrator["FLYWHEEL_ORCHESTRATOR_GATEWAY_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == gateway["FLYWHEEL_GATEWAY_MASTER_KEY"]["valueFrom"]["secretKeyRef"]
    assert "FLYWHEEL_GATEWAY_ADDRESS" in orchestrator


def _store(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The trajectory store's Deployment and its container's environment, rendered from ``values``."""
    store = component(_chart_objects(values), "Deployment", "trajectory-store")
    return store, env_of(store["spec"]["template"]["spec"]["containers"][0])


def test_no_replicated_pod_local_index() -> None:
    """Without PostgreSQL the index is SQLite on each pod's emptyDir: one replica, and the chart
    refuses more with the reason and the way out."""
    store, env = _store({})
    assert store["spec"]["replicas"] == 1
    assert not any(name.startswith("FLYWHEEL_TRAJECTORY_DATABASE") for name in env)
    for values in (
        {"trajectoryStore": {"replicas": 2}},
        # The chart's PostgreSQL runs, but the store is told not to use it.
        {
            "trajectoryStore": {"replicas": 2, "database": {"useBundledPostgres": False}},
            "postgres": {"enabled": True},
        },
    ):
        with pytest.raises(
            HelmRenderError,
            match=r"trajectoryStore\.replicas must be 1 with the SQLite index.*trajectoryStore\.database\.existingSecret",
        ):
            _chart().render(values=values, name=RELEASE, namespace=NAMESPACE)


def test_the_store_shares_a_postgres_index_from_a_secret_and_then_scales() -> None:
    store, env = _store(VALUE_SETS["store-replicas-on-postgres"])
    assert store["spec"]["replicas"] == 3
    assert env["FLYWHEEL_TRAJECTORY_DATABASE_URL"] == {
        "name": "FLYWHEEL_TRAJECTORY_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "store-db", "key": "dsn"}},
    }
    assert env["FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA"]["value"] == "trajectory_store"
    assert "POSTGRES_PASSWORD" not in env
    # More than one pod: a disruption budget, as for every replicated component.
    budgets = of_kind(objects("store-replicas-on-postgres"), "PodDisruptionBudget")
    assert any(b["metadata"]["labels"]["app.kubernetes.io/component"] == "trajectory-store" for b in budgets)


def test_the_store_uses_the_bundled_postgres_when_it_runs() -> None:
    store, env = _store({"postgres": {"enabled": True}, "trajectoryStore": {"replicas": 2}})
    assert store["spec"]["replicas"] == 2
    pg = f"{RELEASE}-flywheel-postgres"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": pg, "key": "password"}
    # The password stays in the Secret: Kubernetes expands $(POSTGRES_PASSWORD) in the pod.
    assert env["FLYWHEEL_TRAJECTORY_DATABASE_URL"]["value"] == (
        f"postgresql://litellm:$(POSTGRES_PASSWORD)@{pg}:5432/litellm"
    )
    names = list(env)
    assert names.index("POSTGRES_PASSWORD") < names.index("FLYWHEEL_TRAJECTORY_DATABASE_URL")
    # A Secret of your own wins over the bundled database.
    _, env = _store(
        {"postgres": {"enabled": True}, "trajectoryStore": {"database": {"existingSecret": "mine"}}}
    )
    assert env["FLYWHEEL_TRAJECTORY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mine"
    assert "POSTGRES_PASSWORD" not in env


# --- service-to-service authentication (flywheel_common.auth) ----------------------------------------


def _service_token_refs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(object/container, FLYWHEEL_SERVICE_TOKEN entry, …_NEXT entry) of every Flywheel container
    (our images) and every grpcurl test pod."""
    found = []
    for obj in objs:
        if spec := pod_spec(obj):
            for c in containers(spec):
                if "/flywheel/" in c["image"] or "grpcurl" in c["image"]:
                    env = env_of(c)
                    where = f"{obj['kind']} {obj['metadata'].get('name', '(job template)')}/{c['name']}"
                    found.append(
                        (
                            where,
                            env.get("FLYWHEEL_SERVICE_TOKEN", {}),
                            env.get("FLYWHEEL_SERVICE_TOKEN_NEXT", {}),
                        )
                    )
    return found


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_flywheel_container_gets_the_service_token_from_the_secret(values: str) -> None:
    objs = objects(values)
    secret = (
        VALUE_SETS[values].get("serviceAuth", {}).get("existingSecret") or f"{RELEASE}-flywheel-service-auth"
    )
    refs = _service_token_refs(objs)
    # Every service, the gateway, adapter sync, the trainer's job pods (kubernetes backend) and the tests.
    assert len(refs) >= 11, refs
    for where, token, following in refs:
        assert token.get("valueFrom", {}).get("secretKeyRef") == {"name": secret, "key": "service-token"}, (
            where
        )
        assert following["valueFrom"]["secretKeyRef"] == {
            "name": secret,
            "key": "service-token-next",
            "optional": True,
        }, where
    if values == "trainer-jobs":
        assert any(where.startswith("Job ") for where, _, _ in refs), "the training Job template"


def test_the_service_token_is_generated_once_and_an_existing_secret_replaces_it() -> None:
    tokens = []
    for _ in range(2):
        out = _chart().render(values={}, name=RELEASE, namespace=NAMESPACE)
        secret = next(
            o
            for o in yaml.safe_load_all(out["flywheel/templates/secrets.yaml"])
            if o and o["metadata"]["name"] == f"{RELEASE}-flywheel-service-auth"
        )
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        tokens.append(base64.b64decode(secret["data"]["service-token"]).decode())
    assert all(t.startswith("fw-") and len(t) == 51 for t in tokens) and tokens[0] != tokens[1]

    out = _chart().render(
        values={"serviceAuth": {"existingSecret": "my-token"}}, name=RELEASE, namespace=NAMESPACE
    )
    names = [o["metadata"]["name"] for o in yaml.safe_load_all(out["flywheel/templates/secrets.yaml"]) if o]
    assert f"{RELEASE}-flywheel-service-auth" not in names
    refs = _service_token_refs(
        [
            doc
            for path, text in out.items()
            if path.endswith(".yaml") and text.strip()
            for doc in yaml.safe_load_all(text)
            if isinstance(doc, dict) and "kind" in doc
        ]
    )
    assert refs and all(t["valueFrom"]["secretKeyRef"]["name"] == "my-token" for _, t, _ in refs)


def test_helm_test_pods_check_that_calls_need_the_token() -> None:
    pods = [o for o in objects("defaults") if o["kind"] == "Pod"]
    scripts = {p["metadata"]["name"]: p["spec"]["containers"][0]["args"][0] for p in pods}
    for comp in _grpc_components():
        script = scripts[f"{RELEASE}-flywheel-test-health-{comp.name}"]
        assert "grep -q Unauthenticated" in script  # the call without the token is refused
        assert '-H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"' in script


@pytest.mark.parametrize("values", ["defaults", "external-s3"])
@pytest.mark.parametrize("comp", sorted(SETTINGS_CLASSES))
def test_services_read_the_rendered_token(values: str, comp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered FLYWHEEL_SERVICE_TOKEN reaches each service's settings (and its clients)."""
    import importlib
    import os

    from flywheel_common.auth import AuthSettings
    from flywheel_common.settings import ServiceSettings, load_settings

    module, name = SETTINGS_CLASSES[comp]
    settings_class = getattr(importlib.import_module(module), name)
    container = component(objects(values), "Deployment", comp)["spec"]["template"]["spec"]["containers"][0]
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in _resolved_env(container).items():
        monkeypatch.setenv(key, value)
    expected = "sk-stand-in-for-service-token"
    assert AuthSettings().token() == expected
    settings = load_settings(settings_class)
    if isinstance(settings, ServiceSettings):
        assert settings.auth.accepted() == [expected, "sk-stand-in-for-service-token-next"]
