"""An SFT step that reads fewer numbers back from the GPU.

A CUDA step runs fast only while the host stays ahead of the GPU, queueing kernels. Every
``tensor.item()`` (or ``bool(tensor)``) on a GPU value makes the host wait until the GPU has
run everything queued so far; the GPU then sits idle until the host has queued enough work
again. TRL's ``SFTTrainer`` and transformers' ``Trainer`` do several such reads per micro-batch
only to keep metrics:

* the ``Trainer`` tests every micro-batch's loss with ``torch.isnan(...) or torch.isinf(...)``
  (``logging_nan_inf_filter``): two waits;
* ``SFTTrainer.compute_loss`` reads its metrics back on every micro-batch: with Liger the token
  count (a copy to the GPU and a read back) and the token accuracy (three waits), with its
  chunked NLL (its default without Liger) the entropy, the accuracy and the token count.

:class:`SyncFreeSFTTrainer` keeps the same metrics without those waits: the token count comes
from the batch's shape (a host number), and the other metrics stay GPU tensors until the Trainer
logs, where they are read back in one transfer. The loss test is switched off in the config
(``device_options.cuda_sft_overrides``: the worker's non-finite-gradient guard,
``recipe.NonFiniteSteps``, already catches a non-finite loss).

Measured with the benchmark's ``--profile`` (torch's sync debug mode) on an H100 at 8 packed rows:
14 waits a step with TRL's trainer, 9.5 with this one; the throughput difference was within the
run-to-run spread (bench/RESULTS.md). The waits left are not ours to remove here: Liger's own
``target_mask.sum().item()`` in its loss's forward and backward, accelerate's copy of the batch to
the GPU, transformers' packed-sequence and flex block-mask construction, the Trainer's count of
input tokens, and the logged loss and gradient norm when a job logs every step.

Where this class cannot keep TRL's numbers without a read-back (several processes, padded rows
with an attention mask, evaluation), it runs TRL's own code.
"""

from __future__ import annotations

from typing import Any

from trl import SFTTrainer


class SyncFreeSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose per-step metrics do not wait for the GPU (module docstring)."""

    # -- SFTTrainer's metrics -----------------------------------------------------------------

    def _path(self, inputs: dict[str, Any]) -> str | None:
        """Which loss path this micro-batch takes here: ``"liger"`` (Liger's fused loss) or
        ``"chunked"`` (TRL's chunked NLL, its default without Liger), while training, in one
        process, on padding-free rows, with no auxiliary loss; None: TRL's own code runs it."""
        if not (
            self.model is not None
            and self.model.training
            and self.accelerator.num_processes == 1
            and not self.aux_loss_enabled
            and "position_ids" in inputs
            and "attention_mask" not in inputs
            and "shift_labels" not in inputs
        ):
            return None
        # SFTConfig's field (self.args is typed as transformers' TrainingArguments).
        loss_type = getattr(self.args, "loss_type", None)
        if loss_type == "chunked_nll":
            return "chunked"
        return "liger" if self.args.use_liger_kernel else None

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        path = self._path(inputs)
        if path is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from transformers import Trainer

        inputs.pop("_prediction_loss_only", None)
        inputs["use_cache"] = False
        if path == "liger":
            # The request SFTTrainer makes of Liger's forward while training: no logits, the
            # token accuracy computed inside the fused loss.
            inputs["skip_logits"] = True
            inputs["return_token_accuracy"] = True
            inputs["use_token_scaling"] = getattr(self.args, "loss_type", None) == "dft"
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        metrics = self._metrics["train"]
        if path == "chunked":
            # The sums TRL's patched LM head returns, divided on the device.
            valid = outputs.num_valid_tokens
            metrics["entropy"].append(_share(outputs.entropy_sum, valid))
        # SFTTrainer counts the padded, flattened row (position_ids' length): a host number, and
        # with one process there is nothing to gather.
        self._total_train_tokens += inputs["position_ids"].size(1) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        if path == "chunked":
            metrics["mean_token_accuracy"].append(_share(outputs.num_correct_tokens, valid))
        elif getattr(outputs, "token_accuracy", None) is not None:
            metrics["mean_token_accuracy"].append(outputs.token_accuracy.detach().float().mean())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Read this log's metrics back from the GPU (one transfer), then log as TRL does."""
        import torch

        held = [
            (vals, i)
            for values in self._metrics.values()
            for vals in values.values()
            for i, v in enumerate(vals)
            if isinstance(v, torch.Tensor)
        ]
        if held:
            numbers = torch.stack([vals[i].reshape(()).float() for vals, i in held]).tolist()
            for (vals, i), number in zip(held, numbers, strict=True):
                vals[i] = number
        super().log(logs, start_time)


def _share(part: Any, whole: Any) -> Any:
    """``part / whole`` on the device, 0 where ``whole`` is 0 (TRL's ``if num_valid > 0`` without
    reading ``whole`` back)."""
    import torch

    whole = whole.detach().float()
    return torch.where(whole > 0, part.detach().float() / whole.clamp(min=1), torch.zeros_like(whole))
