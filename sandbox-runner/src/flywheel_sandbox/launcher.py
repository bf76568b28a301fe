"""The zygote: the sandbox's first process, which forks one child per run; the child becomes the run.

This file is NOT imported by the runner: it is handed to bubblewrap as data and executed by the
sandbox image's own ``python3 -S`` (stdlib only). bubblewrap starts it as the pid namespace's
init (``--as-pid-1``). Arguments: the control socket's fd, the workspace directory, and the path
of the guard seccomp filter the runner built (``-`` for none, and for unsafe-local mode).

Protection of the zygote (runs share its uid 65534, so the kernel's same-user rules would let a
run reach it; see the README's "Warm pool" section for the whole argument):

* it is the namespace's init: signals sent from inside the namespace reach it only where it has a
  handler, and it has none (SIGINT goes back to the default; SIGKILL and SIGSTOP are never
  delivered to an init from its own namespace);
* it is non-dumpable: its ``/proc/1/mem``, ``environ``, ``fd`` and everything else ptrace-guarded
  are closed to the runs (and ``ptrace`` itself is refused by the sandbox's seccomp filter);
* every child installs the runner's guard filter before anything of the run is read: no
  ``prlimit``/``setpriority``/``sched_set*``/``ioprio_set``/``pidfd_open`` on pid 1, no ``F_SETOWN``
  to it, no POSIX message queues (they cannot be listed, so they could not be checked away);
* the child closes the control socket before anything else, so runs never hold it;
* after each run the zygote checks its own rlimits and scheduling state against its start and
  the IPC namespace for objects a run could leave behind (SysV IPC); any difference is reported
  and the runner destroys the sandbox.

The zygote never reads anything of a run (request, files, output): a child forked for the next
run starts from the same memory as the first one did.

Control socket (``SOCK_SEQPACKET``, one message per datagram; the runner's end has
``SO_PASSCRED``, so the kernel attaches the sender's pid, translated to the runner's namespace):

* zygote -> runner ``R``: ready (the runner learns the zygote's pid from the credentials);
* runner -> zygote ``X`` with fds (``SCM_RIGHTS``): stdin, stdout, stderr, request, status
  [, side channel]: start a run;
* child -> runner ``C``: forked (its credentials carry the child's pid; the runner puts that
  process in the run's cgroup and only then writes the request, so no byte of the program runs
  outside the run's cgroup);
* zygote -> runner ``W`` + 4-byte wait status + problems (UTF-8, empty when the run left
  nothing behind): the child has exited and has been reaped.

Per-run protocol of the child (unchanged from a one-shot launcher):

* request fd (read): 8-byte big-endian length, a ``marshal``-encoded header (version 4: plain
  dicts, lists, str, int, bool), then the bytes of every file back to back (sizes in the header).
* status fd (write): ``S`` when the user program starts, or ``E<message>`` when the request
  could not be set up (the runner reports SANDBOX_ERROR).

Start-up is kept lean on purpose: no ``site`` (-S; the two things of it programs rely on, the
dist-packages directories on ``sys.path`` and the ``exit``/``quit`` builtins, are set up by hand;
``.pth`` files are not processed), no ``json``/``re``/``traceback`` imports unless needed. Python
programs run in the forked interpreter the way ``python3 main.py args…`` runs them
(``sys.argv``, ``sys.path[0]``, a fresh ``__main__``, same traceback, same exit status); an
explicit command line, or a request that sets ``PYTHON*`` variables, is exec'd.
"""

import _signal  # type: ignore[import-not-found]  # `signal` without its enum wrappers (2 ms)
import _sitebuiltins
import _socket
import atexit
import builtins
import ctypes
import marshal
import os
import resource
import sys

# Set in the child from the fds the runner sent: request fd, status fd, side-channel fd.
REQ_FD = STATUS_FD = SIDE_FD = -1
WORKSPACE = ""
SIDE_FD_FOR_PROGRAM = 5
SITE_DIRS = (
    f"/usr/local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/dist-packages",
    "/usr/lib/python3/dist-packages",
)
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# ioprio_get's number where it is known (the runner's guard filter refuses ioprio_set on pid 1
# everywhere; this is only the after-run check).
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)
RLIMITS = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))
# A run's objects that outlive its processes and are only listed per IPC namespace (so the runner,
# outside it, cannot see them): SysV IPC objects. Read only after a run; anything found means
# "destroy, do not reuse". (Sockets, which can linger after their process, are counted by the runner
# through /proc/<pid>/net/sockstat before it arms the next run.)
SYSV_TABLES = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")

