"""An RL loop on a GPU machine, through the real services: SFT warm start on reference
demonstrations, then GRPO iterations of Gemma 3 270M on `io-problems` TRAIN, evaluated on TEST
against the base and the SFT-only adapter (issue 17's GPU run).

The borrowed GPU machine has no LiteLLM, so the gateway's proxy does not run: the orchestrator
calls the model server's OpenAI API directly (the same API the gateway's fast path forwards to,
adapter names without the `ft/` prefix) and adapter sync runs alone (`flywheel_gateway
adapter-sync`, its probe through the gateway off). Everything else is the product: NATS, the
sandbox runner, trajectory store, dataset builder, trainer (GRPO on the GPU), orchestrator and the
model server (bfloat16 on the GPU).

A loop outlives one 10-minute device command, so the script has two verbs:

    python rl_gpu.py start --state /root/rl --base gemma-3-270m [--iterations 10 --samples 8 …]
    python rl_gpu.py watch --state /root/rl --out $OUT --for 540

`start` starts every service in its own session (they outlive the command), registers the base
model (the packaged GGUF, or `--base tiny` for a smoke test) and creates the loop; `watch` follows
it, prints each iteration, and when the loop ends writes its JSON, report, plot, the evaluation
and a summary (rollout episodes per minute, GRPO tokens/s) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flywheel_common import auth

BUNDLED_SUITE = "io-problems"
LOG = "rl_gpu"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout_s} s")


def start_service(
    module: str, prefix: str, env: dict[str, str], state: Path, *args: str
) -> tuple[subprocess.Popen, dict]:
    """Start ``python -m module`` in its own session (it outlives this command) and wait for its
    ready file."""
    from flywheel_common.server import ready_file_info

    ready = state / "run" / f"{module}.ready"
    log = state / "logs" / f"{module}.log"
    ready.unlink(missing_ok=True)
    full = {
        **os.environ,
        **env,
        f"{prefix}PORT": "0",
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}READY_FILE": str(ready),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], env=full, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        info = ready_file_info(ready)
        if info is not None:
            say(f"{module} ready on port {info['port']}")
            return proc, info
        if proc.poll() is not None:
            raise SystemExit(f"{module} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    raise SystemExit(f"{module} not ready after 600 s:\n{log.read_text()[-4000:]}")


def wait_served(model_server: str, model: str, timeout_s: float = 300) -> None:
    """Until the model server lists ``model`` (adapter sync loads published adapters at start)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{model_server}/v1/models", headers=auth.http_headers())
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if any(m["id"] == model for m in json.load(response)["data"]):
                    say(f"{model} is served")
                    return
        except urllib.error.HTTPError as err:  # 503 while the base model loads
            if err.code != 503:
                raise
        time.sleep(2)
    raise SystemExit(f"{model} not served after {timeout_s:.0f} s")


def sandbox_isolation_works(env: dict[str, str], state: Path) -> bool:
    """Start the sandbox runner isolated once; False when a mechanism is missing here."""
    try:
        proc, _ = start_service("flywheel_sandbox", "FLYWHEEL_SANDBOX_", env, state)
    except SystemExit as err:
        say(f"isolated sandbox did not start here: {str(err)[-600:]}")
        return False
    proc.terminate()
    proc.wait(30)
    return True


def register_base(base: str, state: Path, env: dict[str, str]) -> None:
    os.environ.update(env)
    if base == "tiny":
        from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
        from flywheel_orchestrator.protocol import IO_JSON_SYSTEM
        from flywheel_testing.stack import long_context
        from flywheel_testing.trainer import build_tiny_model
        from flywheel_trainer.catalog import register_base_model

        folder = build_tiny_model(state / "tiny", [IO_JSON_SYSTEM, '{"type":"final","code":"print(1)"}'] * 8,
                                  with_template=True)  # fmt: skip
        long_context(folder)
        store = open_object_store(ObjectStoreSettings(backend="fs", root=state / "objects"))
        store.ensure_ready()
        register_base_model(store, folder, "tiny", "tiny smoke-test model")
        return
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "flywheel_trainer.gguf_import", "--name", base], check=True,
                   env={**os.environ, **env})  # fmt: skip
    say(f"registered {base} in {time.monotonic() - started:.0f} s")


