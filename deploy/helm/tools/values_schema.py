"""Writes deploy/helm/flywheel/values.schema.json, the JSON Schema Helm checks values against.

The schema is generated rather than hand-edited because it repeats the same shapes (resources,
images, pod placement) for every component; tests/helm checks that the committed file is what
this script produces. Run it after changing values.yaml:

    .venv/bin/python deploy/helm/tools/values_schema.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "flywheel" / "values.schema.json"

# Short builders keep the table below readable: obj = a closed object (unknown keys are errors,
# which is what catches a misspelt or a plain-text secret key), s / b / i = string / boolean /
# integer with its description, ref = a shape from $defs.


def obj(props, required=None, desc=None, addl=False):
    o = {"type": "object", "additionalProperties": addl, "properties": props}
    if required:
        o["required"] = required
    if desc:
        o["description"] = desc
    return o


def s(desc, **kw):
    return {"type": "string", "description": desc, **kw}


def b(desc):
    return {"type": "boolean", "description": desc}


def i(desc, **kw):
    return {"type": "integer", "description": desc, **kw}


def ref(name, desc=None):
    r = {"$ref": f"#/$defs/{name}"}
    if desc:
        r["description"] = desc
    return r


defs = {
    "quantity": {
        "description": "A Kubernetes quantity, e.g. 500m, 2, 4Gi.",
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"},
        ],
    },
    "resourceList": {"type": "object", "additionalProperties": ref("quantity")},
    "resources": obj(
        {"requests": ref("resourceList"), "limits": ref("resourceList")},
        desc="Container resources (requests and limits).",
    ),
    "pullPolicy": {
        "type": "string",
        "enum": ["Always", "IfNotPresent", "Never"],
        "description": "Kubernetes image pull policy.",
    },
    "flywheelImage": obj(
        {
            "name": s("Image name under image.registry.", minLength=1),
            "tag": s("Tag override; empty means image.tag, then appVersion."),
        },
        required=["name"],
    ),
    "externalImage": obj(
        {
            "repository": s("Image repository.", minLength=1),
            "tag": s("Image tag.", minLength=1),
            "pullPolicy": ref("pullPolicy"),
        },
        required=["repository", "tag"],
    ),
    "envList": {
        "type": "array",
        "description": "A list of Kubernetes EnvVar objects.",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"}},
        },
    },
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": {"type": "array", "items": {"type": "object"}},
    "affinity": {"type": "object"},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "size": {
        "type": "string",
        "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
        "description": "A storage size, e.g. 10Gi.",
    },
    "persistence": obj(
        {"size": ref("size"), "storageClass": s("Storage class; empty for the default.")}, required=["size"]
    ),
}


def pod_common():
    return {
        "nodeSelector": ref("nodeSelector"),
        "tolerations": ref("tolerations"),
        "affinity": ref("affinity"),
        "podAnnotations": ref("annotations"),
    }


def grpc_service(desc, extra=None, min_replicas=0):
    p = {
        "replicas": i("Number of pods.", minimum=min_replicas),
        "image": ref("flywheelImage"),
        "resources": ref("resources"),
        "extraEnv": ref("envList"),
        **pod_common(),
    }
    p.update(extra or {})
    return obj(p, required=["replicas", "image", "resources"], desc=desc)


props = {
    "global": {"type": "object", "description": "Helm's global values (shared with subcharts)."},
    "nameOverride": s("Overrides the chart name in resource names.", maxLength=40),
    "fullnameOverride": s("Overrides the <release>-<chart> prefix.", maxLength=40),
    "image": obj(
        {
            "registry": s(
                "Registry/path of the Flywheel images.", minLength=1, pattern="^[^:/ ]+(:[0-9]+)?(/[^: ]+)*$"
            ),
            "tag": s("Tag of every Flywheel image; empty means appVersion."),
            "pullPolicy": ref("pullPolicy"),
        },
        required=["registry"],
    ),
    "imagePullSecrets": {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "description": "Names of image pull Secrets.",
    },
    "logLevel": {
        "type": "string",
        "enum": ["debug", "info", "warning", "error"],
        "description": "Log level of the services.",
    },
    "metricsPort": i("Port of /metrics (0: off).", minimum=0, maximum=65535),
    "podDisruptionBudget": obj({"enabled": b("PodDisruptionBudgets on or off.")}),
    "networkPolicy": obj(
        {
            "enabled": b("NetworkPolicies on or off."),
            "gatewayFrom": {
                "type": "array",
                "items": {"type": "object"},
                "description": "NetworkPolicyPeer objects allowed to reach the gateway.",
            },
        }
    ),
    "serviceAuth": obj(
        {
            "existingSecret": s("Secret with the service token; empty: generated and kept."),
            "tokenKey": s("Key of the service token in that Secret.", minLength=1),
            "nextTokenKey": s("Key of the optional next token (rotation) in that Secret.", minLength=1),
        }
    ),
    "objectStore": obj(
        {
            "bucket": s("S3 bucket name.", pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
            "region": s("Bucket region; empty asks the server."),
            "existingSecret": s("Secret with the S3 credentials."),
            "accessKeyKey": s("Key of the access key id in that Secret.", minLength=1),
            "secretKeyKey": s("Key of the secret access key in that Secret.", minLength=1),
            "external": obj(
                {
                    "endpoint": s(
                        "host:port of an external S3 API, without scheme.",
                        pattern="^([^:/ ]+(:[0-9]{1,5})?)?$",
                    ),
                    "secure": b("https (true) or http (false)."),
                }
            ),
        },
        required=["bucket"],
    ),
    "minio": obj(
        {
            "enabled": b("Deploy the standalone MinIO."),
            "image": ref("externalImage"),
            "persistence": ref("persistence"),
            "resources": ref("resources"),
            "nodeSelector": ref("nodeSelector"),
            "tolerations": ref("tolerations"),
        },
        required=["enabled"],
    ),
    "nats": {
        "type": "object",
        "description": "Values of the official NATS chart, plus enabled.",
        "properties": {"enabled": b("Deploy NATS through the official chart.")},
        "required": ["enabled"],
    },
    "externalNats": obj({"url": s("URL of an existing NATS server.", pattern="^(|(nats|tls)://.+)$")}),
    "orchestrator": grpc_service("Orchestrator."),
    "sandboxRunner": grpc_service(
        "Sandbox runner.",
        {
            "runtimeClassName": s("RuntimeClass of the pods; empty for the node default."),
            "cgroupAccess": {
                "type": "string",
                "enum": ["privileged", "delegated"],
                "description": "privileged container, or delegated (a runtime that mounts the cgroup writable).",
            },
            "hostUsers": {
                "type": ["boolean", "null"],
                "description": "false: own user namespace; null: cluster default.",
            },
            "seccompProfile": obj(
                {
                    "type": {
                        "type": "string",
                        "enum": ["RuntimeDefault", "Localhost"],
                        "description": "Seccomp profile type; Unconfined is not allowed.",
                    },
                    "localhostProfile": s("Profile path for type Localhost."),
                },
                required=["type"],
            ),
            "scratchSizeLimit": ref("size"),
            "cgroupVersion": {
                "type": "string",
                "enum": ["auto", "v1", "v2"],
                "description": "cgroup hierarchy the runner drives: auto (detect), v1 or v2.",
            },
            "maxConcurrency": i("Runs at once per pod.", minimum=1, maximum=256),
            "objectStore": obj(
                {
                    "enabled": b("Give the sandbox runner the object store (and egress to it)."),
                    "egressTo": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "NetworkPolicyPeer objects for an external S3 endpoint.",
                    },
                }
            ),
        },
    ),
    "trajectoryStore": grpc_service(
        "Trajectory store.",
        {
            "database": obj(
                {
                    "existingSecret": s("Secret with the PostgreSQL URL of the index."),
                    "urlKey": s("Key of the URL.", minLength=1),
                    "useBundledPostgres": b("Use the chart's PostgreSQL when it runs."),
                    "schema": s("Schema of the index.", pattern="^[a-z_][a-z0-9_]{0,62}$"),
                }
            )
        },
    ),
    "datasetSvc": grpc_service("Dataset builder."),
    "trainer": grpc_service(
        "Trainer.",
        {
            "backend": {
                "type": "string",
                "enum": ["kubernetes", "local"],
                "description": "kubernetes: each fine-tune is a Job on a GPU node; local: inside the trainer pod.",
            },
            "maxConcurrentJobs": i("Jobs at the same time.", minimum=1),
            "compileCache": b("GPU jobs share torch.compile's kernels through the object store."),
            "persistence": obj(
                {
                    "size": ref("size"),
                    "storageClass": s("Storage class; empty for the default."),
                    "existingClaim": s("An existing ReadWriteOnce claim."),
                },
                required=["size"],
            ),
            "modelVolume": obj(
                {
                    "existingClaim": s(
                        "Claim of models mounted read-only (RegisterBaseModel folder sources)."
                    ),
                    "mountPath": s("Where it is mounted.", pattern="^/"),
                }
            ),
            "local": obj({"gpus": i("GPUs of the trainer pod (local backend).", minimum=0)}),
            "job": obj(
                {
                    "image": s("Image of the training container; empty: the trainer image."),
                    "command": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "description": "Command of the training container.",
                    },
                    "gpus": i("GPUs per training Job.", minimum=1),
                    "resources": ref("resources"),
                    "shmSizeLimit": ref("size"),
                    "scratchSizeLimit": ref("size"),
                    "nodeSelector": ref("nodeSelector"),
                    "tolerations": ref("tolerations"),
                    "runtimeClassName": s("RuntimeClass of training pods."),
                    "priorityClassName": s(
                        "PriorityClass of training pods; empty for the cluster's default."
                    ),
                    "backoffLimit": i(
                        "Failed pods the Job replaces before it fails (disruptions not counted).",
                        minimum=0,
                        maximum=20,
                    ),
                    "ttlSecondsAfterFinished": i("Seconds a finished Job is kept.", minimum=0),
                    "activeDeadlineSeconds": i("Seconds a Job may run (0: no limit).", minimum=0),
                },
                required=["command", "gpus", "resources"],
            ),
        },
    ),
    "gateway": grpc_service(
        "LiteLLM gateway. Its master key comes only from a Secret (existingSecret or generated).",
        {
            "existingSecret": s("Secret with the master key."),
            "masterKeyKey": s("Key of the master key in that Secret.", minLength=1),
            "providerKeysSecret": s(
                "Secret whose keys become the gateway's environment (provider API keys)."
            ),
            "adapterPrefix": s("Model-name prefix of adapters.", pattern="^[a-z0-9][a-z0-9_.-]*/$"),
            "numRetries": i("Retries of a failed upstream call.", minimum=0, maximum=10),
            "requestTimeoutSeconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Upstream timeout (s).",
            },
            "capture": obj({"enabled": b("Traffic capture on or off.")}),
            "service": obj(
                {
                    "type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "port": i("Service port.", minimum=1, maximum=65535),
                }
            ),
        },
        min_replicas=1,
    ),
    "ingress": obj(
        {
            "enabled": b("Create the Ingress."),
            "className": s("IngressClass."),
            "annotations": ref("annotations"),
            "host": s("Host name.", pattern=r"^[a-z0-9*]([a-z0-9.-]*[a-z0-9])?$"),
            "tlsSecret": s("TLS Secret; empty: plain http."),
        }
    ),
    "modelServer": obj(
        {
            "replicas": i("Number of vLLM pods.", minimum=1),
            "image": ref("externalImage"),
            "model": obj(
                {
                    "id": s("Hugging Face id of the base model.", minLength=1),
                    "servedName": s("Name clients use for the base model.", minLength=1),
                    "source": {
                        "type": "string",
                        "enum": ["download", "pvc", "registry"],
                        "description": "Where the base model comes from.",
                    },
                    "registryName": s(
                        "Registry name of the base model (source registry).",
                        pattern="^([a-z0-9][a-z0-9._-]{0,62})?$",
                    ),
                    "existingClaim": s("PVC with the Hugging Face cache (source pvc)."),
                    "downloadSizeLimit": ref("size"),
                    "hfTokenSecret": s("Secret with HF_TOKEN (source download)."),
                },
                required=["id", "servedName", "source"],
            ),
            "maxModelLen": i("vLLM --max-model-len (0: default).", minimum=0),
            "gpuMemoryUtilization": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "description": "Fraction of GPU memory vLLM may use.",
            },
            "lora": obj(
                {
                    "maxLoras": i("vLLM --max-loras.", minimum=1),
                    "maxLoraRank": {
                        "type": "integer",
                        "enum": [8, 16, 32, 64, 128, 256, 320, 512],
                        "description": "vLLM --max-lora-rank (the values vLLM accepts).",
                    },
                    "maxCpuLoras": i("vLLM --max-cpu-loras.", minimum=1),
                },
                required=["maxLoras", "maxLoraRank", "maxCpuLoras"],
            ),
            "toolCalling": obj(
                {
                    "enabled": b("Parse OpenAI tool calls out of the answers (--enable-auto-tool-choice)."),
                    "parser": s(
                        "vLLM --tool-call-parser (hermes reads Flywheel's default template).",
                        pattern="^[a-z0-9_]+$",
                    ),
                    "chatTemplate": s(
                        "vLLM --chat-template: a path or the template; empty keeps the model's."
                    ),
                },
                required=["enabled", "parser"],
            ),
            "extraArgs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Extra vLLM arguments.",
            },
            "gpus": i("GPUs per pod (tensor parallel size).", minimum=1),
            "shmSizeLimit": ref("size"),
            "resources": ref("resources"),
            "runtimeClassName": s("RuntimeClass (e.g. nvidia)."),
            "startupSeconds": i("Seconds vLLM may take to start.", minimum=60),
            "engine": {
                "type": "string",
                "enum": ["vllm", "embedded"],
                "description": "vllm on GPU nodes, or the embedded model server (CPU).",
            },
            "embedded": obj(
                {
                    "image": ref("flywheelImage"),
                    "baseModel": s(
                        "Base model name in the trainer's registry.", pattern="^[a-z0-9][a-z0-9._-]{0,62}$"
                    ),
                    "maxAdapters": i("LoRA adapters loaded at once.", minimum=1),
                    "cacheSizeLimit": ref("size"),
                    "resources": ref("resources"),
                },
                required=["image", "baseModel", "resources"],
            ),
            **pod_common(),
        },
        required=["replicas", "image", "model", "lora", "gpus", "resources"],
    ),
    "adapterSync": obj(
        {
            "mode": {
                "type": "string",
                "enum": ["sidecar", "sharedVolume"],
                "description": "How every vLLM replica gets every adapter.",
            },
            "image": ref("flywheelImage"),
            "args": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "Arguments after python -m flywheel_gateway.",
            },
            "healthPort": i("Port of adapter sync's GET /health (0: no probes).", minimum=0, maximum=65535),
            "size": ref("size"),
            "storageClass": s("Storage class with ReadWriteMany (sharedVolume)."),
            "existingClaim": s("Existing ReadWriteMany claim (sharedVolume)."),
            "resources": ref("resources"),
            "extraEnv": ref("envList"),
        },
        required=["mode", "image", "args"],
    ),
    "postgres": obj(
        {
            "enabled": b("Deploy Postgres."),
            "image": ref("externalImage"),
            "database": s("Database name.", pattern="^[a-z_][a-z0-9_]*$"),
            "user": s("Database user.", pattern="^[a-z_][a-z0-9_]*$"),
            "existingSecret": s("Secret with the password (key password)."),
            "persistence": ref("persistence"),
            "resources": ref("resources"),
        },
        required=["enabled"],
    ),
    "externalDatabase": obj(
        {"existingSecret": s("Secret with the database URL."), "urlKey": s("Key of the URL.", minLength=1)}
    ),
    "baseModels": {
        "type": "array",
        "description": "Base models registered at install and upgrade (RegisterBaseModel).",
        "items": obj(
            {
                "name": s("Registry name.", pattern="^[a-z0-9][a-z0-9._-]{0,62}$"),
                "hfId": s(
                    "Hugging Face id vLLM serves it under; default the name.",
                    pattern="^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
                    maxLength=200,
                ),
                "description": s("Short description."),
                "source": {
                    **obj(
                        {
                            "prefix": s("Object-store prefix of a Hugging Face folder.", minLength=1),
                            "folder": s(
                                "Absolute path of a Hugging Face folder on the trainer.", pattern="^/"
                            ),
                            "ggufKey": s("Object-store key of a Gemma GGUF file.", minLength=1),
                            "ggufPath": s("Absolute path of a Gemma GGUF file on the trainer.", pattern="^/"),
                        },
                        desc="Exactly one of prefix, folder, ggufKey, ggufPath.",
                    ),
                    "minProperties": 1,
                    "maxProperties": 1,
                },
            },
            required=["name", "source"],
        ),
    },
    "baseModelJob": obj(
        {
            "image": s("Image with grpcurl and a shell.", minLength=1),
            "timeoutSeconds": i("Seconds one registration may take.", minimum=1),
            "waitSeconds": i("Seconds to wait for the trainer.", minimum=0),
            "backoffLimit": i("Failed pods replaced before the Job fails.", minimum=0),
        }
    ),
    "tests": obj(
        {
            "grpcurlImage": s("Image with grpcurl and a shell.", minLength=1),
            "curlImage": s("Image with curl.", minLength=1),
            "datasetAndFineTune": obj(
                {
                    "enabled": b("Run the dataset-build and fine-tune test pods."),
                    "baseModel": s("Registry name of the base model; empty: a tiny random one."),
                    "deadlineSeconds": i("Seconds each test may take in all.", minimum=60),
                }
            ),
        }
    ),
}


def cond(if_path, if_value, then_schema):
    # Builds {"if": {properties: {a: {properties: {b: const}}}}, "then": ...}
    def nest(path, leaf):
        node = leaf
        for key in reversed(path):
            node = {"properties": {key: node}, "required": [key]}
        return node

    return {"if": nest(if_path, {"const": if_value}), "then": then_schema}


def require(path, desc):
    node = {"type": "string", "minLength": 1, "description": desc}
    for key in reversed(path):
        node = {"properties": {key: node}, "required": [key]}
    return node


def build_schema() -> dict[str, Any]:
    """The whole schema: every key of values.yaml, closed objects, and the cross-key rules."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Values of the Flywheel chart",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "$defs": defs,
        "allOf": [
            cond(
                ["minio", "enabled"],
                False,
                {
                    "allOf": [
                        require(
                            ["objectStore", "external", "endpoint"], "Required when minio.enabled is false."
                        ),
                        require(["objectStore", "existingSecret"], "Required when minio.enabled is false."),
                    ]
                },
            ),
            cond(
                ["nats", "enabled"],
                False,
                require(["externalNats", "url"], "Required when nats.enabled is false."),
            ),
            cond(
                ["modelServer", "model", "source"],
                "pvc",
                require(["modelServer", "model", "existingClaim"], "Required with source pvc."),
            ),
            cond(
                ["modelServer", "model", "source"],
                "registry",
                require(["modelServer", "model", "registryName"], "Required with source registry."),
            ),
            cond(
                ["sandboxRunner", "seccompProfile", "type"],
                "Localhost",
                require(
                    ["sandboxRunner", "seccompProfile", "localhostProfile"], "Required with type Localhost."
                ),
            ),
        ],
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def main() -> int:
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
