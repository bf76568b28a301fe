"""The content digest of a LoRA adapter as this server loaded it (``GET /v1/models`` reports it).

The definition is ``flywheel_common.adapter_digest`` (the trainer and adapter sync use the same
code). The digest must describe the bytes PEFT read, not the folder at some other moment, so the
files are stat-ed before they are hashed and again after PEFT has loaded them: if any covered file
changed in between (size, modification time or inode), the load is refused and nothing is
reported. On the worker thread, like the load itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flywheel_common.adapter_digest import DIGEST_FILES, DigestError, folder_digest

log = logging.getLogger("flywheel.model_server.digest")

_Stat = tuple[int, int, int]  # size, mtime_ns, inode


def _stats(folder: Path) -> dict[str, _Stat]:
    out = {}
    for name in DIGEST_FILES:
        try:
            st = os.stat(folder / name)
        except FileNotFoundError:
            continue
        out[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@dataclass
class LoadedFiles:
    """The digest of an adapter folder taken just before loading it, and what the files were then."""

    folder: Path
    digest: str  #: ``sha256:<hex>``, or "" when the folder's files are not ones the definition covers
    stats: dict[str, _Stat]

    @classmethod
    def before_load(cls, folder: Path) -> LoadedFiles:
        stats = _stats(folder)
        try:
            digest = folder_digest(folder).digest
        except DigestError as err:  # e.g. weights in a format PEFT reads but the definition omits
            log.warning("no content digest for %s: %s", folder, err)
            digest = ""
        return cls(folder, digest, stats)

    def changed_files(self) -> list[str]:
        """Covered files that are not as they were before the load (empty: the digest holds)."""
        now = _stats(self.folder)
        return sorted(n for n in now.keys() | self.stats.keys() if now.get(n) != self.stats.get(n))
