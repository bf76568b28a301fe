"""Benchmark of the trajectory store on the filesystem backend, through its real gRPC API.

    .venv/bin/python services/trajectory-store/bench/bench_store.py            # 100,000 (the target)
    .venv/bin/python services/trajectory-store/bench/bench_store.py --run-size 20000

It starts a real nats-server and the store as a separate process (``python -m flywheel_trajectory``)
on temporary folders, then measures:

1. put throughput: ``--run-size`` trajectories of ~10 KB (serialized) sent through
   BatchPutTrajectories on ``--streams`` concurrent client streams; every put is durable (fsync)
   and indexed and its event published before the batch is acknowledged. Baseline in the same
   run: bare ``FilesystemObjectStore.put`` of the same bytes from 32 threads in this process —
   the floor the store's own work sits on.
2. time to first item of one run (the big one, beside a smaller second run): ListTrajectories's
   first page and ExportTrajectories's first message, median of 20.
3. export of the whole run: trajectories/s, and the store process's peak RSS during the export
   against its RSS before it (sampled every 10 ms; Linux /proc), plus the same for an export of
   a tenth of the run — constant memory means the two peaks are about equal.

Target (issue #4): >= 1,000 puts/s, first item < 200 ms for a run of 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.natsserver import NatsServerProcess
from flywheel_common.objectstore.fs import FilesystemObjectStore


def template(size: int) -> pb.Trajectory:
    """A realistic-looking trajectory of about ``size`` bytes serialized."""
    t = pb.Trajectory(id="x", run_id="run-big", attempt=0, teacher_kind=pb.TEACHER_KIND_MODEL)
    t.task.suite = "repo-bugs"
    t.task.task_id = "quixbugs/quicksort"
    t.policy.model = "ft/repo-agent-v3"
    t.policy.adapter_name = "repo-agent"
    t.policy.adapter_version = 3
    t.steps.add(index=0, role=pb.ROLE_SYSTEM, content="You are a repo-fixing agent. " * 10)
    t.steps.add(index=1, role=pb.ROLE_USER, content="GOAL: fix quicksort so the tests pass.")
    i = 2
    while t.ByteSize() < size - 400:
        a = t.steps.add(
            index=i,
            role=pb.ROLE_ASSISTANT,
            content='{"type":"tool_call","name":"read_file","args":{"rel_path":"q.py"}}',
        )
        a.tool_calls.add(id=f"call-{i}", name="read_file", arguments_json='{"rel_path":"q.py"}')
        a.usage.prompt_tokens = 1000 + i
        a.usage.completion_tokens = 30
        r = t.steps.add(
            index=i + 1, role=pb.ROLE_USER, content="[tool_result]\n" + "def quicksort(arr):\n    ...\n" * 12
        )
        r.tool_result.tool_call_id = f"call-{i}"
        r.tool_result.status = pb.TOOL_RESULT_STATUS_OK
        i += 2
    t.outcome.resolved = True
    return t


def make(tmpl: bytes, run_id: str, n: int) -> pb.Trajectory:
    t = pb.Trajectory.FromString(tmpl)
    t.id = f"{run_id}-{n:07d}"
    t.run_id = run_id
    t.attempt = n % 4
    return t


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakSampler:
    """Samples a process's RSS every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def put_all(stub, tmpl: bytes, run_id: str, count: int, streams: int, batch: int) -> float:
    """Send ``count`` trajectories of ``run_id``; returns seconds taken."""
    next_n = 0
    lock = asyncio.Lock()

    async def worker() -> None:
        nonlocal next_n
        while True:
            async with lock:
                start = next_n
                if start >= count:
                    return
                next_n = min(count, start + batch)
                end = next_n

            async def gen(a: int = start, b: int = end):
                for n in range(a, b):
                    yield pb.BatchPutTrajectoriesRequest(trajectory=make(tmpl, run_id, n))

            reply = await stub.BatchPutTrajectories(gen())
            assert not reply.errors, reply.errors[0]

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    return time.perf_counter() - began


async def first_item_ms(stub, run_id: str) -> tuple[float, float]:
    flt = pb.TrajectoryFilter(run_ids=[run_id])
    lists, exports = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        page = await stub.ListTrajectories(pb.ListTrajectoriesRequest(filter=flt, page_size=50))
        lists.append((time.perf_counter() - t0) * 1000)
        assert len(page.trajectories) == 50
        t0 = time.perf_counter()
        call = stub.ExportTrajectories(pb.ExportTrajectoriesRequest(filter=flt))
        async for _ in call:
            exports.append((time.perf_counter() - t0) * 1000)
            break
        call.cancel()
    return statistics.median(lists), statistics.median(exports)


async def export_all(stub, run_id: str, pid: int, limit: int | None = None) -> tuple[int, float, int, int]:
    flt = pb.TrajectoryFilter(run_ids=[run_id])
    before = rss_kib(pid)
    count = 0
    with PeakSampler(pid) as sampler:
        t0 = time.perf_counter()
        call = stub.ExportTrajectories(pb.ExportTrajectoriesRequest(filter=flt))
        async for _ in call:
            count += 1
            if limit is not None and count >= limit:
                call.cancel()
                break
        elapsed = time.perf_counter() - t0
    return count, elapsed, before, sampler.peak


def baseline_puts_per_s(tmpl: bytes, n: int) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        store = FilesystemObjectStore(root)
        store.ensure_ready()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: store.put(f"trajectories/b-{i}.pb", tmpl), range(n)))
        return n / (time.perf_counter() - t0)