libc = ctypes.CDLL(None, use_errno=True)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


GUARD = None  # (buffer, sock_fprog) of the guard filter, kept alive for every child


def _site():
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    for path in SITE_DIRS:
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)


def _read_exact(fd, n):
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("request stream ended early")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _fail(message):
    os.write(STATUS_FD, b"E" + message.encode("utf-8", "replace")[:4000])
    os._exit(125)


def _write_files(header, fd):
    for spec in header["files"]:
        data = _read_exact(fd, spec["size"]) if spec["size"] else b""
        path = WORKSPACE + "/" + spec["path"]
        parent = path.rpartition("/")[0]
        if parent != WORKSPACE:
            os.makedirs(parent, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        out = os.open(path, flags, 0o755 if spec.get("executable") else 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)


def _set_limits(limits):
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(limits["cpu_s"]) + int(used.ru_utime + used.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size"], limits["file_size"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))


def _close_fds(keep):
    # The program sees fds 0-2 only (plus the side channel when the runner asked for it).
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 64))
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _run_script(entry):
    # What `python3 main.py` does for a script (runpy.run_path would cost ~9 ms more, mostly
    # importing zip/package machinery a plain file never needs): a fresh `__main__` module, the
    # file compiled under its own name, executed in the module's namespace.
    with open(entry, "rb") as fh:
        source = fh.read()
    module = type(sys)("__main__")
    module.__file__ = entry
    module.__builtins__ = builtins
    module.__cached__ = None
    sys.modules["__main__"] = module
    code = compile(source, entry, "exec", dont_inherit=True)
    exec(code, module.__dict__)


def _print_exception(err, entry):
    tb = err.__traceback__
    if isinstance(err, SyntaxError):
        tb = None
    else:
        # Start at the user's first frame, as `python3 main.py` shows it.
        while tb is not None and tb.tb_frame.f_code.co_filename != entry:
            tb = tb.tb_next
        tb = tb if tb is not None else err.__traceback__
    try:
        import traceback

        traceback.print_exception(type(err), err, tb)
    except BaseException:
        sys.stderr.write(f"Traceback (most recent call last):\n{type(err).__name__}: {err}\n")


def _exit_code(err):
    # The interpreter's rules for SystemExit's argument: None -> 0, int -> itself, else print -> 1.
    arg = err.code
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg & 0xFF
    try:
        sys.stderr.write(str(arg) + "\n")
    except Exception:
        pass
    return 1


