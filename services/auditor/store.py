"""The auditor's repository: append-only audit records, one hash chain per goal.

`_id` is the event id (a redelivered event is stored once); the unique (goal_id, seq) index makes
two writers that race for the same place in a chain collide instead of forking it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pymongo import ASCENDING, DESCENDING

from pymongo.errors import BulkWriteError, WriteError

from services.auditor.audit import AuditRecord, PolicyFlag
from shared.events import EVENT_ADAPTER, Event
from shared.store import Database, DuplicateKeyError

DUPLICATE_KEY = 11000


class AuditStore:
    def __init__(self, database: Database) -> None:
        self._records = database["audit"]
        self._flags = database["policy_flags"]
        self._appends: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._writers: set[asyncio.Task[None]] = set()  # a reference keeps each batch's task alive

    async def init(self) -> None:
        await self._records.create_index([("goal_id", ASCENDING), ("seq", ASCENDING)], unique=True)
        await self._flags.create_index([("goal_id", ASCENDING), ("time", ASCENDING)])
        # all_records() of a few event types (the approvals view) reads those records only
        await self._records.create_index("event_type")

    async def add_flags(self, flags: Iterable[PolicyFlag]) -> None:
        """Store flags once each (`_id` = flag id: a redelivered event adds nothing)."""
        for flag in flags:
            document = {"_id": flag.flag_id, **flag.model_dump(mode="json")}
            try:
                await self._flags.insert_one(document)
            except DuplicateKeyError:
                pass

    async def flags(self, goal_id: str) -> list[PolicyFlag]:
        documents = await self._flags.find({"goal_id": goal_id}, sort=[("time", ASCENDING), ("_id", ASCENDING)]).to_list()
        return [PolicyFlag.model_validate(d) for d in documents]

    async def latest_plan(self, goal_id: str) -> dict[str, Any] | None:
        """The plan of the goal's last PlanCreated record (as stored), None before one."""
        documents = await self._records.find({"goal_id": goal_id, "event_type": "goalrail.plan.created"},
                                             sort=[("seq", DESCENDING)]).to_list(1)
        return documents[0]["event"].get("plan") if documents else None

    async def outbox_of(self, event_id: str) -> list[Event] | None:
        document = await self._records.find_one({"_id": event_id})
        if document is None:
            return None
        return [EVENT_ADAPTER.validate_python(e) for e in document["outbox"]]

    async def head(self, goal_id: str) -> AuditRecord | None:
        documents = await self._records.find({"goal_id": goal_id}, sort=[("seq", DESCENDING)]).to_list(1)
        return AuditRecord.model_validate(documents[0]) if documents else None

    async def append(self, record: AuditRecord, outbox: list[Event]) -> bool:
        """False when another record took this place in the chain (re-read the head and retry)."""
        document: dict[str, Any] = {
            "_id": record.event_id,
            # the body is JSON already (it was hashed as such): serialising it again costs a walk
            **record.model_dump(mode="json", exclude={"event"}),
            "event": record.event,
            "outbox": [e.model_dump(mode="json") for e in outbox],
        }
        return await self._append(document)

    async def _append(self, document: dict[str, Any]) -> bool:
        """The appends of the handlers that get here within the same turn of the event loop (and
        the next) are written together by one insert_many: one transaction instead of one each,
        which was a seventh of the auditor's CPU. Each caller still returns only once its own
        record is stored (True) or refused as a duplicate (False), so no offset is committed
        before its record."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[bool] = loop.create_future()
        self._appends.append((document, stored))
        if len(self._appends) == 1:
            loop.call_soon(self._start_writing)
        return await stored

    def _start_writing(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write_appends())
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)

    async def _write_appends(self) -> None:
        batch, self._appends = self._appends, []
        refused: dict[int, dict[str, Any]] = {}
        try:
            await self._records.insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as exc:
            refused = {error["index"]: error for error in exc.details.get("writeErrors", [])}
        except Exception as exc:  # noqa: BLE001 — every waiting handler fails (and is retried)
            for _, stored in batch:
                if not stored.done():
                    stored.set_exception(exc)
            return
        for index, (_, stored) in enumerate(batch):
            error = refused.get(index)
            if stored.done():
                continue
            if error is None:
                stored.set_result(True)
            elif error.get("code") == DUPLICATE_KEY:
                stored.set_result(False)
            else:
                stored.set_exception(WriteError(str(error.get("errmsg")), error.get("code")))

    async def records(self, goal_id: str) -> list[AuditRecord]:
        documents = await self._records.find({"goal_id": goal_id}, sort=[("seq", ASCENDING)]).to_list()
        return [AuditRecord.model_validate(d) for d in documents]

    async def all_records(self, event_types: Iterable[str] | None = None) -> list[AuditRecord]:
        """Every goal's records (of the given event types), by goal and seq."""
        query: dict[str, Any] = {} if event_types is None else {"event_type": {"$in": list(event_types)}}
        documents = await self._records.find(query, sort=[("goal_id", ASCENDING), ("seq", ASCENDING)]).to_list()
        return [AuditRecord.model_validate(d) for d in documents]


def load_baselines(folder: Path) -> dict[str, float]:
    """`manual_baseline_minutes` of each playbook in `folder`, by playbook name."""
    baselines: dict[str, float] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        document = yaml.safe_load(path.read_text()) or {}
        if isinstance(document, dict) and document.get("name") and document.get("manual_baseline_minutes"):
            baselines[str(document["name"])] = float(document["manual_baseline_minutes"])
    return baselines
