"""Checks a CreateDatasetBuild request and resolves its defaults; every error names its field."""

from __future__ import annotations

import math
import re

from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel_common.errors import InvalidArgument
from flywheel_dataset.build import BuildSpec
from flywheel_dataset.captured import validate_source
from flywheel_dataset.recipes import RECIPES, ParameterError

DEFAULT_SPLIT = (0.9, 0.1, 0.0)
DEFAULT_MAX_SEQ_LENGTH = 2048
_SUITE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_build(build: dpb.DatasetBuild, default_base_model: str) -> dpb.DatasetBuild:
    """A copy of ``build`` with every default filled in, or InvalidArgument naming the field."""
    out = dpb.DatasetBuild()
    out.CopyFrom(build)
    for name in ("id", "state", "error", "progress", "dataset_id", "create_time", "start_time", "end_time"):
        out.ClearField(name)  # OUTPUT_ONLY

    if not build.recipe:
        raise InvalidArgument("build.recipe", f"required; one of {', '.join(sorted(RECIPES))}")
    recipe = RECIPES.get(build.recipe)
    if recipe is None:
        raise InvalidArgument(
            "build.recipe", f"unknown recipe {build.recipe!r}; known: {', '.join(sorted(RECIPES))}"
        )
    try:
        texts, _ = recipe.resolve(dict(build.parameters))
    except ParameterError as err:
        raise InvalidArgument(f"build.parameters.{err.name}", str(err)) from None
    out.parameters.clear()
    out.parameters.update(texts)

    source = build.source
    validate_source(source, "build.source")
    for i, run_id in enumerate(source.run_ids):
        if not _RUN_ID.match(run_id):
            raise InvalidArgument(f"build.source.run_ids[{i}]", f"{run_id!r} is not a run id")

    ratios = (build.split.train_ratio, build.split.validation_ratio, build.split.test_ratio)
    if all(r == 0 for r in ratios):
        ratios = DEFAULT_SPLIT
    for name, value in zip(("train_ratio", "validation_ratio", "test_ratio"), ratios, strict=True):
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise InvalidArgument(f"build.split.{name}", f"must be in [0, 1], got {value}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise InvalidArgument(
            "build.split", f"train_ratio + validation_ratio + test_ratio must be 1, got {sum(ratios):g}"
        )
    out.split.train_ratio, out.split.validation_ratio, out.split.test_ratio = ratios
    out.split.seed = build.split.seed or "flywheel"

    if build.hygiene.HasField("near_duplicate_threshold"):
        t = build.hygiene.near_duplicate_threshold
        if not (0.0 < t <= 1.0):
            raise InvalidArgument("build.hygiene.near_duplicate_threshold", f"must be in (0, 1], got {t}")
    else:
        out.hygiene.near_duplicate_threshold = 0.9
    for i, suite in enumerate(build.hygiene.decontaminate_suites):
        if not _SUITE.match(suite):
            raise InvalidArgument(
                f"build.hygiene.decontaminate_suites[{i}]", f"{suite!r} is not a suite name"
            )

    formats = list(build.formats) or [recipe.default_format]
    for i, fmt in enumerate(formats):
        if fmt not in recipe.formats:
            name = dpb.OutputFormat.Name(fmt) if fmt in dpb.OutputFormat.values() else str(fmt)
            allowed = ", ".join(dpb.OutputFormat.Name(f) for f in recipe.formats)
            raise InvalidArgument(
                f"build.formats[{i}]", f"{name} is not written by recipe {recipe.name}; use {allowed}"
            )
    if len(set(formats)) != len(formats):
        raise InvalidArgument("build.formats", "a format is listed twice")
    del out.formats[:]
    out.formats.extend(formats)

    file_formats = list(build.file_formats) or [dpb.FILE_FORMAT_JSONL]
    for i, ff in enumerate(file_formats):
        if ff not in (dpb.FILE_FORMAT_JSONL, dpb.FILE_FORMAT_PARQUET):
            raise InvalidArgument(
                f"build.file_formats[{i}]", "must be FILE_FORMAT_JSONL or FILE_FORMAT_PARQUET"
            )
    if len(set(file_formats)) != len(file_formats):
        raise InvalidArgument("build.file_formats", "a file format is listed twice")
    del out.file_formats[:]
    out.file_formats.extend(file_formats)

    if build.max_seq_length < 0:
        raise InvalidArgument("build.max_seq_length", f"must be >= 0, got {build.max_seq_length}")
    out.max_seq_length = build.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    out.target_base_model = build.target_base_model or default_base_model
    return out


def spec_from_build(build: dpb.DatasetBuild) -> BuildSpec:
    """The domain view of a resolved build (see :func:`resolve_build`)."""
    recipe = RECIPES[build.recipe]
    texts, parsed = recipe.resolve(dict(build.parameters))
    return BuildSpec(
        build_id=build.id,
        recipe=recipe,
        parameters=texts,
        parsed=parsed,
        source=build.source,
        split=build.split,
        hygiene=build.hygiene,
        formats=list(build.formats),
        file_formats=list(build.file_formats),
        target_base_model=build.target_base_model,
        max_seq_length=build.max_seq_length,
        loop_id=build.loop_id,
        labels=dict(build.labels),
        create_time=build.create_time if build.HasField("create_time") else None,
    )
