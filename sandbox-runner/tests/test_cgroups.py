"""cgroup v1 and v2 behind one interface: detection, delegation checks and their messages, limits
written, counters read, reset for reuse, kills and removal.

cgroup v2 runs on a fake cgroupfs tree (this machine's kernel runs its controllers under cgroup
v1): a temp folder laid out like /sys/fs/cgroup, and a small fake "kernel" (patched
``_make_dir``/``_write``/``_remove_dir``/``_reset_peak_fd`` of the module) that fills new cgroups
with their control files and moves pids between ``cgroup.procs`` files the way the kernel would.
The real, controller-less unified mount of this host is checked too, and cgroup v1's reset on
real cgroups. The bubblewrap launch line is checked for what it lets through to the sandbox.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel_sandbox import cgroup_v2, isolation
from flywheel_sandbox.cgroup_v2 import CgroupTreeV2, RunCgroupV2, own_cgroup
from flywheel_sandbox.isolation import IsolationUnavailable, RunCgroupBase
from flywheel_sandbox.null_cgroup import NullCgroup

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
NO_SWAP = Path("/nonexistent/proc-swaps")  # reads as "no swap device"


class FakeKernel:
    """Just enough of the kernel's cgroup v2 behaviour for the tree and run classes."""

    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> None:
        self.root = root
        self.absent: set[str] = set()  # control files new cgroups lack (an older kernel)
        self.stuck: set[str] = set()  # pids the kernel refuses to move (e.g. kernel threads)
        self.refuse: dict[str, OSError] = {}  # file name -> error its writes raise
        self.peak_resettable = True
        root.mkdir(exist_ok=True)
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text("")
        (root / "cgroup.procs").write_text("")

    def make(self, path: Path, controllers: str | None = None, exist_ok: bool = True) -> None:
        path.mkdir(exist_ok=exist_ok)
        for name, text in FILES.items():
            f = path / name
            if not f.exists() and name not in self.absent:
                f.write_text(text)
        parent = (path.parent / "cgroup.subtree_control").read_text().split()
        enabled = " ".join(w.lstrip("+") for w in parent)
        (path / "cgroup.controllers").write_text((controllers if controllers is not None else enabled) + "\n")

    def remove(self, path: Path | str) -> None:
        p = Path(path)
        if (p / "cgroup.procs").read_text().split() or any(c.is_dir() for c in p.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(p))
        for f in p.iterdir():
            f.unlink()
        p.rmdir()

    def write(self, path: Path | str, value: int | str) -> None:
        p = Path(path)
        if p.name in self.refuse:
            raise self.refuse[p.name]
        if p.name == "cgroup.procs":
            if str(value) in self.stuck:
                raise OSError(errno.EINVAL, "Invalid argument", str(p))
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

    def reset_peak_fd(self, path: str) -> int:
        """memory.peak's per-file reset (Linux >= 6.12): the open file reads its own peak, kept
        here in ``memory.peak.fd`` (starting at the current use); earlier kernels refuse."""
        if not self.peak_resettable:
            raise OSError(errno.EACCES, "Permission denied", path)
        own = Path(path).parent / "memory.peak.fd"
        own.write_text((Path(path).parent / "memory.current").read_text())
        return os.open(own, os.O_RDONLY)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path / "cgroup")
    monkeypatch.setattr(cgroup_v2, "_make_dir", k.make)
    monkeypatch.setattr(cgroup_v2, "_write", k.write)
    monkeypatch.setattr(cgroup_v2, "_remove_dir", k.remove)
    monkeypatch.setattr(cgroup_v2, "_reset_peak_fd", k.reset_peak_fd)
    return k


def tree_in(kernel: FakeKernel, name: str = "p", **kw: object) -> CgroupTreeV2:
    kernel.make(kernel.root / name, "cpu memory pids")
    return CgroupTreeV2.create("t", root=kernel.root, own=f"/{name}", proc_swaps=NO_SWAP, **kw)  # type: ignore[arg-type]


def put(d: Path, **files: str) -> None:
    for name, text in files.items():
        (d / name.replace("_", ".", 1)).write_text(text)


# --- detection ----------------------------------------------------------------------------------


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
    with pytest.raises(IsolationUnavailable, match="not a cgroup2 mount") as err:
        isolation.create_tree("t", "v2", root=v1_root)
    assert "hybrid" not in str(err.value)
    with pytest.raises(IsolationUnavailable, match="unknown cgroup version"):
        isolation.create_tree("t", "v3", root=v1_root)
    # Hybrid: v1 controllers plus an empty cgroup2 mount at <root>/unified (this machine's layout).
    FakeKernel(v1_root / "unified", controllers="")
    with pytest.raises(IsolationUnavailable, match=r"hybrid mode.*use cgroup version v1"):
        isolation.create_tree("t", "v2", root=v1_root)