def tasks(split: int, n: int) -> list[str]:
    from flywheel_orchestrator.suites import SuiteCatalog

    catalog = SuiteCatalog()
    catalog.reload()
    suite = catalog.get(BUNDLED_SUITE)
    assert suite is not None
    ids = sorted(t.id for t in suite.tasks.values() if t.split == split)
    return ids[:n] if n else ids


def warm_start_tasks(a: argparse.Namespace) -> list[str]:
    """The warm start's TRAIN tasks: all of them, or only those the rollouts do not play (so that
    what GRPO gains on its tasks is not the warm start's memory of their reference answers)."""
    from flywheel.common.v1 import common_pb2

    every = tasks(common_pb2.TASK_SPLIT_TRAIN, 0)
    played = set(tasks(common_pb2.TASK_SPLIT_TRAIN, a.train_tasks))
    return every if a.sft_on == "all" or len(played) == len(every) else [t for t in every if t not in played]


def make_loop(a: argparse.Namespace) -> Any:
    from flywheel.common.v1 import common_pb2
    from flywheel.orchestrator.v1 import loop_pb2 as lpb
    from flywheel.orchestrator.v1 import run_pb2
    from flywheel.trainer.v1 import trainer_pb2 as trpb

    return lpb.Loop(
        kind=lpb.LOOP_KIND_RL,
        suite=BUNDLED_SUITE,
        base_model=a.base,
        adapter_name=a.adapter_name,
        train_task_ids=tasks(common_pb2.TASK_SPLIT_TRAIN, a.train_tasks),
        test_task_ids=tasks(common_pb2.TASK_SPLIT_TEST, a.test_tasks),
        episode=run_pb2.EpisodeSettings(
            protocol=common_pb2.TOOL_PROTOCOL_JSON,
            limits=run_pb2.EpisodeLimits(max_iterations=a.max_turns, max_consecutive_parse_errors=2),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=a.max_tokens, stop=["\n\n"]),
        ),
        concurrency=a.concurrency,
        eval_rollouts_per_task=1,
        rl=lpb.RlLoopConfig(
            iterations=a.iterations,
            samples_per_task=a.samples,
            eval_every=a.eval_every,
            sft_warm_start=not a.init_adapter,
            sft_task_ids=[] if a.init_adapter else warm_start_tasks(a),
            init_adapter=a.init_adapter,
            temperature=a.temperature,
            sft_hyperparameters=trpb.Hyperparameters(
                epochs=a.sft_epochs,
                learning_rate=a.sft_lr,
                batch_size=a.sft_batch,
                max_seq_length=a.max_seq_length,
                lora=trpb.LoraConfig(rank=16, alpha=32),
            ),
        ),
        hyperparameters=trpb.Hyperparameters(
            learning_rate=a.lr,
            batch_size=16,
            max_seq_length=a.max_seq_length,
            lora=trpb.LoraConfig(rank=16, alpha=32),
            grpo=trpb.GrpoConfig(kl_beta=a.kl_beta),
        ),
        gate=lpb.PromotionGate(metric=lpb.GATE_METRIC_PASS_RATE, margin=0.0),
        labels={"source": "rl_gpu"},
    )


