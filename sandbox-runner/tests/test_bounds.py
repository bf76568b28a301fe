"""Bounded work in the runner: no single request stalls its event loop or swells its memory.

The runner runs as its own process here (``python -m flywheel_sandbox``, every limit in force), so
its memory can be read from ``/proc/<pid>/status`` apart from the test's own (the bombs are built
in the test process), and its health checks are answered by its own event loop. During every
request a health poller calls ``grpc.health.v1.Health/Check`` in a loop; each answer must come
within a second.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2 as S
from flywheel.sandbox.v1 import sandbox_pb2_grpc
from flywheel_common import auth
from flywheel_common.errors import InvalidArgument
from flywheel_sandbox.workspace import FileCaps, extract_archive, max_archive_bytes
from flywheel_testing.processes import start_module

MiB = 1024 * 1024
HEALTH_BOUND_S = 1.0  # what the issue asks of the health check under any single request
RSS_GROWTH_BOUND = 300 * MiB
T = TypeVar("T")


@dataclass
class Runner:
    address: str
    pid: int
    objects: Path


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    root = tmp_path_factory.mktemp("bounds")
    env = {
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"),
        "FLYWHEEL_SANDBOX_MAX_CONCURRENCY": "2",
    }
    proc, info, _log = start_module("flywheel_sandbox", "FLYWHEEL_SANDBOX_", env, root)
    try:
        yield Runner(f"127.0.0.1:{info['port']}", proc.pid, root / "objects")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class Memory:
    """The runner's peak resident memory over one request, relative to its memory before it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS (Linux >= 4.0).
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.before = _status_kib(pid, "VmRSS") * 1024

    def growth(self) -> int:
        return _status_kib(self.pid, "VmHWM") * 1024 - self.before


async def with_health_polling(address: str, call: Awaitable[T]) -> tuple[T | BaseException, float, int]:
    """Runs ``call`` while polling the runner's health; returns its result (or error), the slowest
    health answer in seconds and the number of answers."""
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    slowest, polls = 0.0, 0
    async with auth.channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            started = time.monotonic()
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            slowest = max(slowest, time.monotonic() - started)
            polls += 1
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            if task.done():
                break
            await asyncio.wait([task], timeout=0.05)  # the polling interval, not a synchronisation
    try:
        return task.result(), slowest, polls
    except Exception as err:
        return err, slowest, polls


# --- Judge with a long wrong output ----------------------------------------------------------------

LINES = 200_000
# Three numbers per line: about 3.7 MB of output for 200,000 lines. "wrong-order" prints the right
# lines in the wrong order (odd ones first): the shape that makes difflib quadratic on whole outputs
# (8,000 lines took 3.3 s there, 200,000 would take most of an hour).
PROGRAM = f"""
import sys
mode = input()
lines = [f"{{i}} {{i * i}} {{i * 7}}\\n" for i in range({LINES})]
if mode == "wrong-order":
    lines = lines[1::2] + lines[::2]
else:
    lines[-1] = "the last line is wrong\\n"
sys.stdout.write("".join(lines))
"""
EXPECTED = "".join(f"{i} {i * i} {i * 7}\n" for i in range(LINES))