async def measure(
    args: argparse.Namespace, tmpl: bytes, address: str, pids: dict[str, int]
) -> dict[str, object]:
    results: dict[str, object] = {}
    async with auth.channel(address) as channel:
        stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
        secs = await put_all(stub, tmpl, "run-other", args.other_size, args.streams, args.batch)
        print(
            f"run-other: {args.other_size} puts in {secs:.1f} s = {args.other_size / secs:.0f}/s", flush=True
        )
        before = {name: cpu_s(pid) for name, pid in pids.items()} | {"client": time.process_time()}
        load_before = os.getloadavg()[0]
        secs = await put_all(stub, tmpl, "run-big", args.run_size, args.streams, args.batch)
        used = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
        used["client"] = time.process_time() - before["client"]
        results["grpc_batch_puts_per_s"] = round(args.run_size / secs)
        results["put_cpu_ms_per_trajectory"] = {
            k: round(v * 1000 / args.run_size, 3) for k, v in used.items()
        }
        results["load_average_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        print(
            f"run-big: {args.run_size} puts in {secs:.1f} s = {results['grpc_batch_puts_per_s']}/s; "
            f"CPU ms per put {results['put_cpu_ms_per_trajectory']}; load average {results['load_average_1m']}",
            flush=True,
        )
        list_ms, export_ms = await first_item_ms(stub, "run-big")
        results["first_page_ms_list"] = round(list_ms, 1)
        results["first_item_ms_export"] = round(export_ms, 1)
        print(
            f"first item of run-big ({args.run_size}): list {list_ms:.1f} ms, export {export_ms:.1f} ms",
            flush=True,
        )
        tenth = max(1, args.run_size // 10)
        n, secs, before_kib, peak = await export_all(stub, "run-big", pids["store"], limit=tenth)
        results["export_tenth"] = {
            "count": n,
            "rss_before_mib": before_kib // 1024,
            "peak_rss_mib": peak // 1024,
        }
        print(
            f"export {n}: {n / secs:.0f}/s, store RSS {before_kib // 1024} MiB before, peak {peak // 1024} MiB",
            flush=True,
        )
        n, secs, before_kib, peak = await export_all(stub, "run-big", pids["store"])
        assert n == args.run_size, n
        results["export_all"] = {
            "count": n,
            "per_s": round(n / secs),
            "rss_before_mib": before_kib // 1024,
            "peak_rss_mib": peak // 1024,
        }
        print(
            f"export {n}: {n / secs:.0f}/s, store RSS {before_kib // 1024} MiB before, peak {peak // 1024} MiB",
            flush=True,
        )
        # Again: a peak that does not grow on a second full export means nothing accumulates.
        n, secs, before_kib, peak = await export_all(stub, "run-big", pids["store"])
        results["export_all_again"] = {
            "count": n,
            "rss_before_mib": before_kib // 1024,
            "peak_rss_mib": peak // 1024,
        }
        print(
            f"export {n} again: store RSS {before_kib // 1024} MiB before, peak {peak // 1024} MiB",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-size", type=int, default=100_000, help="trajectories in the big run")
    parser.add_argument("--other-size", type=int, default=5_000, help="trajectories in a second run")
    parser.add_argument("--bytes", type=int, default=10_000, help="serialized size of one trajectory")
    parser.add_argument("--streams", type=int, default=4, help="concurrent BatchPut streams")
    parser.add_argument("--batch", type=int, default=500, help="trajectories per BatchPut call")
    parser.add_argument("--write-processes", type=int, default=2, help="FLYWHEEL_TRAJECTORY_WRITE_PROCESSES")
    args = parser.parse_args()

    tmpl = template(args.bytes).SerializeToString()
    work = Path(tempfile.mkdtemp(prefix="traj-bench-", dir=os.environ.get("BENCH_DIR")))
    nats = NatsServerProcess(store_dir=work / "nats", log_file=work / "nats.log")
    nats.start()
    ready = work / "ready.json"
    env = {
        **os.environ,
        "FLYWHEEL_NATS_URL": nats.url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(work / "objects"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(work / "index"),
        "FLYWHEEL_TRAJECTORY_HOST": "127.0.0.1",
        "FLYWHEEL_TRAJECTORY_PORT": "0",
        "FLYWHEEL_TRAJECTORY_READY_FILE": str(ready),
        "FLYWHEEL_TRAJECTORY_LOG_LEVEL": "warning",
        "FLYWHEEL_TRAJECTORY_WRITE_PROCESSES": str(args.write_processes),
    }
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trajectory"], env=env)
    results: dict[str, object] = {
        "trajectory_bytes": len(tmpl),
        "run_size": args.run_size,
        "cores": os.cpu_count(),
    }
    try:
        while not ready.exists():
            assert proc.poll() is None, "the store did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        results["baseline_fs_puts_per_s"] = round(baseline_puts_per_s(tmpl, 3000))
        print(
            f"trajectory size {len(tmpl)} bytes; baseline bare fs put (32 threads): {results['baseline_fs_puts_per_s']}/s",
            flush=True,
        )
        pids = {"store": proc.pid, "nats": nats.pid or 0}
        for i, child in enumerate(children(proc.pid)):
            pids[f"writer{i}"] = child
        results.update(asyncio.run(measure(args, tmpl, address, pids)))
        results["ratio_to_bare_fs_put"] = round(
            results["grpc_batch_puts_per_s"] / results["baseline_fs_puts_per_s"], 2
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
