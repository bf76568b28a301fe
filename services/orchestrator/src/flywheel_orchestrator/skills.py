"""Skills: the agent's playbook as a versioned artefact, and how edits change one.

A skill is a Markdown document appended to the protocol's system prompt of every episode of a
run, an evaluation or a loop that names it (``EpisodeSettings.skill``). It is stored by content
hash: ``skills/<sha256>.json`` holds the text and its metadata, written once with a conditional
create, never rewritten; the id is ``skill-<first 16 hex digits>``. A change is a new skill whose
``parent_id`` names the old one.

Protected sections
------------------
Text between the markers below may be appended to by the optimiser but never rewritten or
deleted (a user's house rules, a safety note)::

    <!-- protected: house-rules -->
    Never edit the tests.
    <!-- /protected -->

Names match ``[a-z0-9][a-z0-9_-]{0,63}``, are unique in a document, and sections do not nest.
An ``APPEND`` edit naming the section adds its text just before the closing marker; a
``REPLACE``/``DELETE`` whose anchor overlaps a protected section (markers included) and an
``INSERT_AFTER`` inside one are skipped with the reason recorded, never applied.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from google.protobuf import json_format

from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.jobs import now
from flywheel_common.objectstore import ObjectExistsError, ObjectNotFoundError, ObjectStore

PREFIX = "skills/"
MAX_BYTES = 64 * 1024
ID_RE = re.compile(r"^skill-([0-9a-f]{16})$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
OPEN_RE = re.compile(r"<!--\s*protected:\s*([^\s>]*)\s*-->")
CLOSE_RE = re.compile(r"<!--\s*/protected\s*-->")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def skill_id(text: str) -> str:
    return f"skill-{sha256(text)[:16]}"


@dataclass(frozen=True)
class Section:
    """A protected section: ``start``/``end`` span the markers; ``body_end`` is the closing marker's start."""

    name: str
    start: int
    body_end: int
    end: int


def sections(text: str) -> list[Section]:
    """The protected sections in document order; ValueError naming the first malformed marker."""
    out: list[Section] = []
    pos = 0
    while True:
        opening = OPEN_RE.search(text, pos)
        closing = CLOSE_RE.search(text, pos)
        if opening is None:
            if closing is not None:
                raise ValueError(f"a closing <!-- /protected --> at offset {closing.start()} has no opening")
            return out
        if closing is not None and closing.start() < opening.start():
            raise ValueError(f"a closing <!-- /protected --> at offset {closing.start()} has no opening")
        name = opening.group(1)
        if not NAME_RE.match(name):
            raise ValueError(f"protected section name {name!r} must match {NAME_RE.pattern}")
        if any(s.name == name for s in out):
            raise ValueError(f"protected section {name!r} appears twice")
        if closing is None:
            raise ValueError(f"protected section {name!r} is never closed with <!-- /protected -->")
        inner = OPEN_RE.search(text, opening.end(), closing.start())
        if inner is not None:
            raise ValueError(f"protected section {inner.group(1)!r} is nested in {name!r}")
        out.append(Section(name, opening.start(), closing.start(), closing.end()))
        pos = closing.end()


def check_text(text: str, path: str) -> list[Section]:
    """Validate a skill document at the API edge; INVALID_ARGUMENT naming ``path``."""
    if not text.strip():
        raise InvalidArgument(path, "is empty; a skill is a non-empty Markdown document")
    size = len(text.encode())
    if size > MAX_BYTES:
        raise InvalidArgument(path, f"is {size} bytes; a skill may hold {MAX_BYTES}")
    try:
        return sections(text)
    except ValueError as err:
        raise InvalidArgument(path, str(err)) from None


# ------------------------------------------------------------------------------------ edits


def _overlaps(start: int, end: int, protected: list[Section]) -> Section | None:
    return next((s for s in protected if start < s.end and end > s.start), None)


