"""How runs, evaluations and loops keep themselves in the object store.

Each kind lives under one prefix (``orchestrator/<kind>s/``):

- ``<id>.json``: the resource message as JSON, rewritten on every change;
- ``requests/<sha256 of the request id>.json``: which resource a request id created, with a
  fingerprint of the request, so a retry returns the same resource and a different request
  under the same id is ALREADY_EXISTS;
- ``published/<id>``: written once the resource's terminal event is out, so a start-up can
  announce what a crash left unannounced.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from flywheel_common.errors import AlreadyExists
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore

M = TypeVar("M", bound=Message)


def fingerprint(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


class Records(Generic[M]):
    def __init__(
        self, store: Callable[[], ObjectStore], prefix: str, message_class: type[M], kind: str, id_field: str
    ) -> None:
        self._store = store
        self.prefix = prefix
        self.message_class = message_class
        self.kind = kind  #: the word in error messages, e.g. ``run``
        self.id_field = id_field  #: the key of the id in request records, e.g. ``run_id``

    def load(self) -> list[M]:
        store = self._store()
        out = []
        for info in store.list(self.prefix):
            rest = info.key[len(self.prefix) :]
            if "/" in rest or not rest.endswith(".json"):
                continue
            out.append(
                json_format.Parse(store.get_bytes(info.key), self.message_class(), ignore_unknown_fields=True)
            )
        return out

    def save(self, message: M) -> None:
        body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        self._store().put(
            f"{self.prefix}{message.id}.json",
            body,
            content_type="application/json",
            overwrite=True,  # type: ignore[attr-defined]
        )

    def published(self) -> set[str]:
        prefix = f"{self.prefix}published/"
        return {info.key[len(prefix) :] for info in self._store().list(prefix)}

    async def mark_published(self, resource_id: str, event_id: str) -> None:
        await asyncio.to_thread(
            self._store().put, f"{self.prefix}published/{resource_id}", event_id.encode(), overwrite=True
        )

    def _request_key(self, request_id: str) -> str:
        return f"{self.prefix}requests/{hashlib.sha256(request_id.encode()).hexdigest()}.json"

    async def replay(self, request_id: str, print_: str) -> str | None:
        """The id an earlier request with this request id created; None when there was none."""
        if not request_id:
            return None
        try:
            seen = json.loads(await asyncio.to_thread(self._store().get_bytes, self._request_key(request_id)))
        except ObjectNotFoundError:
            return None
        if seen["fingerprint"] != print_:
            raise AlreadyExists(
                f"request_id {request_id!r} was already used for {self.kind} {seen[self.id_field]} "
                "with a different request"
            )
        return seen[self.id_field]

    async def remember(self, request_id: str, resource_id: str, print_: str) -> None:
        if not request_id:
            return
        body = json.dumps({self.id_field: resource_id, "fingerprint": print_}).encode()
        await asyncio.to_thread(
            self._store().put, self._request_key(request_id), body, content_type="application/json"
        )
