"""Checks shared by runs, evaluations and loops, each naming the bad field by its full path.

Every request message embeds the same pieces (a suite and task selection, an
``EpisodeSettings``, labels); each piece is checked once here, with the path of the message it
sits in (``run``, ``evaluation``, ``loop``), so an error reads ``loop.episode.sampling.top_p:
must be in (0, 1]`` whatever the resource.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator import rewards
from flywheel_orchestrator import skills as skill_docs
from flywheel_orchestrator.mltasks import MlTask
from flywheel_orchestrator.suites import AnyTask, Suite, SuiteCatalog, SuiteError

LABEL_KEY = re.compile(r"^[a-z0-9_.-]{1,63}$")


def suite(catalog: SuiteCatalog, name: str, path: str) -> Suite:
    if not name:
        raise InvalidArgument(f"{path}.suite", "is required")
    found = catalog.get(name)
    if found is None:
        known = ", ".join(sorted(catalog.suites)) or "none"
        raise NotFound(f"suite {name!r} does not exist (known: {known})")
    return found


def tasks(
    found: Suite, split: common_pb2.TaskSplit, task_ids: Sequence[str], path: str, ids_field: str = "task_ids"
) -> list[AnyTask]:
    """The selected tasks of one side of the split; an empty selection is FAILED_PRECONDITION."""
    if split not in (common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST):
        raise InvalidArgument(f"{path}.split", "must be TASK_SPLIT_TRAIN or TASK_SPLIT_TEST")
    try:
        selected = found.select(split, list(task_ids))
    except KeyError as err:
        raise NotFound(f"{path}.{ids_field}: suite {found.name!r} has no task {err.args[0]!r}") from None
    except SuiteError as err:
        raise InvalidArgument(f"{path}.{ids_field}", str(err)) from None
    if not selected:
        raise FailedPrecondition(
            f"suite {found.name!r} has no task on the {common_pb2.TaskSplit.Name(split)} side"
        )
    return selected


def teacher(
    kind: tpb.TeacherKind, model: str, selected: Sequence[AnyTask], path: str, model_field: str = "model"
) -> None:
    kind = kind or tpb.TEACHER_KIND_MODEL
    if kind == tpb.TEACHER_KIND_MODEL:
        if not model:
            raise InvalidArgument(
                f"{path}.{model_field}", "is required for a MODEL teacher (a model name the gateway serves)"
            )
    elif kind == tpb.TEACHER_KIND_REFERENCE:
        if model:
            raise InvalidArgument(f"{path}.{model_field}", "must be empty for the REFERENCE teacher")
        missing = [t.id for t in selected if not t.has_reference]
        if missing:
            raise FailedPrecondition(
                f"the REFERENCE teacher needs a reference solution; task {missing[0]!r} has none"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
    else:
        raise InvalidArgument(f"{path}.teacher_kind", "must be TEACHER_KIND_MODEL or TEACHER_KIND_REFERENCE")


def episode(settings: run_pb2.EpisodeSettings, selected: Sequence[AnyTask], path: str) -> None:
    """An ``EpisodeSettings`` against the tasks it will play (``path`` is the message holding it)."""
    at = f"{path}.episode"
    for task in selected:
        if isinstance(task, MlTask):  # no tool protocol: the ML agent's own search (mle.py)
            continue
        problem = proto.check_protocol(task, settings.protocol)
        if problem:
            raise InvalidArgument(f"{at}.protocol", problem)
    if settings.test_policy not in run_pb2.TestPolicy.values():
        raise InvalidArgument(f"{at}.test_policy", f"unknown value {settings.test_policy}")
    lim = settings.limits
    for name in ("max_iterations", "max_tokens", "max_consecutive_parse_errors"):
        if getattr(lim, name) < 0:
            raise InvalidArgument(f"{at}.limits.{name}", "must be >= 0 (0 means the default)")
    if lim.max_wall_time.ToNanoseconds() < 0:
        raise InvalidArgument(f"{at}.limits.max_wall_time", "must be >= 0 (0 means the default)")
    sp = settings.sampling
    if sp.HasField("temperature") and not 0 <= sp.temperature <= 2:
        raise InvalidArgument(f"{at}.sampling.temperature", "must be between 0 and 2")
    if sp.HasField("top_p") and not 0 < sp.top_p <= 1:
        raise InvalidArgument(f"{at}.sampling.top_p", "must be in (0, 1]")
    if sp.HasField("max_tokens") and sp.max_tokens < 1:
        raise InvalidArgument(f"{at}.sampling.max_tokens", "must be at least 1")
    # Reward weights (rule flywheel-reward/v1): finite, non-negative, and an integrity reward
    # below every other reward they allow, so gaming the tests never pays.
    problems = rewards.weight_problems(settings.reward)
    if problems:
        name, problem = problems[0]
        raise InvalidArgument(f"{at}.reward.{name}", problem)
    if settings.skill.WhichOneof("source") == "text":
        skill_docs.check_text(settings.skill.text, f"{at}.skill.text")


def counts(path: str, *, rollouts_per_task: int, max_rollouts: int, concurrency: int) -> None:
    if not 0 <= rollouts_per_task <= max_rollouts:
        raise InvalidArgument(f"{path}.rollouts_per_task", f"must be between 0 and {max_rollouts}")
    if concurrency < 0:
        raise InvalidArgument(f"{path}.concurrency", "must be >= 0 (0 means the service default)")


def labels(values: Mapping[str, str], path: str) -> None:
    for key, value in values.items():
        if not LABEL_KEY.match(key):
            raise InvalidArgument(f"{path}.labels[{key!r}]", "keys are 1-63 characters of [a-z0-9_.-]")
        if len(value) > 256:
            raise InvalidArgument(f"{path}.labels[{key!r}]", "values are at most 256 characters")
