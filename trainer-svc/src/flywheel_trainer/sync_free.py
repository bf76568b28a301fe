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
run-to-run spread (bench/RESULTS.md). Of the waits left, the one at the start of every backward
(Liger's test of whether the incoming gradient is 1) goes with :func:`liger_backward_without_wait`
(on by default since the tenth session: +4% a step on an H100). The others are not ours to remove
here: Liger's own ``target_mask.sum().item()`` in its loss's forward, accelerate's copy of the
batch to the GPU, transformers' packed-sequence and flex block-mask construction (see
:mod:`flywheel_trainer.packed_mask` for a host-side mask, measured slower), the Trainer's count of
input tokens, and the logged loss and gradient norm when a job logs every step.

Where this class cannot keep TRL's numbers without a read-back (several processes, padded rows
with an attention mask, evaluation), it runs TRL's own code.

Two more waits sat between every two steps, and everything the host did after them (the next
batch's collation, the Trainer's bookkeeping, the model's Python up to its first kernel) ran with
the GPU idle: the benchmark's trace of the GPU put 23 ms of a 350 ms step in gaps longer than a
millisecond at the step boundary (bench/RESULTS.md). On a CUDA device, in one process:

* **the logged numbers are read a step late**: at a logging step the loss sum, gradient norm and
  held metrics are stacked on the GPU and copied into pinned host memory without waiting, with a
  CUDA event behind them; the log is written at the next step's boundary (or before evaluation,
  a checkpoint, or the end of training), when the event has long passed. The log's step, epoch
  and token count are the ones of the step it describes;
* **the input-token count comes from the host**: the training batches' collator counts the
  tokens as the Trainer would (non-padding or all) on the CPU tensors and passes the count
  beside the batch, so ``state.num_input_tokens_seen`` needs no ``.item()``.
