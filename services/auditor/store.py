"""The auditor's repository: append-only audit records, one hash chain per goal.

`_id` is the event id (a redelivered event is stored once); the unique (goal_id, seq) index makes
two writers that race for the same place in a chain collide instead of forking it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pymongo import ASCENDING, DESCENDING

from services.auditor.audit import AuditRecord, PolicyFlag
from shared.events import EVENT_ADAPTER, Event
from shared.store import Database, DuplicateKeyError


class AuditStore:
    def __init__(self, database: Database) -> None:
        self._records = database["audit"]
        self._flags = database["policy_flags"]

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
        try:
            await self._records.insert_one(document)
        except DuplicateKeyError:
            return False
        return True

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