async def test_judge_long_wrong_output_answers_quickly_and_health_keeps_answering(runner: Runner) -> None:
    request = S.JudgeRequest(
        program=S.Program(source=PROGRAM),
        cases=[
            S.JudgeCase(input="wrong-order", expected_output=EXPECTED),
            S.JudgeCase(input="last-line-wrong", expected_output=EXPECTED),
        ],
        limits=S.Limits(output_bytes=16 * MiB),
    )
    assert len(EXPECTED) > 3 * MiB
    async with auth.channel(runner.address) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
        started = time.monotonic()
        reply, slowest, polls = await with_health_polling(runner.address, stub.Judge(request, timeout=300))
        elapsed = time.monotonic() - started
    assert isinstance(reply, S.JudgeResponse), reply
    assert [c.verdict for c in reply.cases] == [S.VERDICT_WRONG_ANSWER, S.VERDICT_WRONG_ANSWER]
    # The judge's own work: the call minus the programs' runs (both cases run at once).
    program_s = max(
        c.execution.usage.queue_time.ToNanoseconds() / 1e9 + c.execution.usage.wall_time.ToNanoseconds() / 1e9
        for c in reply.cases
    )
    print(
        f"judge: call {elapsed:.2f} s, programs {program_s:.2f} s, health slowest {slowest:.3f} s ({polls} polls)"
    )
    assert elapsed - program_s < 2.0, (elapsed, program_s)
    assert slowest < HEALTH_BOUND_S and polls >= 2, (slowest, polls)

    everywhere, at_the_end = reply.cases[0].diff.splitlines(), reply.cases[1].diff.splitlines()
    for diff in (everywhere, at_the_end):
        assert len(diff) <= 20 and all(len(line) <= 200 for line in diff), diff
        assert diff[0] == f"--- expected ({LINES} lines)"
    assert everywhere[2].startswith("@@ -1,") and everywhere[3:6] == ["-0 0 0", " 1 1 7", "-2 4 14"]
    # A difference on the very last line is found, and shown with its real line number.
    assert at_the_end[2].startswith(f"@@ -{LINES - 1},") and "+the last line is wrong" in at_the_end
    # The response keeps a bounded share of each output, never the whole few MB.
    for case, first in zip(reply.cases, ("1 1 7\n", "0 0 0\n"), strict=True):
        assert case.execution.stdout_truncated and 1024 <= len(case.execution.stdout) <= 64 * 1024
        assert case.execution.stdout.startswith(first)


# --- archive bombs ------------------------------------------------------------------------------

ZEROS_1M = bytes(MiB)
GZ_ZEROS_1M = gzip.compress(ZEROS_1M, 9)  # ~1 KB; gzip members may be concatenated


def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_gz(members: list[tuple[str, int]], *, dirs: int = 0) -> bytes:
    """A tar.gz of members made of zeros, each ``(name, size in MiB)``, built as concatenated gzip
    members so that gigabytes of content take a few KB and no compression time."""
    parts = [gzip.compress(_tar_header(f"d{i}/", 0, tarfile.DIRTYPE)) for i in range(dirs)]
    for name, mib in members:
        parts.append(gzip.compress(_tar_header(name, mib * MiB)))
        parts.extend([GZ_ZEROS_1M] * mib)
    parts.append(gzip.compress(bytes(1024)))  # end-of-archive blocks
    return b"".join(parts)


def zip_of(members: list[tuple[str, int]], *, empties: int = 0) -> bytes:
    """A zip of deflated members made of zeros, each ``(name, size in MiB)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, mib in members:
            with zf.open(name, "w", force_zip64=mib >= 2048) as out:
                for _ in range(mib):
                    out.write(ZEROS_1M)
        for i in range(empties):
            zf.writestr(f"e/{i}.txt", b"")
    return buf.getvalue()


def lying_zip(real_mib: int) -> bytes:
    """A zip whose only member says it is 1 KiB but whose data inflates to ``real_mib`` MiB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("small.txt", "w") as out:
            for _ in range(real_mib):
                out.write(ZEROS_1M)
    blob = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as zf:
        local = zf.infolist()[0].header_offset
    central = blob.rfind(b"PK\x01\x02")
    # The uncompressed size: offset 22 of the local header, 24 of the central-directory record.
    struct.pack_into("<L", blob, local + 22, 1024)
    struct.pack_into("<L", blob, central + 24, 1024)
    return bytes(blob)