"""

from __future__ import annotations

import contextvars
from typing import Any

from trl import SFTTrainer

from flywheel_trainer.host_reads import read_later

#: The keys under which :class:`HostSideCollator` passes a batch's token counts and block-mask
#: tensors, popped before the model sees the batch.
TOKENS_KEY = "_flywheel_tokens"
MASK_KEY = "_flywheel_block_mask"
#: The key under which :class:`HostSideCollator` passes whether a padding-free batch holds several
#: sequences in a row (:func:`packed_check_from_host`).
PACKED_KEY = "_flywheel_packed"

#: The host's verdict for the forward running now: whether its rows hold several sequences. None
#: (outside :meth:`SyncFreeSFTTrainer.compute_loss`): transformers' own check runs.
_packed_verdict: contextvars.ContextVar[bool | None] = contextvars.ContextVar("flywheel_packed", default=None)


class HostSideCollator:
    """A training collator that also works out on the CPU what the step would otherwise ask the GPU:

    * ``count``: the batch's input tokens, as the Trainer's ``_track_num_input_tokens`` counts
      them on the device: ``(non-padding, all)`` under :data:`TOKENS_KEY`;
    * ``mask``: for a padding-free row, flex attention's block-mask tensors
      (:func:`flywheel_trainer.packed_mask.host_parts`) under :data:`MASK_KEY`;
    * ``packed``: for padding-free rows, whether any holds several sequences, under
      :data:`PACKED_KEY` (:func:`packed_check_from_host`).

    A class (not a closure) so DataLoader workers, where it then runs, can pickle it."""

    def __init__(
        self,
        inner: Any,
        pad_token_id: int | None,
        count: bool = True,
        mask: bool = False,
        packed: bool = False,
    ) -> None:
        self.inner = inner
        self.pad_token_id = pad_token_id
        self.count = count
        self.mask = mask
        self.packed = packed

    def __call__(self, examples: list[Any]) -> Any:
        batch = self.inner(examples)
        ids = batch.get("input_ids") if hasattr(batch, "get") else None
        if ids is None or not hasattr(ids, "numel"):
            return batch
        if self.count:
            if batch.get("attention_mask") is not None:
                real = int(batch["attention_mask"].sum())
            elif self.pad_token_id is not None:
                real = int((ids != self.pad_token_id).sum())
            else:
                real = ids.numel()
            batch[TOKENS_KEY] = (real, ids.numel())
        position_ids = batch.get("position_ids")
        if position_ids is None or batch.get("attention_mask") is not None:  # not padding-free
            return batch
        if self.mask:
            from flywheel_trainer.packed_mask import host_parts

            parts = host_parts(position_ids)
            if parts is not None:
                batch[MASK_KEY] = parts
        if self.packed:
            from flywheel_trainer.packed_mask import sequence_ids

            # transformers' test: some row's last token is not in its first sequence
            batch[PACKED_KEY] = bool((sequence_ids(position_ids.numpy())[:, -1] != 0).any())
        return batch


class SyncFreeSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose per-step metrics do not wait for the GPU (module docstring)."""

    #: Read logged numbers a step late (module docstring). None: on a CUDA device, in one process;
    #: tests set True to run the same bookkeeping on a CPU.
    defer_logs: bool | None = None
    #: Count the input tokens on the host (module docstring); the benchmark turns it off to
    #: measure what it gains.
    count_on_host: bool = True
    #: Build flex attention's block mask from the collator's host-side tensors
    #: (:mod:`flywheel_trainer.packed_mask`) instead of letting transformers build it on the GPU
    #: each forward. Off: measured slower on an H100 (tenth session, 8 packed rows of 1.5 B: 42,423
    #: and 44,724 tokens/s against 49,559 in the same call; its first six steps are as fast, the
    #: later ones slower, cause not found; bench/RESULTS.md). The benchmark's ``_hostmask`` turns it on.
    host_block_mask: bool = False
    #: Have Liger's fused loss scale its gradients without first asking the GPU whether the
    #: incoming gradient is 1 (:func:`liger_backward_without_wait`): on an H100 at 8 packed rows of
    #: 1.5 B, 50,650 against 48,700 tokens/s (medians of 2 and 4 runs on one machine, ranges
    #: apart; bench/RESULTS.md, tenth session). The benchmark's ``_lcewait`` variants turn it off.
    liger_scale_always: bool = True
    #: Tell transformers from the host whether a padding-free batch's rows hold several sequences
    #: (:func:`packed_check_from_host`), so its mask construction does not read that back from the
    #: GPU at the start of every forward; the block mask itself is still transformers' own. Off
    #: until measured on a GPU (the benchmark's ``_packhost`` variants); measured beside
    #: ``_hostmask`` it also tells whether that lever's loss comes from the wait it removes.
    packed_check_from_host: bool = False
    _pending_log: dict[str, Any] | None = None
    _host_tokens: Any = None
    _host_mask: Any = None
    _host_packed: bool | None = None

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.liger_scale_always and self.args.use_liger_kernel:
            liger_backward_without_wait()
        if self.packed_check_from_host:
            packed_check_from_host()
        try:
            return super().train(*args, **kwargs)
        finally:
            # Normally written already (before the end of training); after a failure, the last
            # logging step's numbers are still worth having, if the device can still give them.
            try:
                self.flush_log()
            except Exception:  # the failure being raised is the one that matters
                self._pending_log = None

    # -- the token count from the host ----------------------------------------------------------

    def get_train_dataloader(self) -> Any:
        inner = self.data_collator
        one = self.accelerator.num_processes == 1
        count = one and self.count_on_host and self.args.include_num_input_tokens_seen not in ("no", False)
        mask = one and self.host_block_mask and self._uses_flex_attention()
        packed = one and self.packed_check_from_host
        if not (count or mask or packed):
            return super().get_train_dataloader()
        pad = getattr(self.processing_class, "pad_token_id", None)
        self.data_collator = HostSideCollator(inner, pad, count=count, mask=mask, packed=packed)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = inner

    def _uses_flex_attention(self) -> bool:
        return getattr(getattr(self.model, "config", None), "_attn_implementation", None) == "flex_attention"

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self._host_tokens = inputs.pop(TOKENS_KEY, None)
        self._host_mask = inputs.pop(MASK_KEY, None)
        self._host_packed = inputs.pop(PACKED_KEY, None)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._host_mask = self._host_packed = None

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        counted, self._host_tokens = self._host_tokens, None
        mode = self.args.include_num_input_tokens_seen
        if counted is None or mode in ("no", False):
            super()._track_num_input_tokens(inputs)
            return
        main = getattr(self.model, "main_input_name", "input_ids")
        if main != "input_ids":
            super()._track_num_input_tokens(inputs)
            return
        self.state.num_input_tokens_seen += counted[0] if mode == "non_padding" else counted[1]

    # -- logs read a step late -------------------------------------------------------------------

    def _deferring(self, tr_loss: Any) -> bool:
        if self.defer_logs is not None:
            return self.defer_logs
        return bool(getattr(tr_loss, "is_cuda", False)) and self.accelerator.num_processes == 1

    def _maybe_log_save_evaluate(
        self,
        tr_loss: Any,
        grad_norm: Any,
        model: Any,
        trial: Any,
        epoch: Any,
        ignore_keys_for_eval: Any,
        start_time: float,
        learning_rate: float | None = None,
    ) -> None:
        # Writing the queued log goes through the callbacks' on_log, which clears should_log:
        # whether this step logs was decided before.
        should_log = self.control.should_log
        self.flush_log()
        self.control.should_log = should_log
        control, state = self.control, self.state
        if (
            control.should_log
            and state.global_step > self._globalstep_last_logged
            and self._deferring(tr_loss)
            and not (control.should_evaluate or control.should_save or control.should_training_stop)
            and state.global_step < state.max_steps
        ):
            self._queue_log(tr_loss, grad_norm, start_time, learning_rate)
        super()._maybe_log_save_evaluate(
            tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate
        )

    def _queue_log(
        self, tr_loss: Any, grad_norm: Any, start_time: float, learning_rate: float | None
    ) -> None:
        """Start copying this logging step's numbers to the host; :meth:`flush_log` writes the log."""
        import torch

        metrics: Any = self._metrics["train"]
        fresh: Any = type(metrics)(list) if hasattr(metrics, "default_factory") else {}
        self._metrics["train"] = fresh
        held = [
            (vals, i) for vals in metrics.values() for i, v in enumerate(vals) if isinstance(v, torch.Tensor)
        ]
        values = [tr_loss.detach().reshape(()).float()]
        norm_on_device = isinstance(grad_norm, torch.Tensor)
        if norm_on_device:
            values.append(grad_norm.detach().reshape(()).float().to(tr_loss.device))
        values += [vals[i].detach().reshape(()).float().to(tr_loss.device) for vals, i in held]
        read = read_later(torch.stack(values))  # a copy: the in-place reset below does not touch it
        tr_loss -= tr_loss
        state = self.state
        self._pending_log = {
            "read": read,
            "held": held,
            "metrics": metrics,
            "norm": None if norm_on_device else grad_norm,
            "norm_on_device": norm_on_device,
            "steps": state.global_step - self._globalstep_last_logged,
            "step": state.global_step,
            "epoch": state.epoch,
            "tokens": state.num_input_tokens_seen,
            "learning_rate": learning_rate if learning_rate is not None else self._get_learning_rate(),
            "start_time": start_time,
        }
        self._globalstep_last_logged = state.global_step
        self.store_flos()

    def flush_log(self) -> None:
        """Write the log queued at the last logging step, if any (its numbers are on the host by now)."""
        pending = getattr(self, "_pending_log", None)
        if pending is None:
            return
        self._pending_log = None
        numbers = pending["read"].values()
        loss_sum, rest = numbers[0], numbers[1:]
        logs: dict[str, float] = {"loss": loss_sum / pending["steps"]}
        if pending["norm_on_device"]:
            logs["grad_norm"], rest = rest[0], rest[1:]
        elif pending["norm"] is not None:
            logs["grad_norm"] = pending["norm"]
        logs["learning_rate"] = pending["learning_rate"]
        for (vals, i), number in zip(pending["held"], rest, strict=True):
            vals[i] = number
        self._total_loss_scalar += loss_sum
        state = self.state
        now = (state.global_step, state.epoch, state.num_input_tokens_seen, self._metrics["train"])
        state.global_step, state.epoch, state.num_input_tokens_seen = (
            pending["step"],
            pending["epoch"],
            pending["tokens"],
        )
        self._metrics["train"] = pending["metrics"]
        try:
            self.log(logs, pending["start_time"])
        finally:
            state.global_step, state.epoch, state.num_input_tokens_seen, self._metrics["train"] = now

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        self.flush_log()
        return super()._finalize_training(*args, **kwargs)

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
        if self._host_mask is not None:
            from flywheel_trainer.packed_mask import block_mask

            inputs["attention_mask"] = block_mask(self._host_mask)
        if path == "liger":
            # The request SFTTrainer makes of Liger's forward while training: no logits, the
            # token accuracy computed inside the fused loss.
            inputs["skip_logits"] = True
            inputs["return_token_accuracy"] = True
            inputs["use_token_scaling"] = getattr(self.args, "loss_type", None) == "dft"
        verdict = _packed_verdict.set(self._host_packed)
        try:
            loss, outputs = Trainer.compute_loss(
                self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        finally:
            _packed_verdict.reset(verdict)
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


def liger_backward_without_wait() -> bool:
    """Make Liger's fused linear + cross-entropy backward scale its stored gradients without a wait.

    Liger computes the input gradient during the forward and, in the backward, multiplies it by the
    incoming gradient unless that is exactly 1, which it learns with ``torch.equal`` on a GPU
    scalar: a wait for the GPU at the start of every backward (two a step in the H100 trace,
    ``bench/results/2026-12-06-h100-seventh/*/syncs.txt``), after which the host queues the
    backward's first kernels with the GPU idle. Under the Trainer the incoming gradient is rarely 1
    anyway (the loss is divided by the step's token count), so the multiply usually runs; this
    replaces the module's helper with one that always multiplies, out of place (the saved gradients
    stay as they were, so a second backward reads them unchanged), one elementwise kernel per
    gradient (about 50 MB at 16k tokens x 1,536, well under a millisecond). A per-token incoming
    gradient (``reduction="none"``) goes to Liger's own helper. Process-wide and idempotent; returns
    whether it is installed (False without ``liger-kernel``). Liger has no option for this, hence
    the replacement of its module-level helper, which its autograd function looks up at call time.
    """
    try:
        from liger_kernel.ops import fused_linear_cross_entropy as flce
    except ImportError:
        return False
    current = flce.fused_linear_cross_entropy_backward
    if getattr(current, "_flywheel_no_wait", False):
        return True

    def backward(grad_output: Any, grad_input: Any, grad_weight: Any, grad_bias: Any) -> Any:
        if grad_output.dim() != 0:
            return current(grad_output, grad_input, grad_weight, grad_bias)
        return tuple(
            None if g is None else g * grad_output.to(g.dtype) for g in (grad_input, grad_weight, grad_bias)
        )

    backward._flywheel_no_wait = True  # type: ignore[attr-defined]
    flce.fused_linear_cross_entropy_backward = backward
    return True


def packed_check_from_host() -> None:
    """Let transformers' packed-sequence check take the host's verdict instead of reading the GPU.

    For padding-free rows transformers finds each token's sequence from the position ids on the
    GPU and then reads back whether any row holds more than one (``.all()`` on a GPU tensor): a wait
    at the start of every forward, after which the host builds flex attention's block mask with
    the GPU idle (bench/RESULTS.md, seventh session: the largest gap left at the step boundary).
    The collator knows the answer from the CPU copy of the same position ids
    (:class:`HostSideCollator`, ``packed``), and :meth:`SyncFreeSFTTrainer.compute_loss` hands it
    to this check for its forward; any other call (no verdict set) runs transformers' own check.
    transformers has no option to pass the verdict in, hence the replacement of its module-level
    function (which its mask functions look up at call time); the sequence ids are computed as
    transformers computes them, so the masks are the same. Process-wide and idempotent.
    """
    import torch
    from transformers import masking_utils

    current = masking_utils.find_packed_sequence_indices
    if getattr(current, "_flywheel_host_verdict", False):
        return

    def find_packed_sequence_indices(position_ids: Any) -> Any:
        verdict = _packed_verdict.get()
        if verdict is None:
            return current(position_ids)
        if not verdict:
            return None
        first = position_ids[:, :1] - 1  # a new sequence wherever the position does not go up by one
        return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)

    find_packed_sequence_indices._flywheel_host_verdict = True  # type: ignore[attr-defined]
    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices


def _share(part: Any, whole: Any) -> Any:
    """``part / whole`` on the device, 0 where ``whole`` is 0 (TRL's ``if num_valid > 0`` without
    reading ``whole`` back)."""
    import torch

    whole = whole.detach().float()
    return torch.where(whole > 0, part.detach().float() / whole.clamp(min=1), torch.zeros_like(whole))