def test_auto_picks_v2_on_a_unified_mount(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel.make(kernel.root / "p", "cpu memory pids")
    monkeypatch.setattr(cgroup_v2, "own_cgroup", lambda _text: "/p")
    tree = isolation.create_tree("flywheel-sandbox-1-1", "auto", root=kernel.root)
    assert isinstance(tree, CgroupTreeV2) and tree.describe()["version"] == "v2"


# --- delegation ---------------------------------------------------------------------------------


def test_tree_in_a_delegated_subtree_moves_the_runner_into_a_leaf(kernel: FakeKernel) -> None:
    base = kernel.root / "kubepods" / "pod1"
    kernel.make(kernel.root / "kubepods", "cpu memory pids io")
    kernel.make(base, "cpu memory pids io")
    (base / "cgroup.procs").write_text("4242\n4243\n")  # the runner and a sidecar of its container

    tree = CgroupTreeV2.create(
        "flywheel-sandbox-1-1", root=kernel.root, own="/kubepods/pod1", proc_swaps=NO_SWAP
    )

    assert (base / "cgroup.procs").read_text().split() == []
    assert (base / "flywheel-runner" / "cgroup.procs").read_text().split() == ["4242", "4243"]
    enabled = {w.lstrip("+") for w in (base / "cgroup.subtree_control").read_text().split()}
    assert {"memory", "pids", "cpu"} <= enabled
    assert {"memory", "pids", "cpu"} <= {
        w.lstrip("+") for w in (tree.parent / "cgroup.subtree_control").read_text().split()
    }
    run = tree.new_run("r1")
    assert isinstance(run, RunCgroupV2) and run.procs_files == [str(tree.parent / "r1" / "cgroup.procs")]
    # Indexed by controller like the v1 tree (the runner's log and tests read parents["pids"]).
    assert tree.parents == {"memory": tree.parent, "pids": tree.parent, "cpu": tree.parent}

    # A second runner started from inside the leaf uses the same base, not a leaf in the leaf.
    again = CgroupTreeV2.create(
        "flywheel-sandbox-1-2", root=kernel.root, own="/kubepods/pod1/flywheel-runner", proc_swaps=NO_SWAP
    )
    assert again.parent == base / "flywheel-sandbox-1-2"
    assert not (base / "flywheel-runner" / "flywheel-runner").exists()


def test_the_real_root_cgroup_keeps_its_processes(kernel: FakeKernel) -> None:
    """The root cgroup (no cgroup.type) is exempt from the no-internal-processes rule."""
    (kernel.root / "cgroup.procs").write_text("1\n4242\n")
    tree = CgroupTreeV2.create("t", root=kernel.root, own="/", proc_swaps=NO_SWAP)
    assert (kernel.root / "cgroup.procs").read_text().split() == ["1", "4242"]
    assert not (kernel.root / "flywheel-runner").exists()
    assert tree.parent == kernel.root / "t"


def test_missing_controllers_name_the_parents_subtree_control(kernel: FakeKernel) -> None:
    parent = kernel.root / "system.slice"
    kernel.make(parent, "cpu memory pids io")
    (parent / "cgroup.subtree_control").write_text("cpu memory\n")
    base = parent / "flywheel.service"
    kernel.make(base)  # gets what the parent enables: cpu memory (no pids)
    with pytest.raises(IsolationUnavailable) as err:
        CgroupTreeV2.create("t", root=kernel.root, own="/system.slice/flywheel.service", proc_swaps=NO_SWAP)
    message = str(err.value)
    assert "controller(s) pids not available" in message and str(base) in message
    assert f"parent's {parent}/cgroup.subtree_control (which has cpu memory)" in message
    assert "echo '+pids'" in message and "Delegate=yes" in message


def test_missing_controllers_at_a_namespace_root_blame_the_runtime(kernel: FakeKernel) -> None:
    (kernel.root / "cgroup.controllers").write_text("cpu pids\n")  # a container's cgroup namespace root
    with pytest.raises(
        IsolationUnavailable, match=r"memory not available.*container runtime did not delegate"
    ):
        CgroupTreeV2.create("t", root=kernel.root, own="/", proc_swaps=NO_SWAP)


def test_a_process_that_cannot_move_is_named(kernel: FakeKernel) -> None:
    base = kernel.root / "pod"
    kernel.make(base, "cpu memory pids")
    (base / "cgroup.procs").write_text("4242\n77\n")
    kernel.stuck.add("77")
    with pytest.raises(IsolationUnavailable, match=r"no-internal-processes rule.*processes \[77\] of .*pod"):
        CgroupTreeV2.create("t", root=kernel.root, own="/pod", proc_swaps=NO_SWAP)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (OSError(errno.EBUSY, "Device or resource busy"), "still holds processes.*no-internal-processes"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only or not delegated.*cgroupAccess"),
        (OSError(errno.EACCES, "Permission denied"), "read-only or not delegated"),
    ],
)
def test_enabling_controllers_fails_with_the_reason(kernel: FakeKernel, err: OSError, expected: str) -> None:
    kernel.make(kernel.root / "p", "cpu memory pids")
    kernel.refuse["cgroup.subtree_control"] = err
    with pytest.raises(
        IsolationUnavailable,
        match=f"cannot enable memory pids cpu in .*/p/cgroup.subtree_control.*{expected}",
    ):
        CgroupTreeV2.create("t", root=kernel.root, own="/p", proc_swaps=NO_SWAP)