BOMBS = {
    # key: (archive, what the error names)
    "one-huge-member.tar.gz": (lambda: tar_gz([("big.bin", 1024)]), ["'big.bin'", "max_file_bytes"]),
    "many-members.tar.gz": (
        lambda: tar_gz([(f"part{i}.bin", 8) for i in range(128)]),  # 1 GiB in 8 MiB members
        ["'part", "max_request_bytes"],
    ),
    "many-folders.tgz": (lambda: tar_gz([], dirs=5000), ["entries", "1000 files"]),
    "one-huge-member.zip": (lambda: zip_of([("big.bin", 256)]), ["'big.bin'", "max_file_bytes"]),
    "many-members.zip": (
        lambda: zip_of([(f"part{i}.bin", 8) for i in range(64)]),  # 512 MiB in 8 MiB members
        ["'part", "max_request_bytes"],
    ),
    "many-entries.zip": (lambda: zip_of([], empties=20_000), ["entries", "1000 files"]),
    "lying-sizes.zip": (lambda: lying_zip(64), ["small.txt"]),
}


@pytest.mark.parametrize("key", list(BOMBS))
async def test_archive_bomb_is_refused_with_bounded_memory(runner: Runner, key: str) -> None:
    build, named = BOMBS[key]
    blob = build()
    assert len(blob) < 4 * MiB  # a small upload…
    path = runner.objects / "bombs" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    request = S.RunTestsRequest(archive=common_pb2.ObjectRef(key=f"bombs/{key}"), targets=["tests"])
    async with auth.channel(runner.address) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
        memory = Memory(runner.pid)
        err, slowest, _ = await with_health_polling(runner.address, stub.RunTests(request, timeout=120))
        growth = memory.growth()
    print(f"{key}: {len(blob)} bytes, RSS growth {growth / MiB:.1f} MiB, health slowest {slowest:.3f} s")
    assert isinstance(err, grpc.aio.AioRpcError), err
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("archive") and all(word in details for word in named), details
    assert growth < RSS_GROWTH_BOUND, f"runner RSS grew by {growth / MiB:.0f} MiB"
    assert slowest < HEALTH_BOUND_S, slowest


async def test_archive_within_the_caps_still_extracts(runner: Runner) -> None:
    """Seven MiB of zeros in one file is allowed (the per-file cap is 8 MiB): limits, not zeros."""
    tests = b"def test_size():\n    import os\n    assert os.path.getsize('data.bin') == 7 * 1024 * 1024\n"
    blob = tar_gz([("data.bin", 7)])
    # Insert the test file as the first member of the stream.
    info = tarfile.TarInfo("tests/test_data.py")
    info.size = len(tests)
    head = info.tobuf(format=tarfile.GNU_FORMAT) + tests + bytes(-len(tests) % 512)
    blob = gzip.compress(head) + blob
    (runner.objects / "ok").mkdir(parents=True, exist_ok=True)
    (runner.objects / "ok" / "data.tar.gz").write_bytes(blob)
    request = S.RunTestsRequest(archive=common_pb2.ObjectRef(key="ok/data.tar.gz"), targets=["tests"])
    async with auth.channel(runner.address) as channel:
        reply = await sandbox_pb2_grpc.SandboxServiceStub(channel).RunTests(request, timeout=120)
    assert reply.passed and reply.passed_count == 1, (reply.findings, reply.execution.stdout[-2000:])


# --- extraction rules without the service (small caps) -------------------------------------------

CAPS = FileCaps(max_files=10, max_file_bytes=1000, max_request_bytes=3000)


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for info in entries:
            payload = data.get(info.name, b"")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("mode", "key"), [("w", "a.tar"), ("w:gz", "a.tgz"), ("w:bz2", "a.tar"), ("w:xz", "a.tar")]
)
def test_tar_formats_extract(mode: str, key: str) -> None:
    blob = _tar(
        [_info("pkg/", tarfile.DIRTYPE), _info("pkg/run.sh", mode=0o755), _info("./pkg/a.py")],
        {"pkg/run.sh": b"echo hi\n", "./pkg/a.py": b"x = 1\n"},
        mode,
    )
    files = {f.path: f for f in extract_archive("archive", key, blob, CAPS)}
    assert set(files) == {"pkg/run.sh", "pkg/a.py"}
    assert files["pkg/run.sh"].executable and not files["pkg/a.py"].executable
    assert files["pkg/a.py"].data == b"x = 1\n"


