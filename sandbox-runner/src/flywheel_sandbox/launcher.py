"""The process that waits inside a warm sandbox and becomes the run.

This file is NOT imported by the runner: it is handed to bubblewrap as data and executed by the
sandbox image's own ``python3 -S`` (stdlib only). It is the "warm" part of the pool: the
interpreter has already started when a request arrives, so a Python run only pays for its own
code. Protocol with the runner (file descriptors given on the command line):

* request fd (read): 8-byte big-endian length, a ``marshal``-encoded header (version 4: plain
  dicts, lists, str, int, bool), then the bytes of every file back to back (sizes in the header).
* status fd (write): ``R`` once the interpreter is ready; ``S`` when the user program starts; or
  ``E<message>`` when the request could not be set up (the runner reports SANDBOX_ERROR).

Start-up is kept lean on purpose (it is CPU paid per run): no ``site`` (-S; the two things of it
programs rely on, the dist-packages directories on ``sys.path`` and the ``exit``/``quit``
builtins, are set up by hand; ``.pth`` files are not processed), no ``json``/``re``/``traceback``
imports unless needed. Python programs run in this interpreter the way ``python3 main.py args…``
runs them (``sys.argv``, ``sys.path[0]``, a fresh ``__main__``, same traceback, same exit
status); an explicit command line, or a request that sets ``PYTHON*`` variables, is exec'd.
"""

import atexit
import builtins
import marshal
import os
import resource
import sys

# Set from argv in `__main__`: request fd, status fd, side-channel fd, workspace directory.
REQ_FD = STATUS_FD = SIDE_FD = -1
WORKSPACE = ""
SIDE_FD_FOR_PROGRAM = 5
SITE_DIRS = (
    f"/usr/local/lib/python{sys.version_info[0]}.{sys.version_info[1]}/dist-packages",
    "/usr/lib/python3/dist-packages",
)


def _site():
    import _sitebuiltins

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


def main():
    os.write(STATUS_FD, b"R")
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


if __name__ == "__main__":
    REQ_FD, STATUS_FD, SIDE_FD = (int(x) for x in sys.argv[1:4])
    WORKSPACE = sys.argv[4]
    main()