def start(a: argparse.Namespace) -> None:
    state = Path(a.state)
    for sub in ("run", "logs", "objects"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    from flywheel_common.natsserver import find_nats_server_binary

    # The real nats-server, in a session of its own so that it outlives this command.
    port = free_port()
    with open(state / "logs" / "nats.log", "ab") as out:
        nats = subprocess.Popen([str(find_nats_server_binary()), "-js", "-sd", str(state / "nats"), "-a", "127.0.0.1",
                          "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"nats://127.0.0.1:{port}"
    wait_port(port)
    (state / "run" / "nats.pid").write_text(str(nats.pid))
    # Every service checks this token; the services and this script's clients share it.
    token_file = state / "service-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32))
    os.environ[auth.TOKEN_VARIABLE] = token_file.read_text().strip()
    env = {
        auth.TOKEN_VARIABLE: os.environ[auth.TOKEN_VARIABLE],
        "FLYWHEEL_NATS_URL": url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(state / "objects"),
        "FLYWHEEL_LOG_FORMAT": "text",
        "FLYWHEEL_TRAINER_STATE_DIR": str(state / "trainer"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(state / "index"),
        "FLYWHEEL_DATASET_DEFAULT_BASE_MODEL": a.base,
        "FLYWHEEL_MODEL_SERVER_BASE_MODEL": a.base,
        "FLYWHEEL_MODEL_SERVER_DEVICE": a.device,
        "FLYWHEEL_MODEL_SERVER_DTYPE": "bfloat16" if a.device == "cuda" else "float32",
        "FLYWHEEL_MODEL_SERVER_CACHE_DIR": str(state / "model-cache"),
        "FLYWHEEL_MODEL_SERVER_MAX_BATCH_SIZE": str(a.concurrency),
        "FLYWHEEL_MODEL_SERVER_MAX_QUEUED_REQUESTS": "512",
    }
    if (state / "objects" / "base-models" / a.base).is_dir():
        say(f"base model {a.base} already registered in {state / 'objects'}")
    else:
        register_base(a.base, state, env)
    unsafe = a.unsafe_sandbox == "yes" or (
        a.unsafe_sandbox == "auto" and not sandbox_isolation_works(env, state)
    )
    if unsafe:
        env["FLYWHEEL_SANDBOX_UNSAFE_LOCAL"] = "true"
    procs = {}
    pids: list[int] = []
    for module, prefix in (
        ("flywheel_sandbox", "FLYWHEEL_SANDBOX_"),
        ("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_"),
        ("flywheel_dataset", "FLYWHEEL_DATASET_"),
        ("flywheel_trainer", "FLYWHEEL_TRAINER_"),
        ("flywheel_model_server", "FLYWHEEL_MODEL_SERVER_"),
    ):
        proc, procs[module] = start_service(module, prefix, env, state)
        pids.append(proc.pid)
        if module == "flywheel_trajectory":  # what the builder (and the rest) read trajectories from
            env["FLYWHEEL_TRAJECTORY_ADDRESS"] = f"127.0.0.1:{procs[module]['port']}"
    ms = f"http://127.0.0.1:{procs['flywheel_model_server']['port']}"
    sync_env = {**env, "FLYWHEEL_ADAPTER_SYNC_REPLICAS": json.dumps([ms]), "FLYWHEEL_ADAPTER_SYNC_PROBE": "false",
                "FLYWHEEL_ADAPTER_SYNC_ADAPTER_DIR": str(state / "adapters"), "FLYWHEEL_GATEWAY_ADAPTER_PREFIX": ""}  # fmt: skip
    with open(state / "logs" / "adapter-sync.log", "ab") as out:
        sync = subprocess.Popen([sys.executable, "-m", "flywheel_gateway", "adapter-sync"], env={**os.environ, **sync_env},
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    orch_env = {
        **env,
        "FLYWHEEL_ORCHESTRATOR_GATEWAY_BASE_URL": f"{ms}/v1",
        "FLYWHEEL_ORCHESTRATOR_ADAPTER_ROUTE_PREFIX": "",
        "FLYWHEEL_ORCHESTRATOR_SANDBOX_ADDRESS": f"127.0.0.1:{procs['flywheel_sandbox']['port']}",
        "FLYWHEEL_ORCHESTRATOR_TRAJECTORY_ADDRESS": f"127.0.0.1:{procs['flywheel_trajectory']['port']}",
        "FLYWHEEL_ORCHESTRATOR_DATASET_ADDRESS": f"127.0.0.1:{procs['flywheel_dataset']['port']}",
        "FLYWHEEL_ORCHESTRATOR_TRAINER_ADDRESS": f"127.0.0.1:{procs['flywheel_trainer']['port']}",
        "FLYWHEEL_ORCHESTRATOR_LOOP_HOT_LOAD_POLL_S": "2",
        "FLYWHEEL_ORCHESTRATOR_MAX_CONCURRENCY": str(a.concurrency),
        "FLYWHEEL_ORCHESTRATOR_MODEL_TIMEOUT_S": str(a.model_timeout),
    }
    # The trajectory store's and dataset builder's own clients of the other services.
    pids.append(sync.pid)
    proc, orch = start_service("flywheel_orchestrator", "FLYWHEEL_ORCHESTRATOR_", orch_env, state)
    pids.append(proc.pid)
    address = f"127.0.0.1:{orch['port']}"

    from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
    from flywheel.orchestrator.v1 import orchestrator_pb2_grpc

    # Written before the loop is created, so that `stop` finds every process even if creating fails.
    info = {"pids": pids, "orchestrator": address, "model_server": ms, "unsafe_sandbox": unsafe,
            "started": time.time(), "args": vars(a), "nats": url}  # fmt: skip
    (state / "rl_gpu.json").write_text(json.dumps(info, indent=2))
    if a.init_adapter:
        wait_served(ms, a.init_adapter.replace("/v", "-v"))
    loop = make_loop(a)
    with auth.sync_channel(address) as ch:
        created = (
            orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            .CreateLoop(opb.CreateLoopRequest(loop=loop, request_id=f"rl-gpu-{a.adapter_name}"), timeout=60)
            .loop
        )
    info["loop_id"] = created.id
    (state / "rl_gpu.json").write_text(json.dumps(info, indent=2))
    say(f"loop {created.id} created: {len(loop.train_task_ids)} train tasks x {a.samples}, "
        f"{a.iterations} iterations, unsafe sandbox: {unsafe}")  # fmt: skip


def watch(a: argparse.Namespace) -> None:
    from google.protobuf import json_format

    from flywheel.common.v1 import common_pb2
    from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
    from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
    from flywheel_cli.loops import iteration_line, stage_name

    state = Path(a.state)
    info = json.loads((state / "rl_gpu.json").read_text())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.for_s
    shown: dict[int, str] = {}
    os.environ[auth.TOKEN_VARIABLE] = (state / "service-token").read_text().strip()
    with auth.sync_channel(info["orchestrator"]) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        while True:
            loop = stub.GetLoop(opb.GetLoopRequest(loop_id=info["loop_id"]), timeout=30).loop
            for it in loop.iterations:
                line = iteration_line(it)
                if shown.get(it.index) != line:
                    shown[it.index] = line
                    say(line)
            terminal = loop.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED,
                                      common_pb2.JOB_STATE_CANCELLED)  # fmt: skip
            if terminal or time.monotonic() > deadline:
                break
            time.sleep(5)
        say(f"loop {loop.id}: {common_pb2.JobState.Name(loop.state)} at {stage_name(loop.stage)} "
            f"{loop.error.message}")  # fmt: skip
        (out / "loop.json").write_text(json_format.MessageToJson(loop, preserving_proto_field_name=True))
        summary: dict[str, Any] = {"state": common_pb2.JobState.Name(loop.state), "error": loop.error.message,
                                   "elapsed_s": time.time() - info["started"], "unsafe_sandbox": info["unsafe_sandbox"],
                                   "iterations": []}  # fmt: skip
        for it in loop.iterations:
            run = stub.GetRun(opb.GetRunRequest(run_id=it.run_id), timeout=30).run
            secs = (
                (run.end_time.ToNanoseconds() - run.start_time.ToNanoseconds()) / 1e9
                if run.end_time.seconds
                else 0
            )
            summary["iterations"].append({
                "index": it.index, "policy": it.policy_model, "episodes": it.episodes, "masked": it.masked_episodes,
                "reward_mean": it.reward_mean, "reward_std": it.reward_std, "train_pass_rate": it.train_pass_rate,
                "parse_errors": run.counters.parse_errors, "steps": run.counters.steps,
                "episodes_per_min": 60 * it.episodes / secs if secs else None,
                "grpo_tokens_per_s": it.train_metrics.tokens_per_second, "kl": it.train_metrics.extra.get("kl"),
                "clip": it.train_metrics.extra.get("clip_ratio/region_mean"),
                "entropy": it.train_metrics.extra.get("entropy"),
                "eval_pass_rate": it.eval_pass_rate if it.HasField("eval_pass_rate") else None,
            })  # fmt: skip
            if it.evaluation_id:
                e = stub.GetEvaluation(
                    opb.GetEvaluationRequest(evaluation_id=it.evaluation_id), timeout=30
                ).evaluation
                (out / f"eval-{it.index}.json").write_text(
                    json_format.MessageToJson(e, preserving_proto_field_name=True)
                )
                summary.setdefault("evaluations", {})[it.index] = {
                    m.model: {"pass_rate": m.pass_rate, "parse_errors_per_episode": m.parse_errors_per_episode,
                              "episodes": m.episodes} for m in e.model_metrics
                }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_samples(state, out / "samples.txt")
    for name in ("loop.md", "rl.png"):
        path = state / "objects" / "reports" / loop.id / name
        if path.exists():
            (out / name).write_bytes(path.read_bytes())
    print(json.dumps(summary, indent=1)[:6000])


def write_samples(state: Path, path: Path, per_file: int = 3, limit: int = 24) -> None:
    """The newest trajectories' assistant turns and feedback, to read what the policy wrote."""
    from flywheel.trajectory.v1 import trajectory_pb2

    files = sorted((state / "objects" / "trajectories").glob("*.pb"), key=lambda f: f.stat().st_mtime)[
        -limit:
    ]
    lines: list[str] = []
    for f in files:
        t = trajectory_pb2.Trajectory.FromString(f.read_bytes())
        lines.append(f"=== {f.name} task {t.task.task_id} policy {t.policy.model}")
        for step in list(t.steps)[2 : 2 + 2 * per_file]:
            lines.append(f"--- {trajectory_pb2.Role.Name(step.role)}: {step.content[:600]!r}")
    path.write_text("\n".join(lines))


def stop(a: argparse.Namespace) -> None:
    import signal

    state = Path(a.state)
    info = json.loads((state / "rl_gpu.json").read_text()) if (state / "rl_gpu.json").exists() else {}
    pids = [*info.get("pids", []), int((state / "run" / "nats.pid").read_text())]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    say(f"stopped {len(pids)} process groups")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("start")
    s.add_argument("--state", required=True)
    s.add_argument("--base", default="gemma-3-270m")
    s.add_argument("--iterations", type=int, default=10)
    s.add_argument("--samples", type=int, default=8)
    s.add_argument("--train-tasks", type=int, default=0, help="First N TRAIN tasks (0 = all).")
    s.add_argument("--test-tasks", type=int, default=0, help="First N TEST tasks (0 = all).")
    s.add_argument("--sft-on", choices=["rest", "all"], default="rest",
                   help="Warm start on the TRAIN tasks the rollouts do not play (rest) or on all of them.")  # fmt: skip
    s.add_argument("--eval-every", type=int, default=5)
    s.add_argument("--max-turns", type=int, default=4)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--lr", type=float, default=1e-5)
    s.add_argument("--kl-beta", type=float, default=0.0)
    s.add_argument("--sft-epochs", type=float, default=3.0)
    s.add_argument("--sft-lr", type=float, default=2e-4)
    s.add_argument("--sft-batch", type=int, default=8)
    s.add_argument("--temperature", type=float, default=1.0, help="Rollout sampling temperature.")
    s.add_argument("--device", default="cuda", help="Model server device (cpu for a smoke test here).")
    s.add_argument("--max-seq-length", type=int, default=2048)
    s.add_argument("--unsafe-sandbox", choices=["auto", "yes", "no"], default="auto")
    s.add_argument("--adapter-name", default="io-rl", help="Name the loop publishes its versions under.")
    s.add_argument("--init-adapter", default="",
                   help="Start from this published adapter (name/version, e.g. an earlier loop's SFT warm start) "
                        "instead of a warm start of its own.")  # fmt: skip
    s.add_argument("--model-timeout", type=float, default=120.0,
                   help="Seconds one model call may take (raise it on a CPU, where a batch of long turns is slow).")  # fmt: skip
    w = sub.add_parser("watch")
    w.add_argument("--state", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--for", dest="for_s", type=float, default=540)
    t = sub.add_parser("stop")
    t.add_argument("--state", required=True)
    a = p.parse_args()
    {"start": start, "watch": watch, "stop": stop}[a.verb](a)


if __name__ == "__main__":
    main()
