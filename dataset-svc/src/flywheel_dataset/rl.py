"""The `grpo_groups` recipe: token-exact GRPO samples from the policy's own rewarded episodes.

An RL dataset is not text: each record is one assistant turn as the model server sampled it
(the prompt ids it tokenised, the completion ids, their behaviour log-probs), with the
group-normalised advantage of its episode. Nothing is re-tokenised anywhere, so the trainer's
ratio π/π_old is taken over exactly the tokens the policy produced, and only those carry loss:
tool results, the task, corrective messages are inside the prompt ids by construction.

Because the samples must come from the policy the GRPO job starts from, the recipe also checks
where every turn came from (``Step.adapter``) and refuses a mixed or foreign source with
:class:`PolicyMismatch` (FAILED_PRECONDITION), naming a trajectory and both identities.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_dataset.examples import Counts, Example

GRPO_DOC = """\
**What becomes an example**: every assistant turn of every kept episode becomes one record
(`OUTPUT_FORMAT_GRPO_TOKENS`): `group_id` (`<suite>/<task id>`), `task_id`, `trajectory_id`,
`turn` (0-based among assistant turns), `prompt_token_ids`, `completion_token_ids`,
`behaviour_logprobs` (one per completion id, as the server returned them), `reward` (the
episode's `Outcome.reward`), `advantage` and `adapter` (`{"adapter_id", "digest"}` or null).
A turn's prompt is what the server tokenised for that call, so each turn is its own sample and
only its completion ids carry loss.

**Groups and advantages**: the episodes of one (suite, task) form a group; the advantage of
episode i is `(r_i - mean) / (std + 1e-6)` with `normalize_std` (population std), or
`r_i - mean` without (Dr. GRPO); every turn of an episode gets the episode's advantage.

**Filters** (reason names in the manifest; the common `infrastructure_failure` filter does not
apply, such episodes are masked ones here):
- `no_reward` (trajectory): no `Outcome.reward_detail` (imports, runs without rewards);
- `masked_infrastructure` (trajectory): the reward is masked (`reward_detail.masked`), or the
  episode ended on MODEL_ERROR / SANDBOX_ERROR; counted in `rl_stats.masked_episodes` too, and
  `rl_stats.masked_fraction` = masked / episodes with a reward;
- `no_token_record` (trajectory): an assistant turn without prompt or completion ids, or whose
  log-probs are missing, not one per completion id, or not finite — the whole episode is left
  out, never partly trained on;
- `group_too_small` (trajectory): fewer than `min_group_size` episodes in its group;
- `zero_advantage` (trajectory): every episode of the group has the same reward, with
  `drop_zero_advantage_groups` (counted per group in `rl_stats.zero_advantage_groups`).

**Policy pinning**: `policy_adapter` (`name/vN`, `base`, or empty for "whatever single policy
the episodes share") and `policy_digest` (`sha256:…`, optional) must match every assistant turn's
`Step.adapter`; a mismatch, or episodes from two identities when unpinned, fails the build with
FAILED_PRECONDITION. No de-duplication (identical episodes of a group are legitimate samples);
decontamination by task id applies.
"""


class PolicyMismatch(Exception):
    """The source holds episodes of another policy than the one the dataset is pinned to."""


@dataclass
class RlTally:
    """What the recipe read and kept, for the manifest's ``rl_stats``."""

    groups: int = 0
    episodes: int = 0
    samples: int = 0
    masked_episodes: int = 0
    rewarded_episodes: int = 0  #: episodes read with a reward_detail (masked ones included)
    zero_advantage_groups: int = 0
    rewards: list[float] = field(default_factory=list)
    policy: tpb.AdapterIdentity | None = None
    policy_seen: bool = False

    def stats(self) -> dict[str, Any]:
        """The manifest's ``rl_stats`` (``policy`` as an AdapterIdentity or None)."""
        read = self.rewarded_episodes
        return {
            "groups": self.groups,
            "episodes": self.episodes,
            "samples": self.samples,
            "masked_episodes": self.masked_episodes,
            "masked_fraction": self.masked_episodes / read if read else 0.0,
            "zero_advantage_groups": self.zero_advantage_groups,
            "reward_mean": statistics.fmean(self.rewards) if self.rewards else 0.0,
            "reward_std": statistics.pstdev(self.rewards) if len(self.rewards) > 1 else 0.0,
            "policy": self.policy,
        }


def _identity_text(identity: tpb.AdapterIdentity | None) -> str:
    if identity is None or not identity.adapter_id:
        return "the base model"
    return f"{identity.adapter_id} ({identity.digest or 'no digest'})"


def _key(identity: tpb.AdapterIdentity | None) -> tuple[str, str] | None:
    return (identity.adapter_id, identity.digest) if identity is not None else None


def _turn_identity(step: tpb.Step) -> tpb.AdapterIdentity | None:
    return step.adapter if step.HasField("adapter") and step.adapter.adapter_id else None


class _Pin:
    """Checks every turn's adapter against the recipe's pin, or against the first one seen."""

    def __init__(self, adapter: str, digest: str, tally: RlTally) -> None:
        self.adapter, self.digest, self.tally = adapter, digest, tally

    def check(self, trajectory: tpb.Trajectory, step: tpb.Step) -> None:
        got = _turn_identity(step)
        if self.adapter == "base":
            if got is not None:
                self._refuse(trajectory, "the base model (policy_adapter=base)", got)
        elif self.adapter:
            if got is None or got.adapter_id != self.adapter:
                self._refuse(trajectory, f"{self.adapter} (policy_adapter)", got)
            if self.digest and got.digest != self.digest:  # got is set: _refuse raised otherwise
                self._refuse(trajectory, f"{self.adapter} with digest {self.digest} (policy_digest)", got)
        elif self.digest and (got is None or got.digest != self.digest):
            self._refuse(trajectory, f"digest {self.digest} (policy_digest)", got)
        tally = self.tally
        if not tally.policy_seen:
            tally.policy, tally.policy_seen = got, True
        elif _key(got) != _key(tally.policy):
            self._refuse(trajectory, _identity_text(tally.policy) + " (the other episodes' policy)", got)

    @staticmethod
    def _refuse(trajectory: tpb.Trajectory, wanted: str, got: tpb.AdapterIdentity | None) -> NoReturn:
        raise PolicyMismatch(
            f"trajectory {trajectory.id} was sampled from {_identity_text(got)}, not from {wanted}: "
            "GRPO must train on the policy it starts from (a stale or mixed source); build from the "
            "rollouts of that policy only"
        )


def _tokens_ok(steps: list[tpb.Step]) -> bool:
    for step in steps:
        t = step.tokens
        if not step.HasField("tokens") or not t.completion_token_ids or not t.prompt_token_ids:
            return False
        if len(t.completion_logprobs) != len(t.completion_token_ids):
            return False
        if not all(math.isfinite(x) for x in t.completion_logprobs):
            return False
    return True


def grpo_groups(
    trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts
) -> Iterator[Example]:
    """See :data:`GRPO_DOC`. ``trajectories`` arrive grouped by task (``build.py`` sorts them);
    what was read and kept goes to ``counts.rl``."""
    # The recipes module imports this one, so its helpers are imported here, not at the top.
    from flywheel_dataset.recipes import by_task, is_infra_failure

    tally = counts.rl = RlTally()
    pin = _Pin(p["policy_adapter"], p["policy_digest"], tally)
    for group in by_task(trajectories):
        episodes: list[tuple[tpb.Trajectory, list[tpb.Step]]] = []
        for t in group:
            if not t.outcome.HasField("reward_detail"):
                counts.drop("no_reward")
                continue
            tally.rewarded_episodes += 1
            if t.outcome.reward_detail.masked or is_infra_failure(t):
                tally.masked_episodes += 1
                counts.drop("masked_infrastructure")
                continue
            turns = [s for s in t.steps if s.role == tpb.ROLE_ASSISTANT]
            if not turns or not _tokens_ok(turns):
                counts.drop("no_token_record")
                continue
            for step in turns:
                pin.check(t, step)
            episodes.append((t, turns))
        if not episodes:
            continue
        if len(episodes) < max(1, p["min_group_size"]):
            counts.drop("group_too_small", len(episodes))
            continue
        rewards = [t.outcome.reward for t, _ in episodes]
        mean = statistics.fmean(rewards)
        std = statistics.pstdev(rewards)
        if std == 0 and p["drop_zero_advantage_groups"]:
            tally.zero_advantage_groups += 1
            counts.drop("zero_advantage", len(episodes))
            continue
        tally.groups += 1
        for (t, turns), reward in zip(episodes, rewards, strict=True):
            advantage = (reward - mean) / (std + 1e-6) if p["normalize_std"] else reward - mean
            tally.episodes += 1
            tally.rewards.append(reward)
            for k, step in enumerate(turns):
                ident = _turn_identity(step)
                record: dict[str, Any] = {
                    "group_id": f"{t.task.suite}/{t.task.task_id}",
                    "task_id": t.task.task_id,
                    "trajectory_id": t.id,
                    "turn": k,
                    "prompt_token_ids": list(step.tokens.prompt_token_ids),
                    "completion_token_ids": list(step.tokens.completion_token_ids),
                    "behaviour_logprobs": [float(x) for x in step.tokens.completion_logprobs],
                    "reward": reward,
                    "advantage": advantage,
                    "adapter": {"adapter_id": ident.adapter_id, "digest": ident.digest} if ident else None,
                }
                tally.samples += 1
                yield Example(
                    t.id,
                    t.task.suite,
                    t.task.task_id,
                    [],
                    pair_type="turn",
                    record=record,
                    token_count=len(step.tokens.prompt_token_ids) + len(step.tokens.completion_token_ids),
                )
