"""Gateway overhead, side by side with the stock LiteLLM proxy, in one run.

Starts, on loopback:

* an upstream that answers at once (``flywheel_testing.gateway_upstream``, aiohttp, one process);
* the stock LiteLLM proxy: ``litellm --config <cfg> --num_workers 1`` with a plain config (the
  same two routes, a master key, nothing else);
* our gateway: ``python -m flywheel_gateway serve`` (LiteLLM + our layer, one process).

Then, for 1, 50 and 200 concurrent clients (each client sends its next request when the last
one is answered; a bounded number of requests per level), it measures p50/p99 latency and
requests/s calling the upstream directly, through the stock proxy and through ours, and prints
the latency each proxy adds over direct (p50 and p99 of the proxy minus those of direct) and
the ratios the issue targets. Every request is a non-streaming chat completion of an adapter
route (``ft/bench-v1``) with the master key; every answer is checked (status 200 and the
upstream's text), so a proxy cannot look fast by failing.

    .venv/bin/python gateway/bench/bench_gateway.py            # about 2 minutes here
    .venv/bin/python gateway/bench/bench_gateway.py --quick    # smaller counts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

KEY = "sk-bench-master-key"
ADAPTER = "bench-v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process exited early:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"port {port} not open after {timeout} s:\n{log.read_text()[-3000:]}")


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


async def one_level(
    url: str, concurrency: int, total: int, headers: dict[str, str], model: str
) -> dict[str, float]:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    ).encode()
    latencies: list[float] = []
    errors = 0
    remaining = total
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as reply:
                    data = await reply.read()
                elapsed = time.perf_counter() - t0
                if reply.status != 200 or b"hello from" not in data:
                    errors += 1
                latencies.append(elapsed)

        # warm-up: open the connections and let the servers settle
        remaining = max(concurrency, 20)
        await asyncio.gather(*(client() for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        remaining = total
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "rps": len(latencies) / wall,
        "errors": errors,
        "n": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller request counts")
    parser.add_argument("--levels", default="1,50,200")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    counts = {1: 100, 50: 600, 200: 1200} if args.quick else {1: 300, 50: 1500, 200: 3000}
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    py = sys.executable
    procs: list[subprocess.Popen] = []
    try:
        up_port, stock_port, ours_port, hook_port = free_port(), free_port(), free_port(), free_port()
        up_log = work / "upstream.log"
        procs.append(
            spawn([py, "-m", "flywheel_testing.gateway_upstream", "--port", str(up_port)], {}, up_log)
        )
        wait_port(up_port, procs[-1], up_log)
        upstream = f"http://127.0.0.1:{up_port}/v1"
        # The upstream must know the adapter the benchmark calls.
        import urllib.request

        adapter_dir = work / ADAPTER
        adapter_dir.mkdir()
        (adapter_dir / "adapter_config.json").write_text("{}")
        req = urllib.request.Request(
            f"{upstream}/load_lora_adapter",
            method="POST",
            data=json.dumps({"lora_name": ADAPTER, "lora_path": str(adapter_dir)}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()

        stock_cfg = work / "stock.yaml"
        stock_cfg.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": "ft/*",
                            "litellm_params": {
                                "model": "hosted_vllm/*",
                                "api_base": upstream,
                                "api_key": "none",
                            },
                        },
                        {
                            "model_name": "gemma-3-270m",
                            "litellm_params": {
                                "model": "hosted_vllm/gemma-3-270m",
                                "api_base": upstream,
                                "api_key": "none",
                            },
                        },
                    ],
                    "general_settings": {"master_key": KEY},
                }
            )
        )
        quiet = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        stock_log = work / "stock.log"
        litellm_bin = str(Path(py).parent / "litellm")
        procs.append(
            spawn(
                [
                    litellm_bin,
                    "--config",
                    str(stock_cfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(stock_port),
                    "--num_workers",
                    "1",
                ],
                quiet,
                stock_log,
            )
        )
        ours_env = {
            **quiet,
            "FLYWHEEL_GATEWAY_MASTER_KEY": KEY,
            "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
            "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": upstream,
            "FLYWHEEL_GATEWAY_LOG_LEVEL": "warning",
        }
        ours_log, hook_log = work / "ours.log", work / "ours-hook.log"
        procs.append(
            spawn(
                [py, "-m", "flywheel_gateway", "serve"],
                {**ours_env, "FLYWHEEL_GATEWAY_PORT": str(ours_port)},
                ours_log,
            )
        )
        # The same gateway with a logging hook registered (a CustomLogger that counts): the hook runs
        # after each answer is sent, on both paths.
        procs.append(
            spawn(
                [py, "-m", "flywheel_gateway", "serve"],
                {
                    **ours_env,
                    "FLYWHEEL_GATEWAY_PORT": str(hook_port),
                    "FLYWHEEL_GATEWAY_CALLBACKS": '["flywheel_testing.gateway_callbacks.counting_logger"]',
                },
                hook_log,
            )
        )
        wait_port(stock_port, procs[1], stock_log)
        wait_port(ours_port, procs[2], ours_log)
        wait_port(hook_port, procs[3], hook_log)
        time.sleep(2)

        targets = {
            "direct": (f"{upstream}/chat/completions", {}),
            "stock": (
                f"http://127.0.0.1:{stock_port}/v1/chat/completions",
                {"Authorization": f"Bearer {KEY}"},
            ),
            "ours": (f"http://127.0.0.1:{ours_port}/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}),
            "ours+hook": (
                f"http://127.0.0.1:{hook_port}/v1/chat/completions",
                {"Authorization": f"Bearer {KEY}"},
            ),
        }
        results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in targets}
        for level in levels:
            for name, (url, headers) in targets.items():
                # Direct calls name the adapter as the model server knows it; proxies get `ft/<name>`.
                model = ADAPTER if name == "direct" else f"ft/{ADAPTER}"
                results[name][level] = asyncio.run(
                    one_level(url, level, counts.get(level, 1000), headers, model)
                )
                r = results[name][level]
                print(
                    f"  {name:6s} c={level:<3d} n={r['n']:<5d} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
                    f"{r['rps']:8.1f} req/s  errors {r['errors']}",
                    flush=True,
                )

        print("\nclients | proxy     | added p50 ms | added p99 ms | req/s | p50 ms")
        for level in levels:
            d = results["direct"][level]
            for name in ("stock", "ours", "ours+hook"):
                r = results[name][level]
                print(
                    f"{level:7d} | {name:9s} | {r['p50_ms'] - d['p50_ms']:12.2f} | {r['p99_ms'] - d['p99_ms']:12.2f} | "
                    f"{r['rps']:6.1f} | {r['p50_ms']:.1f}"
                )
            print(
                f"{level:7d} | direct    |            - |            - | {d['rps']:6.1f} | {d['p50_ms']:.1f}"
            )
        print()
        for ours in ("ours", "ours+hook"):
            if 1 in levels:
                added = results[ours][1]["p50_ms"] - results["direct"][1]["p50_ms"]
                verdict = "MET" if added <= 8 else "MISSED"
                print(
                    f"{ours}: target 1: added p50 with one client {added:.2f} ms (target <= 8 ms): {verdict}"
                )
            if 50 in levels:
                ratio = results[ours][50]["rps"] / results["stock"][50]["rps"]
                p50 = results[ours][50]["p50_ms"] / results["stock"][50]["p50_ms"]
                print(
                    f"{ours}: target 2: at 50 clients {ratio:.1f}x the stock req/s (target >= 3x): "
                    f"{'MET' if ratio >= 3 else 'MISSED'}; p50 {p50:.3f} of stock's (target <= 0.333): "
                    f"{'MET' if p50 <= 1 / 3 else 'MISSED'}"
                )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
