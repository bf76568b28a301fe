"""Fixtures of the trainer's tests: a tiny model built offline, datasets written the builder's way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from flywheel_common import auth
from flywheel_common.objectstore import ObjectStore, ObjectStoreSettings, open_object_store
from flywheel_common.procs import die_with_parent
from flywheel_testing.trainer import DPO_ROWS, FACTS, SFT_ROWS, TINY, build_tiny_model, write_dataset
from flywheel_trainer import catalog


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the GGUF import test last, so its background conversion overlaps the other tests."""
    items.sort(key=lambda item: "test_gguf_import" in item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def gemma_conversion(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], Path] | None]:
    """Start converting the packaged Gemma GGUF in the background if the session includes its test."""
    if not any("test_gguf_import" in item.nodeid for item in request.session.items):
        yield None
        return
    work = tmp_path_factory.mktemp("gemma")
    with (work / "convert.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flywheel_trainer.gguf_import",
                "--convert-only",
                str(work / "hf"),
                "--work-dir",
                str(work),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    yield proc, work
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [f"{q} {a} I do not know." for q, a in FACTS] * 20
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture
def trainer_env(service_env: dict[str, str], tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """service_env plus a state folder, the tiny base model and one SFT and one DPO dataset."""
    env = {**service_env, "FLYWHEEL_TRAINER_STATE_DIR": str(tmp_path / "trainer-state")}
    store = open_object_store(ObjectStoreSettings(backend="fs", root=Path(env["FLYWHEEL_OBJECT_STORE_ROOT"])))
    store.ensure_ready()
    local = tmp_path / "tiny-copy"
    local.mkdir()
    for f in tiny_model_dir.iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    catalog.register_base_model(store, local, TINY, "tiny random Llama for tests")
    write_dataset(store, "ds-sft0000000000001", "SFT", SFT_ROWS, validation=SFT_ROWS[:4])
    write_dataset(store, "ds-dpo0000000000001", "PREFERENCE", DPO_ROWS)
    return env


@pytest.fixture
def store_of() -> Callable[[dict[str, str]], ObjectStore]:
    def make(env: dict[str, str]) -> ObjectStore:
        return open_object_store(
            ObjectStoreSettings(backend="fs", root=Path(env["FLYWHEEL_OBJECT_STORE_ROOT"]))
        )

    return make


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def make(address: str) -> grpc.aio.Channel:
        channel = auth.channel(address)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()
