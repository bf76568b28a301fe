"""What ``flywheel run`` and ``flywheel eval`` share: the options that describe episodes, the
fields of the request they fill, the refusal of those options next to a verb, and cancelling the
job when the user presses Ctrl-C while following it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli.render import console, job_state

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status after Ctrl-C cancelled the job (the shell's convention for SIGINT).
EXIT_INTERRUPTED = 130
SPLITS = {"train": common_pb2.TASK_SPLIT_TRAIN, "test": common_pb2.TASK_SPLIT_TEST}
PROTOCOLS = {
    "json": common_pb2.TOOL_PROTOCOL_JSON,
    "native": common_pb2.TOOL_PROTOCOL_NATIVE,
    "io": common_pb2.TOOL_PROTOCOL_IO,
}
#: ``--reward`` keys: the fields of ``RewardWeights`` (rule ``flywheel-reward/v1``).
REWARD_KEYS = tuple(f.name for f in tpb.RewardWeights.DESCRIPTOR.fields)
TEST_POLICIES = {
    "never": run_pb2.TEST_POLICY_NEVER,
    "after_write": run_pb2.TEST_POLICY_AFTER_WRITE,
    "end": run_pb2.TEST_POLICY_END,
}


def episode_options(fn: F) -> F:
    """Options shared by `run` and `eval`: task selection, protocol, budgets, sampling."""
    options = [
        click.option(
            "--task", "tasks", multiple=True, help="Task id of the split (repeatable; default all)."
        ),
        click.option("--rollouts", type=int, default=0, help="Episodes per task (0 = 1)."),
        click.option(
            "--protocol",
            type=click.Choice(sorted(PROTOCOLS)),
            default=None,
            help="Tool protocol (default: the one for each task's kind).",
        ),
        click.option(
            "--test-policy",
            type=click.Choice(sorted(TEST_POLICIES)),
            default=None,
            help="When the driver runs the tests during an episode (default end).",
        ),
        click.option(
            "--max-iterations", type=int, default=0, help="Assistant turns per episode (0 = default)."
        ),
        click.option("--max-tokens", type=int, default=0, help="Token budget per episode (0 = default)."),
        click.option(
            "--max-wall-time", type=float, default=0.0, metavar="SECONDS", help="Time budget per episode."
        ),
        click.option(
            "--max-parse-errors", type=int, default=0, help="Consecutive parse errors that end an episode."
        ),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (0 = greedy)."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling mass in (0, 1]."),
        click.option(
            "--max-completion-tokens", type=int, default=None, help="Completion tokens per model call."
        ),
        click.option("--seed", type=int, default=None, help="Sampling seed, where the backend supports it."),
        click.option(
            "--record-tokens",
            is_flag=True,
            help="Store each model turn's token ids and log-probs in the trajectories (for RL).",
        ),
        click.option(
            "--reward",
            "rewards",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Episode reward weight (repeatable; keys: {', '.join(REWARD_KEYS)}).",
        ),
        click.option("--concurrency", type=int, default=0, help="Episodes in flight at once (0 = default)."),
        click.option(
            "--label", "labels", multiple=True, help="KEY=VALUE copied to every trajectory (repeatable)."
        ),
        click.option(
            "--request-id", default="", help="Idempotency key: a retry with it returns the same job."
        ),
        click.option("--watch/--no-watch", default=True, show_default=True, help="Follow it to the end."),
        click.option("-q", "--quiet", is_flag=True, help="No line per finished episode while following."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


#: Parameters of a group that only make sense when the group itself starts a job.
_CONNECTION = {"address", "state_dir"}


def reject_job_options(ctx: click.Context) -> None:
    """`flywheel run --suite S list` is a mistake: say so rather than silently ignoring --suite."""
    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name not in _CONNECTION
        and ctx.get_parameter_source(p.name) not in (None, click.core.ParameterSource.DEFAULT)
    ]
    if given:
        raise click.UsageError(
            f"{', '.join(given)}: only for starting a job (`flywheel {ctx.info_name} --suite …`), "
            f"not with `flywheel {ctx.info_name} {ctx.invoked_subcommand}`"
        )


def parse_labels(pairs: tuple[str, ...], param_hint: str = "--label") -> dict[str, str]:
    """``KEY=VALUE`` pairs as a dict; a pair without ``=`` or key is a usage error."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE", param_hint=param_hint)
        labels[key] = value
    return labels


def parse_rewards(pairs: tuple[str, ...], param_hint: str = "--reward") -> tpb.RewardWeights:
    """``KEY=VALUE`` pairs as reward weights; an unknown key or a bad number is a usage error (the
    server checks the values themselves: signs, finiteness, the integrity bound)."""
    weights = tpb.RewardWeights()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} must be KEY=VALUE", param_hint=param_hint)
        if key not in REWARD_KEYS:
            raise click.BadParameter(
                f"unknown key {key!r} (known: {', '.join(REWARD_KEYS)})", param_hint=param_hint
            )
        try:
            if key == "max_penalised":
                weights.max_penalised = int(value)
            else:
                setattr(weights, key, float(value))
        except ValueError:
            kind = "an integer" if key == "max_penalised" else "a number"
            raise click.BadParameter(f"{key}: {value!r} is not {kind}", param_hint=param_hint) from None
    return weights


def fill_episode(msg: run_pb2.Run | epb.Evaluation, opts: dict[str, Any]) -> None:
    """Copy the shared options into a Run or an Evaluation (both have the same field names)."""
    msg.task_ids.extend(opts["tasks"])
    msg.rollouts_per_task = opts["rollouts"]
    episode = msg.episode
    if opts["protocol"]:
        episode.protocol = PROTOCOLS[opts["protocol"]]
    if opts["test_policy"]:
        episode.test_policy = TEST_POLICIES[opts["test_policy"]]
    episode.limits.max_iterations = opts["max_iterations"]
    episode.limits.max_tokens = opts["max_tokens"]
    episode.limits.max_consecutive_parse_errors = opts["max_parse_errors"]
    if opts["max_wall_time"]:
        episode.limits.max_wall_time.FromNanoseconds(int(opts["max_wall_time"] * 1e9))
    sampling = episode.sampling
    if opts["temperature"] is not None:
        sampling.temperature = opts["temperature"]
    if opts["top_p"] is not None:
        sampling.top_p = opts["top_p"]
    if opts["max_completion_tokens"] is not None:
        sampling.max_tokens = opts["max_completion_tokens"]
    if opts["seed"] is not None:
        sampling.seed = opts["seed"]
    episode.record_tokens = opts["record_tokens"]
    if opts["rewards"]:
        episode.reward.CopyFrom(parse_rewards(opts["rewards"]))
    msg.concurrency = opts["concurrency"]
    msg.labels.update(parse_labels(opts["labels"]))


def cancel_after_interrupt(kind: str, job_id: str, cancel: Callable[[], Any]) -> int:
    """Ctrl-C while following: cancel the job on the server, so that it does not run on unwatched."""
    console.print(f"\n[yellow]interrupted[/]: cancelling {kind} {job_id}…")
    job = cancel()
    finished = job.counters.episodes_finished if kind == "run" else job.progress.episodes_finished
    console.print(
        f"{job.id}: {job_state(job.state)} (cancellation requested); {finished} finished episodes stay stored"
    )
    return EXIT_INTERRUPTED
