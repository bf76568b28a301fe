"""Suite loading, versioning, the deterministic split, and the importers (no services needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel_orchestrator import suites as S
from flywheel_orchestrator.suites import SuiteError, load_folder

MINI = Path(__file__).parent / "fixtures" / "mini"


def test_mini_suite_loads_with_its_split() -> None:
    suite = load_folder(MINI)
    assert suite.name == "mini" and len(suite.tasks) == 4 and len(suite.version) == 16
    assert {t.id: t.split for t in suite.tasks.values()} == {
        "add-bug": common_pb2.TASK_SPLIT_TRAIN,
        "double": common_pb2.TASK_SPLIT_TRAIN,
        "greet-bug": common_pb2.TASK_SPLIT_TEST,
        "upper": common_pb2.TASK_SPLIT_TEST,
    }
    add = suite.tasks["add-bug"]
    assert isinstance(add, S.RepoTask) and add.test_targets == ("tests/test_calc.py",)
    assert set(add.test_files) == {"tests/test_calc.py"} and add.fix == {
        "calc.py": "def add(a, b):\n    return a + b\n"
    }
    proto = suite.to_proto()
    assert (proto.train_task_count, proto.test_task_count) == (2, 2)
    assert list(proto.kinds) == [common_pb2.TASK_KIND_REPO, common_pb2.TASK_KIND_IO]


def test_split_is_a_pure_function_of_the_id() -> None:
    sides = {S.split_of(f"task-{i}", seed="s", train_ratio=0.7) for i in range(200)}
    assert sides == {common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST}
    train = sum(
        S.split_of(f"task-{i}", seed="s", train_ratio=0.7) == common_pb2.TASK_SPLIT_TRAIN for i in range(2000)
    )
    assert 1300 < train < 1500  # ~70 %
    assert S.split_of("x", seed="a", train_ratio=0.5) == S.split_of("x", seed="a", train_ratio=0.5)


def test_any_change_changes_the_version(tmp_path: Path) -> None:
    copy = tmp_path / "mini"
    shutil.copytree(MINI, copy)
    before = load_folder(copy)
    (copy / "tasks/add-bug/repo/calc.py").write_text("def add(a, b):\n    return a - b  # changed\n")
    after = load_folder(copy)
    assert before.version != after.version
    assert {t.id: t.split for t in before.tasks.values()} == {t.id: t.split for t in after.tasks.values()}


@pytest.mark.parametrize(
    ("path", "content", "needle"),
    [
        ("suite.toml", 'name = "other"\n', "differs from its folder"),
        ("suite.toml", 'name = "mini"\ntrain_ratio = 1.5\n', "train_ratio"),
        (
            "tasks/add-bug/task.toml",
            'problem_statement = "x"\nfail_to_pass = ["tests/test_nope.py::t"]\n',
            "not in repo/",
        ),
        ("tasks/add-bug/task.toml", 'problem_statement = "x"\nfail_to_pass = []\n', "at least one test"),
        ("tasks/add-bug/task.toml", "problem_statement = \n", "invalid TOML"),
        ("tasks/add-bug/fix/tests/test_calc.py", "def test_add(): pass\n", "may not change test files"),
        ("tasks/add-bug/repo/conftest.py", "", "conftest.py is not allowed"),
        (
            "problems.jsonl",
            '{"query_id": "q", "question": "?", "input_output": {"inputs": ["1"], "outputs": []}}\n',
            "1 inputs but 0 outputs",
        ),
        ("problems.jsonl", "{not json\n", "problems.jsonl:1: invalid JSON"),
        ("stray.txt", "x", "unexpected file"),
    ],
)
def test_malformed_suites_are_rejected_naming_the_file(
    tmp_path: Path, path: str, content: str, needle: str
) -> None:
    copy = tmp_path / "mini"
    shutil.copytree(MINI, copy)
    target = copy / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    with pytest.raises(SuiteError) as err:
        load_folder(copy)
    assert needle in str(err.value)


def test_catalog_keeps_good_suites_and_reports_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "suites" / "mini"
    shutil.copytree(MINI, good)
    bad = tmp_path / "suites" / "broken"
    bad.mkdir()
    (bad / "suite.toml").write_text('name = "broken"\n')
    catalog = S.SuiteCatalog([tmp_path / "suites"])
    catalog.reload()
    assert "mini" in catalog.suites and "broken" not in catalog.suites
    assert any("no tasks" in e for e in catalog.errors.values())


def test_import_repo_task_directory(tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    shutil.copytree(MINI / "tasks", source)
    suite = S.import_repo_tasks(source, tmp_path / "out" / "my-bugs", name="my-bugs", description="Ours.")
    assert set(suite.tasks) == {"add-bug", "greet-bug"}
    reloaded = load_folder(tmp_path / "out" / "my-bugs")
    assert reloaded.version == suite.version and reloaded.name == "my-bugs"
    (source / "add-bug" / "task.toml").write_text('problem_statement = "x"\nfail_to_pass = []\n')
    with pytest.raises(SuiteError, match="add-bug"):
        S.import_repo_tasks(source, tmp_path / "out" / "again", name="again")
    assert not (tmp_path / "out" / "again").exists()  # nothing half-written


def test_import_seed_003_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "Solve it.",
            "question": "Print the sum of two integers.",
            "query_id": 17,
            "input_output": json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}),
        },
        {
            "prompt": "",
            "question": "Echo.",
            "query_id": "echo",
            "input_output": {"inputs": ["a\n"], "outputs": ["a\n"], "remote": False},
        },
    ]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = S.import_io_problems(src, tmp_path / "io-a", name="io-a")
    assert set(suite.tasks) == {"17", "echo"}
    task = suite.tasks["17"]
    assert isinstance(task, S.IoTask) and task.inputs == ("1 2\n", "5 5\n") and task.prompt == "Solve it."
    pq = pytest.importorskip(
        "pyarrow.parquet", reason="pyarrow is installed by make install (datasets needs it)"
    )
    import pyarrow as pa

    # Parquet columns have one type: ids as text, input_output as JSON text (both are accepted).
    table = pa.Table.from_pylist(
        [
            {
                **r,
                "query_id": str(r["query_id"]),
                "input_output": r["input_output"]
                if isinstance(r["input_output"], str)
                else json.dumps(r["input_output"]),
            }
            for r in rows
        ]
    )
    pq.write_table(table, tmp_path / "p.parquet")
    suite2 = S.import_io_problems(tmp_path / "p.parquet", tmp_path / "io-b", name="io-b")
    assert set(suite2.tasks) == {"17", "echo"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "x", "question": "q", "input_output": {"inputs": [1], "outputs": ["1"]}}\n')
    with pytest.raises(SuiteError, match=r"bad.jsonl:1: every input and output must be a string"):
        S.import_io_problems(bad, tmp_path / "io-c", name="io-c")
