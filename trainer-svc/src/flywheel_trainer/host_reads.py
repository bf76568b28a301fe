"""Reading small device values back a step late, so the host does not wait for the GPU now.

A ``.item()`` on a CUDA tensor makes the host wait until the GPU has run everything queued; the
GPU then idles while the host queues work again. :func:`read_later` instead starts a copy into
pinned host memory with a CUDA event behind it; :func:`PendingRead.values` waits for that event
alone, which has passed long before when it is called a step later. Used by the logs the sync-free
trainer writes a step late (``sync_free``) and the non-finite-gradient guard (``nonfinite``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PendingRead:
    """A device tensor's values on their way to the host."""

    host: Any
    event: Any = None

    def values(self) -> list[float]:
        """The values, as a flat list (waits for the copy, not for the rest of the GPU's queue)."""
        if self.event is not None:
            self.event.synchronize()
        return [float(v) for v in self.host.reshape(-1).tolist()]


def read_later(tensor: Any) -> PendingRead:
    """Start copying ``tensor`` to the host without waiting; on a CPU the values are there already
    (a copy, so later in-place changes to ``tensor`` do not reach them)."""
    import torch

    if not tensor.is_cuda:
        return PendingRead(tensor.detach().clone())
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return PendingRead(host, event)