def test_namespace_and_mount_disagreeing_is_refused(kernel: FakeKernel) -> None:
    with pytest.raises(IsolationUnavailable, match=r"cgroup /kubepods/x .*is not a directory.*disagree"):
        CgroupTreeV2.create("t", root=kernel.root, own="/kubepods/x", proc_swaps=NO_SWAP)


def test_swap_without_swap_accounting_is_refused(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.absent.add("memory.swap.max")
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n")
    kernel.make(kernel.root / "p", "cpu memory pids")
    with pytest.raises(IsolationUnavailable, match=r"memory.swap.max is missing.*1 device\(s\)"):
        CgroupTreeV2.create("t", root=kernel.root, own="/p", proc_swaps=swaps)
    # No swap device: memory.max alone bounds the run, and nothing writes memory.swap.max.
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n")
    tree = CgroupTreeV2.create("t2", root=kernel.root, own="/p", proc_swaps=swaps)
    run = tree.new_run("r1")
    run.init_memory(64 << 20)
    assert not (tree.parent / "r1" / "memory.swap.max").exists()
    assert tree.describe()["swap_max"] is False


def test_a_cgroup_missing_control_files_is_refused(kernel: FakeKernel) -> None:
    kernel.absent.add("cpu.max")
    with pytest.raises(IsolationUnavailable, match=r"lacks cpu\.max"):
        tree_in(kernel)


def test_the_real_unified_mount_without_controllers_is_refused() -> None:
    """This host mounts an empty cgroup2 hierarchy next to v1: v2 there must fail, naming why."""
    unified = Path("/sys/fs/cgroup/unified")
    if not cgroup_v2.is_unified(unified):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified on this host")
    own = own_cgroup(Path("/proc/self/cgroup").read_text())
    if {"memory", "pids", "cpu"} <= set(
        (unified / own.lstrip("/") / "cgroup.controllers").read_text().split()
    ):
        pytest.skip("the unified mount here has the controllers")
    with pytest.raises(IsolationUnavailable, match=r"not available.*cgroup v1 hierarchies on this host"):
        CgroupTreeV2.create("flywheel-sandbox-test", root=unified, own=own)


# --- one run's cgroup ---------------------------------------------------------------------------


def test_limits_and_counters_of_a_run(kernel: FakeKernel) -> None:
    tree = tree_in(kernel)
    run = tree.new_run("r1")
    d = tree.parent / "r1"

    run.init_memory(128 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    run.set_limits(256 << 20, 32, 1.5)
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpu.max").read_text() == "150000 100000"

    put(
        d,
        cpu_stat="usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        memory_peak="7340032\n",
        memory_events="low 0\nhigh 0\nmax 5\noom 1\noom_kill 2\n",
        pids_events="max 3\n",
        pids_peak="9\n",
        pids_current="4\n",
    )
    assert run.cpu_ns() == 1_500_000
    assert run.peak_memory() == 7340032
    assert run.oom_kills() == 2 and run.memory_failcnt() == 5
    assert run.pids_max_hits() == 3 and run.pids_peak() == 9 and run.pids_current() == 4


def test_peak_memory_is_reset_through_its_own_open_file(kernel: FakeKernel) -> None:
    """Linux >= 6.12: the reset holds for reads through the same open file only."""
    tree = tree_in(kernel)
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    put(d, memory_peak="900000\n", memory_current="1000\n")  # the child's preparation peaked here
    run.reset_peak_memory()
    assert run.peak_memory() == 1000  # the open file's peak restarted at the current use
    (d / "memory.peak.fd").write_text("5000\n")
    assert run.peak_memory() == 5000
    assert tree.features.peak_resettable is True
    assert run.kill_and_remove() and not d.exists()


def test_peak_memory_without_a_per_file_reset_uses_the_old_peak_as_a_floor(kernel: FakeKernel) -> None:
    """Linux 5.19-6.11: memory.peak is read-only. A later peak above it is exact; below it, the
    highest memory.current the watchdog sampled stands in."""
    kernel.peak_resettable = False
    tree = tree_in(kernel)
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    put(d, memory_peak="900000\n", memory_current="1000\n")
    run.reset_peak_memory()
    assert tree.features.peak_resettable is False
    put(d, memory_current="3000\n")
    assert run.pids_current() == 0  # a watchdog tick: samples memory.current on the way
    put(d, memory_current="2000\n")
    assert run.peak_memory() == 3000
    put(d, memory_peak="950000\n")
    assert run.peak_memory() == 950000


def test_peak_memory_before_memory_peak_existed_is_sampled(kernel: FakeKernel) -> None:
    kernel.absent.add("memory.peak")  # Linux < 5.19
    tree = tree_in(kernel)
    assert tree.features.memory_peak is False
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    for used in ("4096\n", "65536\n", "8192\n"):
        put(d, memory_current=used)
        run.pids_current()
    assert run.peak_memory() == 65536


def test_reset_makes_a_cgroup_count_like_a_new_one(kernel: FakeKernel) -> None:
    tree = tree_in(kernel)
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    run.init_memory(128 << 20)
    run.set_limits(128 << 20, 16, 1.0)
    put(
        d,
        cpu_stat="usage_usec 2000\n",
        memory_events="max 4\noom_kill 1\n",
        pids_events="max 2\n",
        pids_peak="16\n",
        memory_current="4096\n",
    )
    run.reset(max_processes=32)
    assert (run.cpu_ns(), run.oom_kills(), run.memory_failcnt(), run.pids_max_hits()) == (0, 0, 0, 0)
    assert run.pids_peak() == 0  # unknown until the count goes above the old peak
    assert (d / "pids.max").read_text() == "32" and (d / "memory.max").read_text() == str(128 << 20)
    put(
        d,
        cpu_stat="usage_usec 2500\n",
        memory_events="max 4\noom_kill 2\n",
        pids_events="max 2\n",
        pids_peak="17\n",
    )
    assert run.cpu_ns() == 500_000 and run.oom_kills() == 1 and run.pids_max_hits() == 0
    assert run.pids_peak() == 17


def test_kill_uses_cgroup_kill_and_removal_is_reported(kernel: FakeKernel) -> None:
    tree = tree_in(kernel)
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    (d / "cgroup.procs").write_text("999999999\n")  # no such process: signalling it is harmless
    assert run.signal_all() == 1
    assert (d / "cgroup.kill").read_text() == "1" and run.pids() == []
    assert run.signal_all() == 0  # nothing left: nothing written
    # A cgroup that cannot be removed (here: it has a child) is reported, not ignored.
    kernel.make(d / "nested")
    assert run.kill_and_remove() is False and d.exists()
    kernel.remove(d / "nested")
    assert run.kill_and_remove() is True and not d.exists()
    tree.destroy()
    assert not tree.parent.exists()


def test_without_cgroup_kill_every_member_is_signalled(kernel: FakeKernel) -> None:
    kernel.absent.add("cgroup.kill")  # Linux < 5.14
    tree = tree_in(kernel)
    assert tree.features.kill is False
    run = tree.new_run("r1")
    d = tree.parent / "r1"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / "cgroup.procs").write_text(f"{child.pid}\n")
        assert run.signal_all() == 1
        assert child.wait(timeout=30) == -9
    finally:
        child.kill()
    (d / "cgroup.procs").write_text("")
    assert run.kill_and_remove() is True


def test_leftovers_and_membership(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tree_in(kernel)
    tree.new_run("rkeep")
    tree.new_run("rleft")
    (tree.parent / "rleft" / "cgroup.procs").write_text("31337\n")
    assert tree.leftover_pids({"rkeep"}) == {"rleft": [31337]}
    proc = kernel.root.parent / "proc"
    (proc / "31337").mkdir(parents=True)
    monkeypatch.setattr(cgroup_v2, "PROC", proc)
    (proc / "31337" / "cgroup").write_text("0::/p/t/rleft\n")
    assert tree.run_of(31337) == "rleft"
    (proc / "31337" / "cgroup").write_text("0::/p/flywheel-runner\n")
    assert tree.run_of(31337) is None
    assert tree.run_of(31338) is None  # no such process


def test_stale_trees_of_dead_runners_are_removed(kernel: FakeKernel) -> None:
    kernel.make(kernel.root / "p", "cpu memory pids")
    (kernel.root / "p" / "cgroup.subtree_control").write_text("memory pids cpu\n")
    dead = kernel.root / "p" / "flywheel-sandbox-999999999-1"
    kernel.make(dead)
    kernel.make(dead / "rold")
    CgroupTreeV2.create("flywheel-sandbox-1-1", root=kernel.root, own="/p", proc_swaps=NO_SWAP)
    assert not dead.exists()


# --- the same interface on every kind of run cgroup ---------------------------------------------


def test_every_run_cgroup_has_the_interface() -> None:
    wanted = [n for n in dir(RunCgroupBase) if not n.startswith("_")]
    assert {"reset", "cpu_ns", "peak_memory", "kill_and_remove", "procs_files"} <= set(wanted)
    for cls in (isolation.RunCgroup, RunCgroupV2, NullCgroup):
        missing = [n for n in wanted if not hasattr(cls, n)]
        assert not missing, (cls.__name__, missing)
    NullCgroup().reset(memory_bytes=1)  # nothing to reset, and no error


def _v1_ready() -> bool:
    return (
        os.geteuid() == 0
        and (isolation.CGROUP_ROOT / "pids" / "cgroup.procs").exists()
        and not (isolation.CGROUP_ROOT / "cgroup.controllers").exists()
    )


@pytest.mark.skipif(not _v1_ready(), reason="needs root and cgroup v1 controllers")
def test_v1_reset_on_real_cgroups() -> None:
    """cgroup v1 on this host's real kernel: counters from a first process, reset, a second one."""
    tree = isolation.CgroupTree.create(f"{isolation.TREE_PREFIX}{os.getpid()}-reset")
    try:
        run = tree.new_run("r1")
        run.init_memory(64 << 20)
        run.set_limits(64 << 20, 8, 1.0)
        spin = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass\nx = b'x' * (8 << 20)\n"
        for attempt in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.read()\n" + spin], stdin=subprocess.PIPE
            )
            for f in run.procs_files:
                Path(f).write_text(str(proc.pid))
            assert proc.communicate(b"", timeout=60) == (None, None) and proc.returncode == 0
            assert run.cpu_ns() >= 200_000_000, attempt
            assert run.peak_memory() >= 8 << 20, attempt
            deadline = time.monotonic() + 10
            while run.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            run.reset(memory_bytes=32 << 20)
            assert run.cpu_ns() < 50_000_000 and run.peak_memory() < 8 << 20
            assert Path(run.s["memory"], "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
            run.set_limits(64 << 20, 8, 1.0)
        assert run.kill_and_remove()
    finally:
        tree.destroy()


# --- nothing of the host in the sandbox's launch -------------------------------------------------


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root and setpriv"
)
def test_launch_line_passes_no_host_path_or_variable(tmp_path: Path) -> None:
    """What bubblewrap would be started with: the runner's environment and working directory stay
    out (a sandbox without --as-pid-1 shows bubblewrap's environment as /proc/1/environ)."""
    layout = isolation.BwrapLayout("/usr/bin/bwrap", "/usr/bin/setpriv", "/usr/bin/python3")
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    procs.chmod(0o666)
    probe = [
        "/usr/bin/python3",
        "-S",
        "-c",
        "import os; print(open('/proc/self/environ', 'rb').read(), os.getcwd(), os.getuid())",
    ]
    out = subprocess.run(
        layout.wrap(probe, [str(procs)]),
        env={"PATH": "/usr/bin:/bin"},  # what the runner starts the launch line with
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.strip() == "b'PATH=/usr/bin:/bin\\x00' / 65534"  # no PWD, no cgroup path, cwd /
    assert procs.read_text().split() != []  # the shell joined the cgroup before dropping to uid 65534
