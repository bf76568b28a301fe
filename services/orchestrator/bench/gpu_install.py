"""Install, on the borrowed GPU machine, the carried wheels its image lacks (used by gpu_env.sh).

A wheel is installed into /root/site (first on PYTHONPATH) only when the image has no
distribution of that name, or when it must be exactly the carried version (grpc and protobuf,
whose generated code checks versions, and the training libraries whose versions the trainer was
tested with). Installing every carried wheel would shadow the image's own numpy, torch helpers
and the like, which its torch build was made against.

    python3 gpu_install.py DIR [DIR ...]     # prints what it installed and what it kept
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

MUST_MATCH = {
    "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "trl", "datasets", "peft",
    "pydantic", "pydantic-core", "pydantic-settings", "typing-extensions", "typing-inspection",
}  # fmt: skip
TARGET = Path("/root/site")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main() -> None:
    done = TARGET / ".installed"
    done.mkdir(parents=True, exist_ok=True)
    todo: list[str] = []
    kept: list[str] = []
    for folder in sys.argv[1:]:
        for wheel in sorted(Path(folder).glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            if (done / wheel.name).exists():
                continue
            try:
                have = metadata.version(canonical(name))
            except metadata.PackageNotFoundError:
                have = None
            if have is None or (canonical(name) in MUST_MATCH and have != version):
                todo.append(str(wheel))
            else:
                kept.append(f"{name} {have}")
    if kept:
        print("image keeps:", ", ".join(kept))
    if todo:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(TARGET), *todo], check=True)  # fmt: skip
        for wheel in todo:
            (done / Path(wheel).name).touch()
        print("installed:", ", ".join(Path(w).name.split("-")[0] for w in todo))


if __name__ == "__main__":
    main()
