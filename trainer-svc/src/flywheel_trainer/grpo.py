"""GRPO on stored rollouts: TRL's ``GRPOTrainer`` with its generation step replaced by our dataset.

The dataset builder's ``grpo_groups`` recipe writes one record per sampled assistant turn
(``OUTPUT_FORMAT_GRPO_TOKENS``): the exact prompt and completion token ids the serving policy saw
and produced, the log-prob it gave each completion token, and the group-normalised advantage. The
rollouts are therefore already generated and scored; what is left of GRPO is its loss. This module
keeps all of TRL's loss path (``GRPOTrainer._compute_loss``: the clipped ratio, the loss
aggregations, the KL term, its metrics) and its buffering of a generation batch over the gradient
accumulation steps and ``num_iterations`` passes (``_prepare_inputs``), and overrides only:

- ``_generate_and_score_completions``: collates stored records into the batch TRL's loss takes —
  left-padded prompt ids, right-padded completion ids, ``old_per_token_logps`` = the stored
  behaviour log-probs (so the ratio is taken against the policy that really sampled, vLLM or our
  model server, not against a recomputation), the stored advantages, and the reference log-probs
  when ``beta > 0``;
- ``_get_train_sampler``: each record once per epoch (TRL's ``RepeatSampler`` would repeat every
  prompt ``num_generations`` times to generate a group; our groups are already in the data);
- ``_prepare_inputs``: also counts the batch's tokens, for tokens/s (TRL counts ``input_ids``,
  which GRPO batches do not have);
- ``log``: adds the dataset's reward mean and standard deviation;
- ``_get_per_token_logps_and_entropies``: the log-probs from the final hidden states through the
  LM head a slice of tokens at a time (:mod:`flywheel_trainer.token_logps`), so the step never
  holds the ``(samples, tokens, vocabulary)`` logits; TRL's own where that could change a number
  (a LoRA-wrapped or soft-capped head, images, an entropy bonus). The head's matmul runs under the
  autocast the model's forward ran under and the log-softmax in float32, as TRL's does under mixed
  precision (Accelerate returns the logits in float32).

The KL reference is the starting policy: the init adapter, or the base model. TRL provides both
without a second model: for a fresh LoRA (``B = 0`` at the start) the adapter-disabled model *is*
the starting policy; for a continued adapter, TRL's constructor copies it into a frozen ``ref``
adapter. The reference log-probs are computed once per generation batch under ``torch.no_grad``,
exactly as TRL does; since the reference never changes this is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import Sampler
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad, use_adapter

from flywheel_trainer import token_logps

#: Row columns of a training record (the recipe's other fields are lineage, not training input).
COLUMNS = ("prompt_token_ids", "completion_token_ids", "behaviour_logprobs", "advantage", "reward")


class RolloutError(ValueError):
    """A record cannot be trained on (e.g. a token id outside the base model's vocabulary)."""


def prepare_rows(
    rows: Sequence[dict[str, Any]], max_seq_length: int, vocab_size: int
) -> list[dict[str, Any]]:
    """The training rows: the columns GRPO needs, cut to ``max_seq_length`` tokens, plus a padding row.

    A sample longer than ``max_seq_length`` keeps the start of its completion (with its log-probs)
    and the end of its prompt, the part next to the completion. The last row is a padding row
    (``pad: True``, no loss): the sampler uses it to fill the last generation batch of an epoch, so
    that every real record is seen exactly once per epoch whatever the batch size.
    """
    if max_seq_length < 2:
        raise RolloutError(f"max_seq_length {max_seq_length} leaves no room for a prompt and a completion")
    out = []
    for n, row in enumerate(rows, 1):
        prompt = [int(i) for i in row["prompt_token_ids"]]
        completion = [int(i) for i in row["completion_token_ids"]]
        logprobs = [float(v) for v in row["behaviour_logprobs"]]
        top = max(prompt + completion)
        if top >= vocab_size:
            raise RolloutError(
                f"record {n} (trajectory {row.get('trajectory_id', '?')}) has token id {top}, outside the base "
                f"model's vocabulary of {vocab_size}: the rollouts were sampled from another model"
            )
        completion, logprobs = completion[: max_seq_length - 1], logprobs[: max_seq_length - 1]
        prompt = prompt[-(max_seq_length - len(completion)) :]
        out.append(
            {
                "prompt_token_ids": prompt,
                "completion_token_ids": completion,
                "behaviour_logprobs": logprobs,
                "advantage": float(row["advantage"]),
                "reward": float(row.get("reward", 0.0)),
                "pad": False,
            }
        )
    if not out:
        raise RolloutError("the dataset has no RL samples")
    out.append({**out[0], "advantage": 0.0, "reward": 0.0, "pad": True})
    return out


def reward_stats(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(mean, population standard deviation) of the real rows' rewards."""
    rewards = [r["reward"] for r in rows if not r["pad"]]
    mean = sum(rewards) / len(rewards)
    return mean, math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))


class RolloutSampler(Sampler[int]):
    """Each real record once per epoch, in a seeded order, in generation batches.

    TRL's training loop draws one dataloader batch (a whole generation batch) per micro-step and
    uses it only every ``repeat`` (= steps per generation times iterations) micro-steps, buffering the
    rest; so each generation batch of indices is yielded ``repeat`` times, as TRL's sampler does.
    The last batch of an epoch is filled with the padding row (index ``count``).
    """

    def __init__(self, count: int, batch: int, repeat: int, seed: int) -> None:
        self.count, self.batch, self.repeat, self.seed = count, batch, repeat, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.count, generator=generator).tolist()
        for start in range(0, self.count, self.batch):
            chunk = order[start : start + self.batch]
            chunk += [self.count] * (self.batch - len(chunk))
            for _ in range(self.repeat):
                yield from chunk

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch) * self.batch * self.repeat


