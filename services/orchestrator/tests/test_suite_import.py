"""Suite import and reload: every problem at once, test ids checked statically, no silent skips.

The unit tests call ``flywheel_orchestrator.suite_check`` and the catalog directly; the service
tests boot the orchestrator in-process (no sandbox or model needed for suites) on the session's
nats-server and a fresh filesystem object store, and talk to it over gRPC.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, suite_pb2
from flywheel_common import auth
from flywheel_orchestrator import suites as S
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suite_check import check_suite, collect_tests
from flywheel_testing.services import boot_service

MINI = Path(__file__).parent / "fixtures" / "mini"

PARAM_TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("n", [1, 2])
    def test_f(n):
        assert n

    @pytest.mark.parametrize("x", [0, 1])
    @pytest.mark.parametrize("y", ["a", "b"])
    def test_two(x, y):
        pass

    @pytest.mark.parametrize(
        "a,b", [(1, 2), pytest.param(3, 4, id="custom"), ("\\u00e9", None)], ids=["first", None, None]
    )
    def test_multi(a, b):
        pass

    @pytest.mark.parametrize("v", [1, 1, "1", 2.5, -3, True, (1, 2), b"\\x00"])
    def test_dupes(v):
        pass

    CASES = [1, 2]

    @pytest.mark.parametrize("c", CASES)
    def test_dynamic(c):
        pass

    def test_plain():
        pass

    class TestK:
        @pytest.mark.parametrize("n", [7])
        def test_m(self, n):
            pass
    """
)


def _task(test_ids: list[str], extra_toml: str = "", test_source: str = PARAM_TESTS) -> dict[str, bytes]:
    ids = ", ".join(f'"{t}"' for t in test_ids)
    return {
        "task.toml": f'problem_statement = "fix it"\nfail_to_pass = [{ids}]\n{extra_toml}'.encode(),
        "repo/calc.py": b"def add(a, b):\n    return a - b\n",
        "repo/tests/test_calc.py": test_source.encode(),
    }


def _suite(name: str, tasks: dict[str, dict[str, bytes]], manifest: str | None = None) -> dict[str, bytes]:
    files = {"suite.toml": (manifest or f'name = "{name}"\n').encode()}
    for task_id, task_files in tasks.items():
        files.update({f"tasks/{task_id}/{path}": data for path, data in task_files.items()})
    return files


def test_static_ids_match_what_pytest_collects(tmp_path: Path) -> None:
    # The test file is ours (trusted), so real pytest may collect it: the two lists must agree
    # wherever the parameters are literals.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text(PARAM_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    collected = {line for line in done.stdout.splitlines() if "::" in line}
    assert collected, done.stdout + done.stderr
    static = collect_tests("tests/test_calc.py", PARAM_TESTS.encode())
    known: set[str] = set()
    for base, test in static.tests.items():
        if test.params is not None:
            known.update(f"{base}[{p}]" for p in test.params)
        elif not test.parametrised:
            known.add(base)
    assert static.tests["tests/test_calc.py::test_dynamic"].params is None  # CASES is a variable
    dynamic = {c for c in collected if "::test_dynamic[" in c}
    assert known == collected - dynamic
    assert "tests/test_calc.py::test_dupes[1_0]" in known and "tests/test_calc.py::test_two[a-1]" in known


def test_every_problem_is_reported_at_once() -> None:
    files = _suite(
        "bad-suite",
        {
            "param": _task(["tests/test_calc.py::test_f"]),
            "typo": _task(["tests/test_calc.py::test_nope", "tests/test_calc.py::test_f[3]"]),
            "dynamic": _task(["tests/test_calc.py::test_dynamic"], 'colour = "red"\n'),
            "plain-with-params": _task(["tests/test_calc.py::test_plain[1]"]),
            "missing": _task(["tests/test_gone.py::test_x"], 'test_targets = ["nowhere"]\n'),
            "good": _task(["tests/test_calc.py::test_f[1]", "tests/test_calc.py::TestK::test_m[7]"]),
        },
        manifest='name = "bad-suite"\nowner = "me"\n',
    )
    result = check_suite(files, name="bad-suite", source="test")
    text = "\n".join(str(p) for p in result.problems)
    assert result.suite is None
    expected = [
        "suite.toml: unknown key `owner`",
        "tasks/param/task.toml: fail_to_pass: test 'tests/test_calc.py::test_f' is parametrised, so pytest "
        "runs it only under ids with parameters: tests/test_calc.py::test_f[1], tests/test_calc.py::test_f[2]",
        "tasks/typo/task.toml: fail_to_pass: test 'tests/test_calc.py::test_nope' does not exist in "
        "tests/test_calc.py; its tests are: tests/test_calc.py::test_f[1]",
        "tasks/typo/task.toml: fail_to_pass: test 'tests/test_calc.py::test_f[3]' does not exist; its ids "
        "are: tests/test_calc.py::test_f[1], tests/test_calc.py::test_f[2]",
        "tasks/dynamic/task.toml: unknown key `colour`",
        "tasks/dynamic/task.toml: fail_to_pass: test 'tests/test_calc.py::test_dynamic' is parametrised and "
        "its parametrize cannot be read without running it",
        "tasks/plain-with-params/task.toml: fail_to_pass: test 'tests/test_calc.py::test_plain' is not "
        "parametrised",
        "tasks/missing/task.toml: fail_to_pass: test 'tests/test_gone.py::test_x' names "
        "'tests/test_gone.py', which is not in repo/",
        "tasks/missing/task.toml: test_targets: 'nowhere' names nothing in repo/",
    ]
    for needle in expected:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "tasks/good" not in text
    assert len(result.errors) == len(expected)


