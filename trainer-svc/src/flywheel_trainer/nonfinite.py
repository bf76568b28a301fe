"""The guard against non-finite gradients: skip the step, count it, and judge when a run has diverged.

Kept apart from :mod:`flywheel_trainer.recipe` (which needs gRPC and the object store) so the GPU
benchmark runs the worker's guard as the worker does.
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel_trainer.host_reads import PendingRead, read_later

log = logging.getLogger("flywheel.trainer.recipe")

#: Optimizer steps in a row whose gradients were not finite (each skipped) before the job fails.
#: One such step is usually a single bad batch (an overflow in the policy ratio of one token); three
#: in a row means the run has diverged.
MAX_NONFINITE_STEPS_IN_A_ROW = 3


class NonFiniteSteps:
    """Skips optimizer steps whose gradients are not finite, and decides when the run has diverged.

    transformers' Trainer steps the optimizer whatever the gradients hold, so one overflow (in
    GRPO, one token whose policy ratio ``exp(logp - behaviour_logp)`` is infinite) turns every
    LoRA weight into NaN and the job would publish an adapter whose every answer is NaN. Instead
    the step is skipped (the optimizer leaves the parameters and their moments alone), the skip is
    counted in the metrics, and after ``MAX_NONFINITE_STEPS_IN_A_ROW`` skipped steps in a row the
    job fails with the reason.

    Two ways to skip:

    * on a GPU with PyTorch's fused Adam/AdamW (the Trainer's default optimizer), without the host
      waiting: the gradients' non-finite flag is computed on the device and handed to the
      optimizer as ``found_inf``, which its fused kernel honours as it does for GradScaler (no
      update, the step count put back). The flag is copied into pinned memory behind a CUDA event
      and read at the next step's check, so the count and the divergence verdict come a step late
      (:meth:`settle` reads the last one after training). A wait here drained the GPU's queue every
      step, and the host's work between two steps then ran with the GPU idle (bench/RESULTS.md);
    * otherwise the flag is read at once and the step's gradients are dropped (``grad = None``).
    """

    #: Skip on the device and read the verdict a step late (class docstring). None: where the
    #: gradients are on a CUDA device and the optimizer is fused Adam/AdamW; tests set True to run
    #: the same path on a CPU.
    on_device: bool | None = None

    def __init__(self) -> None:
        self.skipped = 0
        self.in_a_row = 0
        self.diverged = ""
        self._pending: tuple[PendingRead, int] | None = None

    def check(self, model: Any, step: int, optimizer: Any = None) -> bool:
        """Skip this optimizer step if any of ``model``'s gradients is not finite; True once the run
        is judged diverged (on the device path, from the steps up to the previous one)."""

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if grads and self._skips_on_device(inner, grads):
            flag = nonfinite_flag(grads)
            inner.found_inf = flag
            verdict = self.settle()
            self._pending = (read_later(flag), step)
            return verdict
        if inner is not None and getattr(inner, "found_inf", None) is not None:
            inner.found_inf = None
        if not grads or all_finite(grads):
            self.in_a_row = 0
            return False
        for p in model.parameters():
            p.grad = None
        return self._count_skip(step)

    def settle(self) -> bool:
        """Take in the verdict queued at the last device-path check (its copy has long finished);
        True once the run is judged diverged."""
        if self._pending is not None:
            read, step = self._pending
            self._pending = None
            if read.values()[0] > 0:
                self._count_skip(step)
            else:
                self.in_a_row = 0
        return bool(self.diverged)

    def _skips_on_device(self, optimizer: Any, grads: list[Any]) -> bool:
        import torch

        if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            return False
        if not optimizer.defaults.get("fused") or len({g.device for g in grads}) != 1:
            return False
        return self.on_device if self.on_device is not None else bool(grads[0].is_cuda)

    def _count_skip(self, step: int) -> bool:
        self.skipped += 1
        self.in_a_row += 1
        log.warning("optimizer step %d skipped: non-finite gradients (%d skipped so far)", step, self.skipped)
        if self.in_a_row >= MAX_NONFINITE_STEPS_IN_A_ROW and not self.diverged:
            self.diverged = (
                f"training diverged: the gradients were not finite (NaN or inf) in {self.in_a_row} optimizer "
                f"steps in a row, up to step {step} ({self.skipped} skipped in all); each was skipped and "
                "no adapter was published. Lower the learning rate, or for GRPO check the rollouts' "
                "behaviour log-probs (a ratio exp(logp - behaviour_logp) that overflows)"
            )
        return bool(self.diverged)


def all_finite(tensors: list[Any]) -> bool:
    """Whether every element of ``tensors`` is finite, with one read-back from the device."""
    return not bool(nonfinite_flag(tensors))


def nonfinite_flag(tensors: list[Any]) -> Any:
    """A 0-dim float tensor on ``tensors[0]``'s device: 1.0 if any element is NaN or infinite, else 0.0.

    ``torch.isfinite(g).all()`` per tensor is two kernel launches for each of a 1.5 B model's 392
    LoRA tensors, every step. GradScaler's multi-tensor check (``_amp_foreach_non_finite_check_
    and_unscale_``, by device and dtype as GradScaler groups them) does the same test in a few
    launches; its unscale is by 1.0, which leaves the gradients as they were. The flag has the
    shape and dtype fused Adam's ``found_inf`` takes.
    """
    import torch

    check = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if check is None:  # a private op: without it, the plain per-tensor test
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        return (~finite).float().reshape(())
    groups: dict[tuple[Any, Any], list[Any]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    found = []
    for (device, dtype), group in groups.items():
        if dtype in (torch.float32, torch.float16):
            flag = torch.zeros(1, device=device)
            check(group, flag, torch.ones(1, device=device))
        else:  # the AMP op's CUDA kernel takes float32 and float16 only (bfloat16 raised on an H100)
            flag = (~torch.stack([torch.isfinite(t).all() for t in group]).all()).float().reshape(1)
        found.append(flag.to(tensors[0].device))
    # Exactly 1.0 when any group found one: the fused optimizers skip only on ``found_inf == 1``
    # (a sum over two bad groups, 2.0, would let the NaN step through).
    return torch.cat(found).amax().reshape(())


def nonfinite_parameters(model: Any) -> list[str]:
    """Names of the trainable tensors that hold a NaN or an infinity."""
    import torch

    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not bool(torch.isfinite(p.detach()).all())
    ]
