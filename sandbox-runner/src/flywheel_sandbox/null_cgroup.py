"""The cgroup of a run where there are no cgroups (unsafe-local mode), so the runner never asks which.

:class:`NullCgroup` has :class:`~flywheel_sandbox.isolation.RunCgroupBase`'s interface: it applies no
limit and reports zero usage. Its kills still reach the run's processes through their process
group (the sandbox starts in a session of its own), which is what the runner did without cgroups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import TypeAlias

from flywheel_sandbox.isolation import RunCgroupBase


@dataclass
class NullCgroup:
    """No limits, no accounting; kills go to the process group ``pgid`` (None: nothing started yet)."""

    pgid: int | None = None

    @property
    def name(self) -> str:
        return f"unsafe-{self.pgid}"

    @property
    def procs_files(self) -> list[str]:
        return []

    def set_limits(self, memory_bytes: int, max_processes: int, cpu_cores: float) -> None:
        pass

    def init_memory(self, memory_bytes: int) -> None:
        pass

    def reset_peak_memory(self) -> None:
        pass

    def reset(
        self,
        memory_bytes: int | None = None,
        max_processes: int | None = None,
        cpu_cores: float | None = None,
    ) -> None:
        """Nothing to reset: nothing is counted or limited."""

    def _zero(self) -> int:
        return 0

    # Nothing is accounted without cgroups: every usage reads zero.
    cpu_ns = peak_memory = oom_kills = memory_failcnt = pids_max_hits = pids_peak = pids_current = _zero

    def pids(self) -> list[int]:
        return []

    def signal_all(self) -> int:
        """SIGKILL to the process group; reports 0 processes (it cannot count them, and the one
        signal reached them all, so no kill-until-none-left need follow)."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        return 0

    def kill(self, thorough: bool = False) -> None:
        # One signal to a process group reaches every member at once: nothing to repeat.
        self.signal_all()

    def kill_and_remove(self) -> bool:
        self.signal_all()
        return True


#: What a run's cgroup is: a real one, or the stand-in of unsafe-local mode.
Cgroup: TypeAlias = RunCgroupBase | NullCgroup
