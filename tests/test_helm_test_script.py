"""The chart's `helm test` dataset-build and fine-tune pods, run here against the real services.

No cluster runs here, so the pods are not scheduled; what they run is: the command and arguments
of each pod as the chart renders them (``python -c <files/helm-test.py> dataset|fine-tune``),
started as a process with the environment the pod gets (the services' addresses, the object store's
settings, the session's service token), against `flywheel up`'s Stack on one filesystem object
store and the session's nats-server. The trainer trains with its local backend on the CPU; on a
cluster the same RPCs make a Kubernetes Job (its part is covered by the trainer's fake-API-server
tests). A failing run must exit 1 and say why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helm_python import chart

from flywheel_cli.stack import Stack
from flywheel_testing.stack import address, running_stack
from flywheel_testing.trainer import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "flywheel"
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"


def _pod_command(name: str) -> list[str]:
    """The container's command + args of the rendered test pod ``name``."""
    import yaml

    out = chart.Chart.load(str(CHART)).render(values={}, name="fw", namespace="flywheel")
    text = next(t for path, t in out.items() if path.endswith("tests/dataset-fine-tune.yaml"))
    pod = next(
        d for d in yaml.safe_load_all(text) if d and d["metadata"]["name"] == f"fw-flywheel-test-{name}"
    )
    container = pod["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_url: str) -> Iterator[Stack]:
    folder = build_tiny_model(tmp_path / "base", ["a tiny base model for the stack"] * 8, with_template=True)
    with running_stack(
        tmp_path / "state", monkeypatch, nats_url, base="tiny-stack", base_folder=folder, suite_dirs=[MINI]
    ) as s:
        yield s


def _run(stack: Stack, name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = _pod_command(name)
    assert command[:2] == ["python", "-c"]
    pod_env = {
        **os.environ,  # the stack's object store (fs) and the session's FLYWHEEL_SERVICE_TOKEN
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "FLYWHEEL_TRAJECTORY_ADDRESS": address(stack, "trajectory-store"),
        "FLYWHEEL_DATASET_ADDRESS": address(stack, "dataset-svc"),
        "FLYWHEEL_TRAINER_ADDRESS": address(stack, "trainer-svc"),
        "FLYWHEEL_TEST_DEADLINE_S": "300",
        **env,
    }
    return subprocess.run(
        [sys.executable, *command[1:]], env=pod_env, capture_output=True, text=True, timeout=400, cwd=tmp_path
    )


def test_the_dataset_and_fine_tune_test_pods_pass_on_the_real_services(stack: Stack, tmp_path: Path) -> None:
    dataset = _run(stack, "dataset-build", tmp_path, FLYWHEEL_TEST_BASE_MODEL="")
    assert dataset.returncode == 0, dataset.stdout + dataset.stderr
    assert "imported 2 trajectories" in dataset.stdout and "OK: dataset ds-" in dataset.stdout

    fine_tune = _run(stack, "fine-tune", tmp_path, FLYWHEEL_TEST_BASE_MODEL="")
    assert fine_tune.returncode == 0, fine_tune.stdout + fine_tune.stderr
    out = fine_tune.stdout
    assert "registered the tiny random base model helm-test-tiny" in out
    assert "SUCCEEDED: adapter helm-test v1" in out, out

    # A failure says what failed and why, and exits 1: a base model the registry lacks.
    missing = _run(stack, "fine-tune", tmp_path, FLYWHEEL_TEST_BASE_MODEL="no-such-model")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "FAILED: " in missing.stderr and "no-such-model" in missing.stderr, missing.stderr
    # A deadline: the wait gives up, says what it last saw, and the test fails.
    late = _run(stack, "dataset-build", tmp_path, FLYWHEEL_TEST_DEADLINE_S="0")
    assert late.returncode == 1 and "did not finish within 0 s" in late.stderr, late.stdout + late.stderr
