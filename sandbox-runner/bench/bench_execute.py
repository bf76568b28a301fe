"""Benchmark: Execute of print("hi") through gRPC vs a bare `python3 -c` subprocess, plus RunTests.

Starts the real runner (bubblewrap, cgroups, seccomp, every limit in force) as a separate process
on a free port, then measures from this process as a gRPC client:

* sequential latency (p50/p99) of Execute(print("hi")), and the same for a bare
  ``subprocess.run([python3, "-c", 'print("hi")'])``, alternating one call of each;
* throughput (runs/s) with several concurrent clients, and for bare subprocesses with one thread per
  core, in alternating phases (the machine is shared, so both must see the same load);
* CPU per run (sandbox processes from the runner's cgroup tree, the runner process with its gRPC
  server, this client); sandboxes are reused between runs (see the README's "Warm pool"), so the
  sandbox figure includes the starts of replacements, amortised;
* RunTests of a 20-test pytest file (p50 of a few runs).

Usage (from the repository root, as root):  .venv/bin/python sandbox-runner/bench/bench_execute.py
Options: --n 300 --seconds 6 --clients 8 --pytest-runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flywheel.sandbox.v1 import sandbox_pb2 as S
from flywheel.sandbox.v1 import sandbox_pb2_grpc
from flywheel_common import auth

PYTHON = "/usr/bin/python3"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def start_runner(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp / "ready.json"
    env = dict(os.environ)
    env.update(
        {
            "FLYWHEEL_SANDBOX_PORT": "0",
            "FLYWHEEL_SANDBOX_HOST": "127.0.0.1",
            "FLYWHEEL_SANDBOX_READY_FILE": str(ready),
            "FLYWHEEL_SANDBOX_LOG_LEVEL": "warning",
            "FLYWHEEL_SANDBOX_QUEUE_SIZE": "1000",
            "FLYWHEEL_OBJECT_STORE_ROOT": str(tmp / "objects"),
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_sandbox"], env=env)
    for _ in range(600):
        if ready.exists():
            port = json.loads(ready.read_text())["port"]
            return proc, f"127.0.0.1:{port}"
        if proc.poll() is not None:
            raise SystemExit(f"runner exited with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("runner did not become ready")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sandbox_cpu_s(runner_pid: int) -> float:
    """CPU time of every sandbox the runner started: its cgroup tree's `cpuacct.usage` (hierarchical,
    so runs whose cgroups were already removed still count)."""
    own = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{runner_pid}/cgroup").read_text().splitlines()
        if "cpuacct" in line.split(":", 2)[1].split(",")
    )
    base = Path("/sys/fs/cgroup/cpuacct") / own.lstrip("/")
    return (
        sum(int((t / "cpuacct.usage").read_text()) for t in base.glob(f"flywheel-sandbox-{runner_pid}-*"))
        / 1e9
    )


def bare_once() -> float:
    t = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", 'print("hi")'], capture_output=True, check=True)
    assert out.stdout == b"hi\n"
    return time.perf_counter() - t


def bare_phase(seconds: float, workers: int) -> tuple[int, float, float]:
    """(runs, elapsed s, CPU s of the bare subprocesses and of this process) for `workers` loops."""
    end = time.perf_counter() + seconds

    def loop() -> int:
        k = 0
        while time.perf_counter() < end:
            bare_once()
            k += 1
        return k

    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(lambda _: loop(), range(workers)))
    elapsed = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) + (
        s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
    )
    return done, elapsed, cpu


async def measure(
    address: str, runner_pid: int, n: int, seconds: float, clients: int, workers: int, rounds: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """Sandboxed and bare figures, interleaved so that both see the same (shared) machine load."""
    req = S.ExecuteRequest(program=S.Program(source='print("hi")'))
    async with auth.channel(address) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
        for _ in range(20):  # warm-up (connection, pool, the runner's code paths)
            await stub.Execute(req)
        lat, lat_bare = [], []
        for _ in range(n):  # alternate one sandboxed call and one bare start
            t = time.perf_counter()
            r = (await stub.Execute(req)).result
            lat.append(time.perf_counter() - t)
            assert r.status == S.EXECUTION_STATUS_OK and r.stdout == "hi\n", r
            lat_bare.append(bare_once())
            await asyncio.sleep(0.002)  # let the pool refill between sequential calls, as a real caller would
        done = errors = 0
        elapsed = 0.0
        parts = [0.0, 0.0, 0.0]
        bare_done, bare_elapsed, bare_cpu = 0, 0.0, 0.0
        for _ in range(rounds):  # alternate throughput phases too
            end = time.perf_counter() + seconds / rounds
            t0 = time.perf_counter()
            p0 = (proc_cpu_s(runner_pid), sandbox_cpu_s(runner_pid), time.process_time())

            async def loop(end: float = end) -> None:
                nonlocal done, errors
                while time.perf_counter() < end:
                    r = (await stub.Execute(req)).result
                    if r.status == S.EXECUTION_STATUS_OK:
                        done += 1
                    else:
                        errors += 1

            await asyncio.gather(*(loop() for _ in range(clients)))
            elapsed += time.perf_counter() - t0
            p1 = (proc_cpu_s(runner_pid), sandbox_cpu_s(runner_pid), time.process_time())
            parts = [acc + b - a for acc, a, b in zip(parts, p0, p1, strict=True)]
            await asyncio.sleep(0.5)  # let the pool refill before the bare phase
            d, e, c = await asyncio.to_thread(bare_phase, seconds / rounds, workers)
            bare_done, bare_elapsed, bare_cpu = bare_done + d, bare_elapsed + e, bare_cpu + c
    runner_ms, sandboxes_ms, client_ms = (x / max(1, done) * 1e3 for x in parts)
    sandboxed = {
        "runner_ms": runner_ms,
        "sandboxes_ms": sandboxes_ms,
        "client_ms": client_ms,
        "cpu_ms_per_run": runner_ms + sandboxes_ms + client_ms,
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "runs_per_s": done / elapsed,
        "errors": errors,
    }
    baseline = {
        "p50_ms": pct(lat_bare, 50) * 1e3,
        "p99_ms": pct(lat_bare, 99) * 1e3,
        "runs_per_s": bare_done / bare_elapsed,
        "cpu_ms_per_run": bare_cpu / max(1, bare_done) * 1e3,
    }
    return sandboxed, baseline


async def grpc_runtests(address: str, runs: int) -> dict[str, float]:
    tests = "from calc import add\n" + "".join(
        f"def test_{i}():\n    assert add({i}, 1) == {i + 1}\n" for i in range(20)
    )
    req = S.RunTestsRequest(
        files=[
            S.File(path="calc.py", text="def add(a, b):\n    return a + b\n"),
            S.File(path="tests/test_calc.py", text=tests),
        ],
        protected_files=[S.File(path="tests/test_calc.py", text=tests)],
    )
    lat = []
    async with auth.channel(address) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
        for _ in range(runs):
            t = time.perf_counter()
            r = await stub.RunTests(req)
            lat.append(time.perf_counter() - t)
            assert r.passed and r.passed_count == 20, r
        pytest_wall = r.execution.usage.wall_time.ToMilliseconds()
    return {"p50_ms": pct(lat, 50) * 1e3, "max_ms": max(lat) * 1e3, "pytest_wall_ms": pytest_wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pytest-runs", type=int, default=5)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_runner(Path(tmp))
        try:
            sandboxed, baseline = asyncio.run(
                measure(address, proc.pid, args.n, args.seconds, args.clients, workers=cores)
            )
            tests = asyncio.run(grpc_runtests(address, args.pytest_runs))
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"machine: {cores} cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"(other processes share the cores); sandbox python: {PYTHON}"
    )
    print(f"{'':38}{'p50 ms':>9}{'p99 ms':>9}{'runs/s':>9}")
    print(
        f"{'bare python3 -c (subprocess)':38}{baseline['p50_ms']:9.1f}{baseline['p99_ms']:9.1f}{baseline['runs_per_s']:9.0f}"
    )
    print(
        f"{'Execute print(hi) via gRPC, isolated':38}{sandboxed['p50_ms']:9.1f}{sandboxed['p99_ms']:9.1f}"
        f"{sandboxed['runs_per_s']:9.0f}"
    )
    print(
        f"ratio sandbox/bare: p50 {sandboxed['p50_ms'] / baseline['p50_ms']:.2f}x, "
        f"throughput {sandboxed['runs_per_s'] / baseline['runs_per_s']:.2f}x; "
        f"non-OK results under load: {sandboxed['errors']}"
    )
    print(
        f"CPU per run: sandboxed {sandboxed['cpu_ms_per_run']:.1f} ms (sandbox processes "
        f"{sandboxed['sandboxes_ms']:.1f} + runner {sandboxed['runner_ms']:.1f} + gRPC client {sandboxed['client_ms']:.1f}), "
        f"bare {baseline['cpu_ms_per_run']:.1f} ms -> CPU-bound capacity of {cores} idle cores: "
        f"sandboxed {cores / sandboxed['cpu_ms_per_run'] * 1e3:.0f} runs/s, "
        f"bare {cores / baseline['cpu_ms_per_run'] * 1e3:.0f} runs/s"
    )
    print(
        f"RunTests (20-test pytest file): p50 {tests['p50_ms']:.0f} ms, max {tests['max_ms']:.0f} ms "
        f"(pytest process wall {tests['pytest_wall_ms']} ms)"
    )
    print(
        f"targets: p50 <= 15 ms: {'MET' if sandboxed['p50_ms'] <= 15 else 'MISSED'}; "
        f">= 100 runs/s: {'MET' if sandboxed['runs_per_s'] >= 100 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
