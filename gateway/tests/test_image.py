"""The gateway image bakes Prisma in (virtual keys on a locked-down cluster), and the master key
needs no database.

No Docker engine runs here, so the image is not built: these tests read gateway/Dockerfile and
check the Prisma step against the litellm installed in this environment (the version the image
pins), and check that the real gateway, started without DATABASE_URL, serves the master key.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from .conftest import BASE_MODEL, MASTER_KEY, Gateway

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _prisma_step() -> str:
    [step] = [rest for word, rest in _final_stage() if word == "RUN" and "prisma generate" in rest]
    return step


def test_the_prisma_step_runs_in_the_runtime_stage_after_litellm_and_before_the_user_drops() -> None:
    """Generated into the image the gateway runs from (the last stage), once litellm is installed
    (the schema comes from it) and while the build is still root (it writes site-packages)."""
    stage = _final_stage()
    index = {rest: i for i, (_, rest) in enumerate(stage)}
    install = next(i for i, (word, rest) in enumerate(stage) if word == "RUN" and "./gateway" in rest)
    user = next(i for i, (word, _) in enumerate(stage) if word == "USER")
    step = _prisma_step()
    assert install < index[step] < user, "the Prisma step must follow the litellm install and precede USER"
    assert stage[user][1].startswith("65534"), "the image runs as the chart's non-root uid"
    assert "prisma --version" in step, "the CLI and its Node are fetched at build time too"
    assert "chmod -R a+rX /opt/prisma" in step, "the runtime user must read the engines"
    env = " ".join(rest for word, rest in stage if word == "ENV")
    # The same locations at build and at run time, outside HOME (the pod's HOME is an emptyDir).
    assert "PRISMA_BINARY_CACHE_DIR=/opt/prisma/" in env
    assert "PRISMA_NODEENV_CACHE_DIR=/opt/prisma/" in env


def test_the_schema_the_step_generates_from_exists_in_the_installed_litellm() -> None:
    """The step's own expression, run against this environment's litellm (the pinned version),
    names a Prisma schema for the Python client, with an engine for the image's Debian."""
    expression = re.search(r"SCHEMA=\"\$\(python -c '([^']+)'\)\"", _prisma_step())
    assert expression, "the step computes the schema path with python -c '…'"
    path = subprocess.run(
        [sys.executable, "-c", expression.group(1)],
        capture_output=True,
        text=True,
        check=True,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    schema = Path(path)
    assert schema.is_file(), f"{schema} is not in the installed litellm"
    text = schema.read_text()
    assert 'provider = "prisma-client-py"' in text
    assert '"debian-openssl-3.0.x"' in text  # python:3.11-slim is Debian with OpenSSL 3
    assert 'env("DATABASE_URL")' in text  # the variable the chart sets from the Postgres Secret
    import litellm_proxy_extras  # the migrations LiteLLM applies are written for the same schema

    assert (Path(litellm_proxy_extras.__file__).parent / "schema.prisma").read_text() == text


def test_the_prisma_version_is_one_the_pinned_litellm_accepts() -> None:
    pinned = re.search(r"ARG PRISMA_PY_VERSION=(\S+)", DOCKERFILE.read_text())
    assert pinned and "prisma==${PRISMA_PY_VERSION}" in _prisma_step()
    wanted = [Requirement(r) for r in metadata.requires("litellm") or [] if Requirement(r).name == "prisma"]
    assert wanted, "litellm declares no prisma requirement any more"
    assert all(pinned.group(1) in r.specifier for r in wanted), (pinned.group(1), wanted)


def test_the_master_key_serves_without_a_database(gateways: dict[str, Gateway]) -> None:
    """The real gateway (LiteLLM's own path, not the fast path) started with no DATABASE_URL: the
    master key is answered, another key is a 401, and Prisma is never asked for."""
    gateway = gateways["litellm"]
    environ = Path(f"/proc/{gateway.proc.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"DATABASE_URL=")]
    chat = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert gateway.post("/v1/chat/completions", chat, key=MASTER_KEY).status_code == 200
    assert gateway.post("/v1/chat/completions", chat, key="sk-not-the-master-key-42").status_code == 401
    assert "prisma" not in gateway.log.read_text().lower()
