"""cgroup v2 support: detection, delegation checks and their messages, limits written, counters
read, kills — on a fake cgroupfs tree (this machine's kernel runs cgroup v1 for the controllers),
plus the real, controller-less unified mount this machine does have.

The fake tree is a temp folder laid out like /sys/fs/cgroup; a small fake "kernel" (patched
``_make_dir``/``_write`` of the module) fills new cgroups with their control files and moves
pids between ``cgroup.procs`` files the way the kernel would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel_sandbox import cgroup_v2, isolation
from flywheel_sandbox.cgroup_v2 import CgroupTreeV2, RunCgroupV2, own_cgroup
from flywheel_sandbox.isolation import IsolationUnavailable

FILES = {
    "cgroup.procs": "",
    "cgroup.type": "domain\n",
    "cgroup.subtree_control": "",
    "cgroup.controllers": "",
    "cgroup.kill": "",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "pids.max": "max\n",
    "pids.current": "0\n",
    "pids.peak": "0\n",
    "pids.events": "max 0\n",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}


class FakeKernel:
    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> None:
        self.root = root
        self.controllers = controllers
        root.mkdir(exist_ok=True)
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text("")
        (root / "cgroup.procs").write_text("")

    def make(self, path: Path, controllers: str | None = None, exist_ok: bool = True) -> None:
        path.mkdir(exist_ok=exist_ok)
        for name, text in FILES.items():
            f = path / name
            if not f.exists():
                f.write_text(text)
        parent = (path.parent / "cgroup.subtree_control").read_text().split()
        enabled = " ".join(w.lstrip("+") for w in parent)
        (path / "cgroup.controllers").write_text((controllers if controllers is not None else enabled) + "\n")

    def remove(self, path: Path | str) -> None:
        p = Path(path)
        if (p / "cgroup.procs").read_text().split() or any(c.is_dir() for c in p.iterdir()):
            raise OSError(16, "Device or resource busy", str(p))
        for f in p.iterdir():
            f.unlink()
        p.rmdir()

    def write(self, path: Path | str, value: int | str) -> None:
        p = Path(path)
        if p.name == "cgroup.procs":
            for other in self.root.rglob("cgroup.procs"):
                pids = [x for x in other.read_text().split() if x != str(value)]
                other.write_text("".join(f"{x}\n" for x in pids))
            p.write_text(p.read_text() + f"{value}\n")
        elif p.name == "cgroup.subtree_control":
            have = p.read_text().split()
            for word in str(value).split():
                if word.lstrip("+") not in (w.lstrip("+") for w in have):
                    have.append(word)
            p.write_text(" ".join(have) + "\n")
        elif p.name == "cgroup.kill" and str(value) == "1":
            p.write_text("1")
            (p.parent / "cgroup.procs").write_text("")  # the kernel kills every member
        else:
            p.write_text(str(value))


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "cgroup")
    monkeypatch.setattr(cgroup_v2, "_make_dir", k.make)
    monkeypatch.setattr(cgroup_v2, "_write", k.write)
    monkeypatch.setattr(cgroup_v2, "_remove_dir", k.remove)
    return k


def test_own_cgroup_is_read_from_the_unified_line() -> None:
    hybrid = "12:pids:/x\n4:memory:/process_api/abc\n0::/kubepods/pod1/ctr\n"
    assert own_cgroup(hybrid) == "/kubepods/pod1/ctr"
    with pytest.raises(IsolationUnavailable, match="no cgroup v2"):
        own_cgroup("4:memory:/a\n1:cpu:/\n")


def test_detection_and_forcing(kernel: FakeKernel, tmp_path: Path) -> None:
    assert cgroup_v2.is_unified(kernel.root)
    v1_root = tmp_path / "v1"
    (v1_root / "memory").mkdir(parents=True)
    assert not cgroup_v2.is_unified(v1_root)
    with pytest.raises(IsolationUnavailable, match="not a cgroup2 mount"):
        isolation.create_tree("t", "v2", root=v1_root)
    with pytest.raises(IsolationUnavailable, match="unknown cgroup version"):
        isolation.create_tree("t", "v3", root=v1_root)


def test_tree_in_a_delegated_subtree_moves_the_runner_into_a_leaf(kernel: FakeKernel) -> None:
    base = kernel.root / "kubepods" / "pod1"
    kernel.make(kernel.root / "kubepods", "cpu memory pids io")
    kernel.make(base, "cpu memory pids io")
    (base / "cgroup.procs").write_text("4242\n4243\n")  # the runner and a sidecar of its container

    tree = CgroupTreeV2.create("flywheel-sandbox-1-1", root=kernel.root, own="/kubepods/pod1")

    assert (base / "cgroup.procs").read_text().split() == []
    assert (base / "flywheel-runner" / "cgroup.procs").read_text().split() == ["4242", "4243"]
    enabled = {w.lstrip("+") for w in (base / "cgroup.subtree_control").read_text().split()}
    assert {"memory", "pids", "cpu"} <= enabled
    assert {"memory", "pids", "cpu"} <= {
        w.lstrip("+") for w in (tree.parent / "cgroup.subtree_control").read_text().split()
    }
    run = tree.new_run("r1")
    assert isinstance(run, RunCgroupV2) and run.procs_files == [str(tree.parent / "r1" / "cgroup.procs")]
    assert tree.parents == {"unified": tree.parent}


def test_missing_controllers_are_named(kernel: FakeKernel) -> None:
    base = kernel.root / "user.slice"
    kernel.make(base, "cpu memory")  # pids not delegated
    with pytest.raises(IsolationUnavailable) as err:
        CgroupTreeV2.create("t", root=kernel.root, own="/user.slice")
    message = str(err.value)
    assert "pids" in message and str(base) in message and "subtree_control" in message


def test_limits_and_counters_of_a_run(kernel: FakeKernel) -> None:
    kernel.make(kernel.root / "p", "cpu memory pids")
    tree = CgroupTreeV2.create("t", root=kernel.root, own="/p")
    run = tree.new_run("r1")
    d = tree.parent / "r1"

    run.init_memory(128 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    run.set_limits(256 << 20, 32, 1.5)
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpu.max").read_text() == "150000 100000"

    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.peak").write_text("7340032\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 2\n")
    (d / "pids.events").write_text("max 3\n")
    (d / "pids.peak").write_text("9\n")
    (d / "pids.current").write_text("4\n")
    assert run.cpu_ns() == 1_500_000
    assert run.peak_memory() == 7340032
    assert run.oom_kills() == 2 and run.memory_failcnt() == 5
    assert run.pids_max_hits() == 3 and run.pids_peak() == 9 and run.pids_current() == 4

    # Before kernel 5.19 there is no memory.peak: the current usage stands in.
    (d / "memory.peak").unlink()
    (d / "memory.current").write_text("4096\n")
    assert run.peak_memory() == 4096


def test_kill_uses_cgroup_kill_and_removal_is_reported(kernel: FakeKernel) -> None:
    kernel.make(kernel.root / "p", "cpu memory pids")
    tree = CgroupTreeV2.create("t", root=kernel.root, own="/p")
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    (d / "cgroup.procs").write_text("999999999\n")  # no such process: signalling it is harmless
    assert run.signal_all() == 1
    assert (d / "cgroup.kill").read_text() == "1" and run.pids() == []
    # A cgroup that cannot be removed (here: it has a child) is reported, not ignored.
    kernel.make(d / "nested")
    assert run.kill_and_remove() is False and d.exists()
    kernel.remove(d / "nested")
    assert run.kill_and_remove() is True and not d.exists()
    tree.destroy()
    assert not tree.parent.exists()


def test_the_real_unified_mount_without_controllers_is_refused() -> None:
    """This host mounts an empty cgroup2 hierarchy next to v1: v2 there must fail, naming why."""
    unified = Path("/sys/fs/cgroup/unified")
    if not cgroup_v2.is_unified(unified):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified on this host")
    own = own_cgroup(Path("/proc/self/cgroup").read_text())
    if {"memory", "pids", "cpu"} <= set((unified / own.lstrip("/") / "cgroup.controllers").read_text().split()):
        pytest.skip("the unified mount here has the controllers")
    with pytest.raises(IsolationUnavailable, match="not available"):
        CgroupTreeV2.create("flywheel-sandbox-test", root=unified, own=own)