def test_zip_extracts_with_modes() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        script = zipfile.ZipInfo("bin/run.sh")
        script.external_attr = 0o100755 << 16
        zf.writestr(script, b"echo hi\n")
        zf.writestr("a.py", b"x = 1\n")
        zf.writestr("folder/", b"")
    files = {f.path: f for f in extract_archive("archive", "a.zip", buf.getvalue(), CAPS)}
    assert set(files) == {"bin/run.sh", "a.py"} and files["bin/run.sh"].executable


def _refused(key: str, blob: bytes, *words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        extract_archive("archive", key, blob, CAPS)
    message = str(err.value)
    assert message.startswith("archive") and all(w in message for w in words), message


def test_extraction_refusals() -> None:
    _refused("l.tar", _tar([_info("evil", tarfile.SYMTYPE)], {}, "w"), "'evil'", "link")
    _refused("d.tar", _tar([_info("dev", tarfile.CHRTYPE)], {}, "w"), "'dev'", "special")
    _refused("e.tgz", _tar([_info("../escape.py")], {"../escape.py": b"x"}), "'../escape.py'", "'..'")
    _refused("a.tgz", _tar([_info("/abs.py")], {"/abs.py": b"x"}), "absolute")
    _refused("big.tgz", _tar([_info("big")], {"big": bytes(1001)}), "'big'", "1001 bytes", "1000")
    many = [_info(f"f{i}") for i in range(11)]
    _refused("n.tgz", _tar(many, {}), "more than 10 files")
    total = [_info(f"f{i}") for i in range(4)]
    _refused("t.tgz", _tar(total, {f"f{i}": bytes(900) for i in range(4)}), "'f3'", "3000 bytes in all")
    name = b"caf\xe9.py".decode("utf-8", "surrogateescape")  # a Latin-1 name, not UTF-8
    _refused("u.tar", _tar([_info(name)], {}, "w"), "not valid UTF-8")
    _refused("x.rar", b"Rar!", "not a .tar")
    _refused("broken.tgz", b"\x1f\x8b garbage", "not a readable archive")
    _refused("huge.tar", bytes(max_archive_bytes(CAPS) + 1), "larger than any archive")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    _refused("l.zip", buf.getvalue(), "'link'", "symlink")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        fifo = zipfile.ZipInfo("fifo")
        fifo.external_attr = 0o010644 << 16
        zf.writestr(fifo, "")
    _refused("f.zip", buf.getvalue(), "'fifo'", "special")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.py", b"x")
    # An unknown compression method (99 is AES in WinZip's scheme): refused, not a crash.
    patched = buf.getvalue().replace(
        b"PK\x03\x04\x14\x00\x00\x00\x00\x00", b"PK\x03\x04\x14\x00\x00\x00\x63\x00"
    )
    patched = patched.replace(
        b"PK\x01\x02\x14\x03\x14\x00\x00\x00\x00\x00", b"PK\x01\x02\x14\x03\x14\x00\x00\x00\x63\x00"
    )
    _refused("m.zip", patched, "not a readable archive")


def test_zip_bomb_ratio_is_bounded() -> None:
    """Past RATIO_FREE_BYTES, an archive may not expand more than MAX_COMPRESSION_RATIO-fold."""
    caps = FileCaps(max_files=100, max_file_bytes=64 * MiB, max_request_bytes=512 * MiB)
    blob = zip_of([(f"z{i}", 8) for i in range(4)])
    with pytest.raises(InvalidArgument, match="expands more than 200-fold"):
        extract_archive("archive", "z.zip", blob, caps)
    with pytest.raises(InvalidArgument, match="expands more than 200-fold"):
        extract_archive("archive", "z.tgz", tar_gz([(f"z{i}", 8) for i in range(4)]), caps)