def test_a_clean_suite_passes_and_matches_the_loader() -> None:
    files = S.read_folder(MINI)
    result = check_suite(files, name="mini", source=str(MINI))
    assert result.problems == [] and result.suite is not None
    assert result.suite.version == S.load_folder(MINI).version


def test_catalog_reports_broken_suites_and_reloads_changed_folders(tmp_path: Path) -> None:
    root = tmp_path / "suites"
    shutil.copytree(MINI, root / "mini")
    catalog = S.SuiteCatalog([root])
    catalog.reload()
    assert "mini" in catalog.suites and not catalog.failures
    assert catalog.refresh() is False  # nothing changed: nothing is read again
    broken = root / "broken"
    (broken / "tasks" / "t1" / "repo" / "tests").mkdir(parents=True)
    (broken / "suite.toml").write_text('name = "broken"\n')
    (broken / "tasks" / "t1" / "task.toml").write_text(
        'problem_statement = "x"\nfail_to_pass = ["tests/test_a.py::test_missing"]\nsize = 3\n'
    )
    (broken / "tasks" / "t1" / "repo" / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    assert catalog.refresh() is True
    failure = catalog.failure("broken")
    assert failure is not None and failure.source == str(broken)
    assert "unknown key `size`" in failure.error and "test_missing" in failure.error
    assert failure.to_proto().load_error == failure.error
    assert "mini" in catalog.suites  # one broken suite takes nothing else down


async def test_import_list_reload_over_grpc(service_env: dict[str, str], tmp_path: Path) -> None:
    objects = Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
    env = {
        **service_env,
        "FLYWHEEL_SANDBOX_ADDRESS": "127.0.0.1:9",
        "FLYWHEEL_TRAJECTORY_ADDRESS": "127.0.0.1:9",
    }
    async with boot_service(build_app, OrchestratorSettings, env) as address:
        async with auth.channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)

            def request(files: dict[str, bytes], **kw: object) -> opb.ImportSuiteRequest:
                return opb.ImportSuiteRequest(
                    files=[suite_pb2.SuiteFile(path=p, content=c) for p, c in files.items()], **kw
                )

            bad = _suite("mine", {"t": _task(["tests/test_calc.py::test_f", "tests/test_calc.py::test_zz"])})
            checked = await stub.ImportSuite(request(bad, validate_only=True))
            assert not checked.HasField("suite") and len(checked.problems) == 2
            assert "test_f[1], tests/test_calc.py::test_f[2]" in checked.problems[0].message
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportSuite(request(bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "suite 'mine' has 2 problems, nothing was imported" in err.value.details()
            assert not (objects / "suites").exists()

            good = _suite("mine", {"t": _task(["tests/test_calc.py::test_f[2]"])})
            # Without suite.toml, under another name: the manifest is written for it.
            del good["suite.toml"]
            reply = await stub.ImportSuite(request(good, name="imported"))
            assert reply.suite.name == "imported" and reply.suite.source == "suites/imported/"
            assert (objects / "suites" / "imported" / "suite.toml").is_file()
            listed = {s.name: s for s in (await stub.ListSuites(opb.ListSuitesRequest())).suites}
            assert listed["imported"].task_count == 1 and not listed["imported"].load_error
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportSuite(request(good, name="imported"))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            again = await stub.ImportSuite(request(good, name="imported", replace=True))
            assert again.suite.version == reply.suite.version

            # Written into the store by someone else (another replica, a script): picked up by
            # ListSuites, and when broken, listed with its error rather than skipped.
            stray = objects / "suites" / "stray"
            (stray / "tasks" / "x" / "repo").mkdir(parents=True)
            (stray / "suite.toml").write_text('name = "stray"\n')
            (stray / "tasks" / "x" / "task.toml").write_text('problem_statement = "x"\n')
            (stray / "tasks" / "x" / "repo" / "a.py").write_text("")
            listed = {s.name: s for s in (await stub.ListSuites(opb.ListSuitesRequest())).suites}
            assert "fail_to_pass` is required" in listed["stray"].load_error
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSuite(opb.GetSuiteRequest(suite="stray"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "stray" in err.value.details() and "fail_to_pass" in err.value.details()
            reloaded = await stub.ReloadSuites(opb.ReloadSuitesRequest())
            assert [f.name for f in reloaded.failed] == ["stray"] and reloaded.suite_count >= 3

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportSuite(opb.ImportSuiteRequest())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "files" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportSuite(request({"tasks/t/task.toml": b""}))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name:" in err.value.details()


# Each part is mostly valid (so whole suites load often enough to compare with the loader) and
# sometimes broken in one of many ways: unparsable, unreadable or undecidable test files, wrong
# ids, bad TOML or JSON (deeply nested too), stray and forbidden files, bad names.
def _mostly(valid: list[object], broken: list[object]) -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(broken)
    )


_SOURCES = _mostly(
    [PARAM_TESTS],
    [
        "def test_a():\n    pass\n",
        "from helpers import test_shared\n",
        "import pytest\npytestmark = pytest.mark.parametrize('n', [1, 2])\ndef test_a(n):\n    pass\n",
        "import pytest\n@pytest.fixture(params=[1, 2])\ndef num(request):\n    return request.param\n"
        "def test_a(num):\n    pass\n",
        "class TestBase(Base):\n    def test_x(self):\n        pass\n",
        "@pytest.mark.parametrize()\ndef test_a():\n    pass\n",
        "@pytest.mark.parametrize('a,b', [1, (1,), pytest.param(id=3)], ids=lambda v: v)\ndef test_a(a, b):\n"
        "    pass\n",
        "def test_(:\n",
        "x = " + "(" * 5000 + ")" * 5000 + "\n",
        "\udcff",
    ],
)
_IDS = _mostly(
    ["test_f[1]", "test_f[2]", "test_plain", "test_multi[custom]", "TestK::test_m[7]", "test_two[b-1]"],
    ["test_a", "test_f", "test_two[a-0]", "test_shared", "test_x", "nope[", "test_plain[1]", ""],
)
_TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["[", "a=" + "[" * 3000, '"""', "\x00"]))


@st.composite
def _task_files(draw: st.DrawFn) -> dict[str, bytes]:
    test_file = str(draw(_mostly(["tests/test_calc.py"], ["test_other.py", "calc.py", "../x.py"])))
    ids = draw(st.lists(_IDS.map(lambda t: f"{test_file}::{t}" if t else test_file), min_size=1, max_size=3))
    good = f"problem_statement = 'x'\nfail_to_pass = {json.dumps(ids)}\n"
    toml = draw(
        st.one_of(
            _mostly(
                [good, good + "test_targets = ['tests']\n", good + "limits = { wall_time_s = 5 }\n"],
                [
                    good + "test_targets = ['zz']\n",
                    f"fail_to_pass = {json.dumps(ids)}\nlimits = {{ wall_time_s = -1 }}\nextra = 1\n",
                ],
            ),
            _TEXT,
        )
    )
    files = {"task.toml": str(toml).encode("utf-8", "surrogatepass")}
    files[f"repo/{test_file}"] = str(draw(_SOURCES)).encode("utf-8", "surrogatepass")
    files["repo/calc.py"] = b"def add(a, b):\n    return a - b\n"
    if draw(st.integers(0, 3)) == 0:
        extra = draw(st.sampled_from(["repo/conftest.py", "fix/tests/test_calc.py", "x", "fix/calc.py"]))
        files[extra] = draw(st.sampled_from([b"", b"\xff", b"x = 1\n"]))
    return files


@st.composite
def _suite_files(draw: st.DrawFn) -> dict[str, bytes]:
    manifest = str(draw(_mostly(['name = "fz"\n'], ['name = "fz"\ntrain_ratio = 2\n', "[", 'name = "x"\n'])))
    files = {"suite.toml": manifest.encode()}
    task_ids = _mostly(["t1", "t2", "t3", "t4"], ["Bad Id", ".."])
    for task_id in draw(st.lists(task_ids, max_size=3, unique=True)):
        files.update({f"tasks/{task_id}/{p}": d for p, d in draw(_task_files()).items()})
    if draw(st.booleans()):
        line = draw(
            _mostly(
                ['{"query_id": "q", "question": "?", "input_output": {"inputs": ["1"], "outputs": ["1"]}}'],
                [
                    '{"query_id": "t1", "question": "?", "input_output": {"inputs": ["1"], "outputs": ["1"]}}',
                    '{"query_id": "q2", "question": "?", "input_output": {"inputs": [], "outputs": []}}',
                    "[" * 5000,
                    "not json",
                ],
            )
        )
        files["problems.jsonl"] = (str(line) + "\n").encode()
    return files


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_suite_files())
def test_the_check_never_raises_and_agrees_with_the_loader(files: dict[str, bytes]) -> None:
    result = check_suite(files, name="fz", source="fuzz")
    if result.suite is not None:
        assert result.errors == []
        assert (
            S.build_suite(files, folder_name="fz", source="fuzz", bundled=False).version
            == result.suite.version
        )
    else:
        assert result.errors, "a suite that did not load must say why"