def _stored_reward(*_: Any, **__: Any) -> list[float | None]:
    # GRPOTrainer insists on a reward source; ours is the dataset, and this is never called because
    # _generate_and_score_completions is overridden.
    raise RuntimeError("rewards come from the RL dataset; nothing is generated or scored while training")


class RolloutGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` on stored rollouts (see the module docstring)."""

    def __init__(self, *, rewards: tuple[float, float], sliced_logps: bool = True, **kwargs: Any) -> None:
        super().__init__(reward_funcs=[_stored_reward], **kwargs)
        self._reward_stats = rewards
        #: The LM head a slice of tokens at a time (:mod:`flywheel_trainer.token_logps`), where it
        #: can stand in for the model's own; False is TRL's full-logits way (the benchmark's baseline).
        self.sliced_logps = sliced_logps

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **extra: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """TRL's method, with the log-probs taken from the final hidden states a slice at a time.

        Only where that gives the same numbers: a plain LM head, text only, no MoE auxiliary loss,
        and no entropy bonus (which needs the entropy's gradient). Otherwise TRL's own.
        """
        head = token_logps.plain_head(self.accelerator.unwrap_model(model)) if self.sliced_logps else None
        entropy_grad = compute_entropy and self._entropy_bonus_enabled
        if head is None or compute_aux_loss or entropy_grad or any(v is not None for v in extra.values()):
            return cast(
                tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
                super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                    compute_aux_loss, **extra,
                ),
            )  # fmt: skip
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            inputs: dict[str, Any] = {
                "input_ids": ids,
                "attention_mask": attention_mask[start : start + batch_size],
                "use_cache": False,
            }
            if "logits_to_keep" in self.model_kwarg_keys:
                inputs["logits_to_keep"] = logits_to_keep + 1  # the last position predicts past the end
            with token_logps.head_returns_hidden(head) as call:
                hidden = model(**inputs).logits  # the final hidden states (see head_returns_hidden)
            hidden = hidden[:, :-1, :][:, -logits_to_keep:, :]
            lp, ent = token_logps.token_logps(
                hidden,
                head,
                ids[:, -logits_to_keep:],
                temperature=self.temperature,
                entropy=compute_entropy,
                autocast=call.autocast,  # the model's own, for the head's matmul
            )
            logps.append(lp)
            if ent is not None:
                entropies.append(ent)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        dataset = self.train_dataset if dataset is None else dataset
        args = cast(GRPOConfig, self.args)
        return RolloutSampler(
            count=len(dataset) - 1,  # the last row is the padding row
            batch=int(args.generation_batch_size or 1),
            repeat=int(args.steps_per_generation or 1) * self.num_iterations,
            seed=args.seed,
        )

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = super()._prepare_inputs(generation_batch)
        if self.model is not None and self.model.training:
            completion = inputs["completion_mask"].sum(1)
            # Tokens of real samples only: the padding row's prompt is not training data.
            tokens = (inputs["prompt_mask"].sum(1) * (completion > 0)).sum() + completion.sum()
            self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum().item())
        return inputs

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        multiple = self.pad_to_multiple_of

        def ids(key: str, side: str, value: int = 0, dtype: torch.dtype = torch.long) -> torch.Tensor:
            rows = [torch.tensor(r[key], dtype=dtype) for r in inputs]
            return pad(rows, padding_value=value, padding_side=side, pad_to_multiple_of=multiple).to(device)

        def ones(key: str, side: str) -> torch.Tensor:
            rows = [torch.ones(len(r[key]), dtype=torch.long) for r in inputs]
            return pad(rows, padding_value=0, padding_side=side, pad_to_multiple_of=multiple).to(device)

        prompt_ids, prompt_mask = ids("prompt_token_ids", "left", pad_id), ones("prompt_token_ids", "left")
        completion_ids = ids("completion_token_ids", "right", pad_id)
        real = torch.tensor([not r["pad"] for r in inputs], dtype=torch.long, device=device)
        # The padding row attends like any row but carries no loss: its completion mask is all zero.
        completion_mask = ones("completion_token_ids", "right") * real.unsqueeze(1)
        behaviour = ids("behaviour_logprobs", "right", 0, torch.float32)
        advantages = torch.tensor([r["advantage"] for r in inputs], dtype=torch.float32, device=device)
        output: dict[str, Any] = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages * real,
            "old_per_token_logps": behaviour,
            # Completion tokens of the whole generation batch: DAPO's normaliser (TRL rescales it
            # to one accumulation window).
            "num_items_in_batch": self.accelerator.gather(completion_mask.sum()).sum(),
        }
        if self.beta != 0.0:
            output["ref_per_token_logps"] = self._reference_logps(
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, ones("completion_token_ids", "right")], dim=1),
                completion_ids.size(1),
            )
        return output

    def _reference_logps(self, input_ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Per-token log-probs of the starting policy (TRL's own way, as in its generation step)."""
        model = self.accelerator.unwrap_model(self.model)
        checkpointing = cast(dict[str, Any] | None, self.args.gradient_checkpointing_kwargs)
        with torch.no_grad(), disable_gradient_checkpointing(cast(Any, self.model), checkpointing):
            if self.ref_model is not None:  # a full model, not a PEFT one: TRL loaded a copy
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.ref_model, input_ids, mask, keep, batch_size=self.args.per_device_train_batch_size
                )
                return logps
            with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, mask, keep, batch_size=self.args.per_device_train_batch_size
                )
        return logps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["reward_mean"], logs["reward_std"] = self._reward_stats
        super().log(logs, start_time)
