"""The planner's repository: one document per goal holding its plan, progress and outbox.

Every change of a goal is one conditional write of that document (matched on `version`), so
two results for one plan never overwrite each other, and the events a change emits are stored
in the same write: a redelivered event finds them and republishes the very same events.

The store keeps the records of running goals it last wrote, so a goal's next event (a step
result, most often) reads nothing: reading and validating the goal's document was an eighth of
the planner's work per event. That is safe because every write is conditional: a kept record
that another writer (a replica after a rebalance, the overdue sweep) has since changed fails its
save, the failure drops it, and the handler's retry reads the document again.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from services.planner.planning import Progress
from shared.events import EVENT_ADAPTER, Event, GoalSpec, Plan, Usage
from shared.store import Database, DuplicateKeyError


class AppliedEvent(BaseModel):
    """An event the goal has taken in, and the events it emitted, kept as their wire JSON: the
    goal's document is read and written on every step result, and strings cost next to nothing
    to decode, validate and encode again, where nested documents cost a walk each time."""

    event_id: str
    outbox: list[str]

    @field_validator("outbox", mode="before")
    @classmethod
    def _as_wire(cls, outbox: Any) -> Any:
        # records stored before the outbox was kept as JSON hold the events as documents
        if isinstance(outbox, list):
            return [json.dumps(e, separators=(",", ":")) if isinstance(e, dict) else e for e in outbox]
        return outbox


class GoalRecord(BaseModel):
    goal_id: str
    tenant: str
    version: int = 0
    goal: GoalSpec
    submitted_at: datetime
    plan: Plan | None = None
    progress: Progress | None = None
    status: str = "running"
    retries: int = 0
    replans: int = 0
    rounds: int = 0  # operator retries and cancels after the goal had ended
    failure_chain: list[dict[str, Any]] = Field(default_factory=list)
    # epoch seconds when the goal passes its deadline or time budget; the sweep ends it then
    expires_at: float | None = None
    # events of a sweep-made change, stored before they are published (nothing redelivers them)
    unpublished: list[dict[str, Any]] = Field(default_factory=list)
    has_unpublished: bool = False
    usage: Usage = Field(default_factory=Usage)
    applied: list[AppliedEvent] = Field(default_factory=list)

    def outbox_for(self, event_id: str) -> list[Event] | None:
        for applied in self.applied:
            if applied.event_id == event_id:
                return [EVENT_ADAPTER.validate_json(e) for e in applied.outbox]
        return None

    def record(self, event_id: str, outbox: list[Event]) -> None:
        self.applied.append(AppliedEvent(event_id=event_id, outbox=[e.model_dump_json() for e in outbox]))


RECORDS_KEPT = 512  # running goals whose last written record is kept; more than the events in flight


class PlanStore:
    def __init__(self, database: Database, kept: int = RECORDS_KEPT) -> None:
        self._goals = database["goals"]
        self._kept: OrderedDict[str, GoalRecord] = OrderedDict()
        self._most_kept = kept

    async def init(self) -> None:
        # the sweep's two questions, each answered by one index: overdue running goals, and
        # goals whose events are stored but unpublished (nothing asks by status or expiry alone)
        await self._goals.create_index([("status", 1), ("expires_at", 1)])
        await self._goals.create_index("has_unpublished")

    async def overdue(self, now: float, limit: int = 100) -> list[GoalRecord]:
        """Running goals past their deadline or time budget, and goals whose expiry events are
        stored but not yet published (a crash between the two)."""
        query = {"$or": [{"status": "running", "expires_at": {"$gt": 0, "$lte": now}}, {"has_unpublished": True}]}
        return [GoalRecord.model_validate(d) for d in await self._goals.find(query).to_list(limit)]

    async def get(self, goal_id: str) -> GoalRecord | None:
        """The goal's record, the caller's to change and save: a kept one is handed out once
        (and comes back with its save), so two callers never share one."""
        kept = self._kept.pop(goal_id, None)
        if kept is not None:
            return kept
        document = await self._goals.find_one({"_id": goal_id})
        return GoalRecord.model_validate(document) if document else None

    async def create(self, record: GoalRecord) -> bool:
        """Insert a new goal; False when it exists already (a redelivered submission)."""
        try:
            await self._goals.insert_one({"_id": record.goal_id, **record.model_dump(mode="json")})
        except DuplicateKeyError:
            return False
        self._keep(record)
        return True

    async def save(self, record: GoalRecord) -> bool:
        """Write `record` if nobody changed it since it was read; False on a conflict."""
        self._kept.pop(record.goal_id, None)
        expected = record.version
        document = record.model_dump(mode="json") | {"version": expected + 1}
        result = await self._goals.replace_one({"_id": record.goal_id, "version": expected}, document)
        if result.modified_count == 1:
            record.version = expected + 1
            self._keep(record)
            return True
        return False

    def _keep(self, record: GoalRecord) -> None:
        """Keep a just-written record for the goal's next event; an ended goal rarely gets one."""
        if record.status != "running":
            return
        self._kept[record.goal_id] = record
        if len(self._kept) > self._most_kept:
            self._kept.popitem(last=False)