def _finish(code):
    """The interpreter's shutdown minus module teardown: join non-daemon threads (if threading was
    used), run atexit handlers, flush stdio, exit. Skipping module teardown saves several ms."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120
    os._exit(code)


def run():
    """The run, in the forked child, once its request fd is readable: what a one-shot launcher did."""
    try:
        size = int.from_bytes(_read_exact(REQ_FD, 8), "big")
        header = marshal.loads(_read_exact(REQ_FD, size))
        os.chdir(WORKSPACE)
        _write_files(header, REQ_FD)
    except Exception as err:
        _fail(f"{type(err).__name__}: {err}")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKSPACE, "LANG": "C.UTF-8"}
    env.update(header.get("env") or {})
    try:
        _set_limits(header["limits"])
    except Exception as err:
        _fail(f"cannot set rlimits: {err}")
    os.write(STATUS_FD, b"S")
    keep = -1
    if header.get("side"):
        if SIDE_FD != SIDE_FD_FOR_PROGRAM:
            os.dup2(SIDE_FD, SIDE_FD_FOR_PROGRAM)
        keep = SIDE_FD_FOR_PROGRAM
    _close_fds(keep)
    if keep > 0:
        os.set_inheritable(keep, True)

    argv = header.get("argv")
    if argv:
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as err:
            sys.stderr.write(f"sandbox: cannot run {argv[0]!r}: {err.strerror}\n")
            sys.stderr.flush()
            os._exit(127)

    _site()
    entry = header["entry"]
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [entry, *(header.get("args") or [])]
    sys.path[0] = os.path.abspath(os.path.dirname(entry))
    try:
        _run_script(entry)
        code = 0
    except SystemExit as err:
        code = _exit_code(err)
    except BaseException as err:
        _print_exception(err, entry)
        code = 1
    _finish(code)


# --- the zygote ----------------------------------------------------------------------------------


def _child(ctl, fds):
    """In the forked child: report, leave everything of the zygote behind, become the run."""
    global REQ_FD, STATUS_FD, SIDE_FD
    try:
        ctl.send(b"C")  # the kernel attaches this process's pid: the runner moves it into the run's cgroup
        ctl.close()
        os.setsid()  # its own session and process group: nothing of the run can address the zygote's group
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # like any fresh process (the zygote's own is 0)
        if GUARD is not None and libc.prctl(
            PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(GUARD[1]), 0, 0
        ):
            os.write(fds[4], b"Ecannot install the guard seccomp filter: errno %d" % ctypes.get_errno())
            os._exit(125)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # as a fresh interpreter has it
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        REQ_FD, STATUS_FD = fds[3], fds[4]
        SIDE_FD = fds[5] if len(fds) > 5 else -1
    except BaseException:
        os._exit(125)
    run()


def _own_state():
    """What a run inherits from the zygote and could try to change from outside (prlimit & co)."""
    prio = libc.syscall(IOPRIO_GET, 1, 0) if IOPRIO_GET else 0  # IOPRIO_WHO_PROCESS, self
    return (
        tuple(resource.getrlimit(r) for r in RLIMITS),
        os.getpriority(os.PRIO_PROCESS, 0),
        tuple(sorted(os.sched_getaffinity(0))),
        os.sched_getscheduler(0),
        os.sched_getparam(0).sched_priority,
        prio,
    )


def _leftovers():
    """Objects of the sandbox's namespaces that a run left behind (counts only, never contents)."""
    found = []
    for path in SYSV_TABLES:
        try:
            with open(path, "rb") as fh:
                if fh.read().count(b"\n") > 1:  # more than the header
                    found.append(path.rpartition("/")[2])
        except OSError:
            continue
    return found


def _wait(main_pid):
    """Reaps the run's child (and any orphan of the run handed to this init); its wait status."""
    status = None
    stray = False
    while status is None:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0xFF00, True  # cannot happen: the child is ours until reaped
        if pid == main_pid:
            status = st
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            stray = True  # an orphan of the run is still alive
            break
    return status, stray


def zygote(ctl_fd, guard_path):
    global GUARD
    checks = guard_path != "-"
    ctl = _socket.socket(fileno=ctl_fd)
    _close_fds(ctl_fd)
    try:
        if checks:
            if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0):
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
            with open(guard_path, "rb") as fh:
                bpf = fh.read()
            buf = ctypes.create_string_buffer(bpf, len(bpf))
            GUARD = (buf, _Fprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p)))
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # no handler: an init ignores what it does not handle
        os.chdir("/")
        state = _own_state()
    except Exception as err:
        ctl.send(b"E" + f"zygote setup: {type(err).__name__}: {err}".encode()[:4000])
        os._exit(125)
    ctl.send(b"R")
    fd_space = 8 * 4 * 2
    while True:
        try:
            msg, anc, _, _ = ctl.recvmsg(16, fd_space)
        except OSError:
            os._exit(0)
        fds = []
        for level, kind, data in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4))
        if msg != b"X" or len(fds) not in (5, 6):
            os._exit(0)  # the runner closed the socket (or spoke nonsense): the sandbox ends
        pid = os.fork()
        if pid == 0:
            _child(ctl, fds)
            os._exit(125)  # not reached
        for fd in fds:
            os.close(fd)
        status, stray = _wait(pid)
        problems = []
        if checks:
            if stray:
                problems.append("processes left")
            problems += _leftovers()
            if _own_state() != state:
                problems.append("zygote state changed")
        ctl.send(b"W" + status.to_bytes(4, "big") + ",".join(problems).encode())


if __name__ == "__main__":
    WORKSPACE = sys.argv[2]
    zygote(int(sys.argv[1]), sys.argv[3])
