"""The shared compile cache: kernels one training process built are found by the next one.

Real parts: ``torch.compile`` (Inductor's CPU backend, which builds C++ with the machine's g++),
PyTorch's portable cache blobs, and the filesystem object store. Each "job" is a fresh Python
process with its own empty Inductor cache folder, as a new Kubernetes pod would be. On a GPU the
kernels are flex attention's (minutes of ptxas on a cold start); here a small function stands in:
what is tested is the cache's plumbing, not the kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel_common.objectstore import FilesystemObjectStore

JOB = """
import json, sys, torch
from torch._dynamo.utils import counters
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_trainer.compile_cache import CompileCache

cache = CompileCache(open_object_store(ObjectStoreSettings()), env="test-env")
result = {"restored": cache.restore(), "phases": []}
for scale in map(float, sys.argv[1:]):  # one compiled function each, then a publish
    step = torch.compile(lambda x: torch.sin(x) * scale + 1)
    assert torch.allclose(step(torch.ones(8)), torch.sin(torch.ones(8)) * scale + 1)
    result["phases"].append({
        "hits": counters["inductor"]["fxgraph_cache_hit"],
        "misses": counters["inductor"]["fxgraph_cache_miss"],
        "published": cache.publish(),
    })
print("RESULT " + json.dumps(result))
"""


def _job(store_root: Path, tmp_path: Path, name: str, *scales: float) -> tuple[dict, str]:
    """One training process's use of the cache, with its own empty on-disk compile caches."""
    env = {
        **os.environ,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(store_root),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"),
        "TRITON_CACHE_DIR": str(tmp_path / f"triton-{name}"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", JOB, *map(str, scales)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :]), proc.stderr


@pytest.mark.slow
def test_a_second_process_loads_the_first_ones_kernels(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FilesystemObjectStore(root)
    store.ensure_ready()

    first, _ = _job(root, tmp_path, "a", 2.0)
    (compiled,) = first["phases"]
    assert first["restored"] == 0 and compiled["misses"] >= 1 and compiled["hits"] == 0
    assert compiled["published"] and compiled["published"].startswith("trainer/compile-cache/test-env/")
    assert [o.key for o in store.list("trainer/compile-cache/")] == [compiled["published"]]

    # A damaged blob beside the good one is skipped; the job compiles as without it.
    store.put("trainer/compile-cache/test-env/zz-damaged.bin", b"not a cache blob")
    second, log = _job(root, tmp_path, "b", 2.0, 3.0)
    same, other = second["phases"]
    assert second["restored"] == 1, log
    assert "skipped trainer/compile-cache/test-env/zz-damaged.bin" in log
    # The first job's kernel comes from its blob: a hit, nothing compiled, nothing uploaded again.
    assert same["hits"] >= 1 and same["misses"] == 0, same
    assert same["published"] is None
    # A kernel no blob held is compiled and added as a blob of its own; the first one is kept.
    assert other["misses"] >= 1 and other["published"] not in (None, compiled["published"])
    keys = sorted(o.key for o in store.list("trainer/compile-cache/test-env/") if "damaged" not in o.key)
    assert keys == sorted([compiled["published"], other["published"]])
