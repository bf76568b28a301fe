"""pytest plugin the runner loads inside the sandbox (``-p flywheel_guard``); stdlib + pytest only.

It is NOT imported by the runner: it is bound read-only into the sandbox. At import (before any
workspace code runs) it reads a per-run secret key from stdin and points stdin at /dev/null. It
records what pytest collected and each test's outcome as pytest reports it, and at the very end
of the session sends that record plus the JUnit XML that ``--junitxml`` wrote, authenticated
with HMAC-SHA256 under the key, on fd 5 (the run's side channel). A test that exits the process
early, forges the XML file or writes to fd 5 itself cannot produce a message that verifies.
"""

import hashlib
import hmac
import json
import os


def _take_key():
    raw = b""
    while len(raw) < 65:
        chunk = os.read(0, 65 - len(raw))
        if not chunk:
            break
        raw += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return raw.strip()


def _make_plugin(key):
    # The key lives only in this closure; nothing module-level names it.
    state = {"collected": [], "outcomes": {}, "xml": None}

    class FlywheelGuard:
        def pytest_configure(self, config):
            state["xml"] = getattr(config.option, "xmlpath", None)

        def pytest_collection_finish(self, session):
            state["collected"] = [item.nodeid for item in session.items]

        def pytest_runtest_logreport(self, report):
            prev = state["outcomes"].get(report.nodeid)
            if hasattr(report, "wasxfail"):
                outcome = "xpassed" if report.passed else "xfailed"
            elif report.when == "call":
                outcome = report.outcome
            elif report.failed:
                outcome = "error"
            elif report.skipped:
                outcome = "skipped"
            else:
                return
            if prev in ("error", "failed") and outcome not in ("error", "failed"):
                return
            if report.when == "teardown" and report.failed and prev == "passed":
                outcome = "error"
            state["outcomes"][report.nodeid] = outcome

        def pytest_unconfigure(self, config):
            xml = ""
            if state["xml"]:
                try:
                    with open(state["xml"], encoding="utf-8", errors="replace") as fh:
                        xml = fh.read(16 * 1024 * 1024)
                except OSError:
                    xml = ""
            body = json.dumps(
                {"collected": state["collected"], "outcomes": state["outcomes"], "junit": xml},
                sort_keys=True,
            ).encode()
            mac = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
            message = mac + b"\n" + body
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(5, view) :]
                os.close(5)
            except OSError:
                pass

    return FlywheelGuard()


def pytest_configure(config):
    if _PLUGIN is not None:
        config.pluginmanager.register(_PLUGIN, "flywheel-guard-impl")


# Only inside a RunTests sandbox (the runner sets the flag): importing this module anywhere else
# must not read stdin or replace fd 0.
_PLUGIN = _make_plugin(_take_key()) if os.environ.get("FLYWHEEL_SANDBOX_GUARD") == "1" else None
