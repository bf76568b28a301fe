"""Compiled GPU kernels that outlive a job: torch.compile's portable cache in the object store.

Why. A packed SFT job on a GPU runs flex attention, which ``torch.compile`` builds on the job's
first step. On the device tool's H100 machines that build took 210 s of a 226 s run (the
benchmark's ``--stacks`` showed ``ptxas`` compiling one kernel for most of it); the same process
with a warm on-disk cache started its first step in 11 s. A training process normally gets a cold
cache: a Kubernetes Job's pod starts with an empty ``/tmp``, and a local worker's cache lives only
as long as the machine's ``/tmp``. So every job paid those minutes again.

How. PyTorch's "mega-cache" (``torch.compiler.save_cache_artifacts`` and
``load_cache_artifacts``) serialises the Inductor, AOTAutograd and autotuning cache entries a
process compiled or used into one portable blob, and loads such a blob into another process's
on-disk caches before it compiles. PyTorch still checks each entry (a kernel built for another
torch, Triton or GPU is not used); we key the blobs by that environment as well, so a job never
downloads blobs it cannot use.

Layout: ``trainer/compile-cache/<environment>/<digest>.bin``. The digest is the SHA-256 of the
sorted artifact keys a job used, so jobs that compiled the same kernels write the same object once,
and jobs that compiled different kernels (another rows-a-pass, another model) add their own blob
instead of overwriting another job's: no lost update between concurrent jobs. A job loads the
newest blobs of its environment (at most :data:`MAX_BLOBS`, :data:`MAX_BYTES` in all) and uploads
only when it used an artifact none of them held.

A cache is an optimisation: every error here is logged to the job's log and the job carries on.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from flywheel_common.objectstore import ObjectExistsError, ObjectStore

PREFIX = "trainer/compile-cache/"
MAX_BLOBS = 16
MAX_BYTES = 1 << 30  # 1 GiB of blobs loaded at most: a blob of one model's kernels is tens of MB


def environment() -> str:
    """The key part shared by processes that can use each other's kernels: torch, Triton, CUDA, GPU."""
    import torch

    parts = [f"torch{torch.__version__}"]
    try:
        import triton

        parts.append(f"triton{triton.__version__}")
    except ImportError:
        parts.append("notriton")
    if torch.cuda.is_available():
        parts.append(f"cuda{torch.version.cuda}")
        parts.append(torch.cuda.get_device_name(0))
    else:
        parts.append("cpu")
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", "_".join(parts)).strip("-")


def _log(message: str) -> None:
    print(f"flywheel: compile cache: {message}", file=sys.stderr, flush=True)


@dataclass
class CompileCache:
    """One job's use of the shared compile cache: :meth:`restore` before training, :meth:`publish` after."""

    store: ObjectStore
    env: str = field(default_factory=environment)
    loaded: set[str] = field(default_factory=set)  # artifact keys of the blobs loaded

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.env}/"

    def restore(self) -> int:
        """Load this environment's newest blobs into the process's compile caches; returns how many."""
        import torch

        started = time.monotonic()
        try:
            blobs = sorted(self.store.list(self.prefix), key=lambda info: info.last_modified, reverse=True)
        except Exception as err:
            _log(f"not restored: listing {self.prefix} failed: {err}")
            return 0
        budget = MAX_BYTES
        total = blobs_loaded = 0
        for info in blobs[:MAX_BLOBS]:
            if info.size > budget:
                continue
            try:
                loaded = torch.compiler.load_cache_artifacts(self.store.get_bytes(info.key))
            except Exception as err:  # a damaged or foreign blob: skip it, compile as without
                _log(f"skipped {info.key}: {type(err).__name__}: {err}")
                continue
            if loaded is None:
                _log(f"skipped {info.key}: PyTorch could not read it")
                continue
            budget -= info.size
            total += info.size
            self.loaded |= _keys(loaded)
            blobs_loaded += 1
        if blobs_loaded:
            _log(
                f"restored {blobs_loaded} blob(s), {total / 2**20:.1f} MiB, {len(self.loaded)} "
                f"artifacts in {time.monotonic() - started:.1f} s"
            )
        return blobs_loaded

    def publish(self) -> str | None:
        """Upload what this process compiled or used, if a loaded blob did not already hold it all.

        Returns the key written, or None when nothing new was compiled (or on an error, logged).
        """
        import torch

        try:
            saved = torch.compiler.save_cache_artifacts()
        except Exception as err:
            _log(f"not published: {type(err).__name__}: {err}")
            return None
        if saved is None:
            return None
        blob, info = saved
        keys = _keys(info)
        new = keys - self.loaded
        if not new:
            return None
        key = f"{self.prefix}{hashlib.sha256(chr(10).join(sorted(keys)).encode()).hexdigest()[:32]}.bin"
        try:
            self.store.put(key, blob, metadata={"artifacts": str(len(keys)), "new": str(len(new))})
        except ObjectExistsError:  # another job used the same kernels and got there first
            return key
        except Exception as err:
            _log(f"not published to {key}: {type(err).__name__}: {err}")
            return None
        _log(f"published {key}: {len(blob) / 2**20:.1f} MiB, {len(new)} new of {len(keys)} artifacts")
        return key


def _keys(info: Any) -> set[str]:
    """Every artifact key of a ``torch.compiler`` CacheInfo, tagged by its kind."""
    return {f"{kind}:{key}" for kind, keys in info.artifacts.items() for key in keys}