def apply_edit(text: str, edit: spb.SkillEdit) -> tuple[str, str]:
    """(new text, "") when the edit applies; (text, why not) when it is skipped."""
    protected = sections(text)
    content = edit.content.strip("\n")
    if edit.op == spb.SKILL_EDIT_OP_APPEND:
        if not content:
            return text, "empty content"
        if edit.section:
            target = next((s for s in protected if s.name == edit.section), None)
            if target is None:
                return text, f"no protected section {edit.section!r}"
            head = text[: target.body_end].rstrip("\n")
            return f"{head}\n{content}\n{text[target.body_end :]}", ""
        return f"{text.rstrip()}\n{content}\n", ""
    if not edit.anchor:
        return text, "no anchor"
    at = text.find(edit.anchor)
    if at < 0:
        return text, "anchor not found"
    end = at + len(edit.anchor)
    if edit.op == spb.SKILL_EDIT_OP_INSERT_AFTER:
        if not content:
            return text, "empty content"
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        hit = next((s for s in protected if s.start < line_end < s.body_end), None)
        if hit is not None:
            return text, f"inside protected section {hit.name!r} (append to it instead)"
        return f"{text[:line_end]}\n{content}{text[line_end:]}", ""
    if edit.op in (spb.SKILL_EDIT_OP_REPLACE, spb.SKILL_EDIT_OP_DELETE):
        hit = _overlaps(at, end, protected)
        if hit is not None:
            return text, f"touches protected section {hit.name!r}"
        new = content if edit.op == spb.SKILL_EDIT_OP_REPLACE else ""
        return f"{text[:at]}{new}{text[end:]}", ""
    return text, "unknown operation"


def apply_edits(text: str, edits: list[spb.SkillEdit]) -> str:
    """Apply ``edits`` in order, marking each ``applied`` or ``skipped_reason``; the new text."""
    for edit in edits:
        new, why = apply_edit(text, edit)
        edit.applied = not why and new != text
        edit.skipped_reason = why or ("no change" if new == text else "")
        text = new
    return text


# ------------------------------------------------------------------------------------ store


class SkillStore:
    """Skills in the object store, one immutable object per content hash (blocking I/O)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def put(
        self, text: str, *, name: str = "", parent_id: str = "", optimization_id: str = ""
    ) -> tuple[spb.Skill, bool]:
        """(the skill, whether this call stored it); the first creation of a text stands."""
        found = sections(text)
        digest = sha256(text)
        key = f"{PREFIX}{digest}.json"
        try:
            return self._read(key), False
        except ObjectNotFoundError:
            pass
        skill = spb.Skill(
            id=skill_id(text),
            sha256=digest,
            text=text,
            name=name,
            parent_id=parent_id,
            optimization_id=optimization_id,
            protected_sections=[s.name for s in found],
            create_time=now(),
        )
        body = json_format.MessageToJson(skill, preserving_proto_field_name=True).encode()
        try:
            self.store.put(key, body, content_type="application/json", overwrite=False)
        except ObjectExistsError:
            # Lost a race with an identical put: what is there wins.
            return self._read(key), False
        return skill, True

    def _read(self, key: str) -> spb.Skill:
        return json_format.Parse(self.store.get_bytes(key), spb.Skill(), ignore_unknown_fields=True)

    def get(self, ref: str) -> spb.Skill:
        """By ``skill-<16 hex>`` or the full SHA-256; NOT_FOUND otherwise."""
        if SHA_RE.match(ref):
            try:
                return self._read(f"{PREFIX}{ref}.json")
            except ObjectNotFoundError:
                raise NotFound(f"skill {ref!r} does not exist") from None
        m = ID_RE.match(ref)
        if m is None:
            raise NotFound(f"skill {ref!r} does not exist (ids look like skill-<16 hex digits>)")
        for info in self.store.list(f"{PREFIX}{m.group(1)}"):
            return self._read(info.key)
        raise NotFound(f"skill {ref!r} does not exist")

    def list(self) -> list[spb.Skill]:
        out = []
        for info in self.store.list(PREFIX):
            if info.key.endswith(".json"):
                out.append(self._read(info.key))
        out.sort(key=lambda s: (s.create_time.ToNanoseconds(), s.id), reverse=True)
        return out


def to_json(skill: spb.Skill) -> str:
    return json.dumps(json_format.MessageToDict(skill, preserving_proto_field_name=True))
