"""Auditor domain: the per-goal hash chain and the official outcome. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.events import Event, EventRejected, GoalCompleted, GoalFailed, PlanFinished, Topic

SOURCE = "goalrail/auditor"
GENESIS = "0" * 64


class AuditRecord(BaseModel):
    event_id: str
    goal_id: str
    seq: int
    event_type: str
    source: str
    time: datetime
    event: dict[str, Any]
    prev_hash: str
    hash: str


def record_hash(seq: int, prev_hash: str, event: dict[str, Any]) -> str:
    canonical = json.dumps({"seq": seq, "prev": prev_hash, "event": event}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def chain(event: Event, previous: AuditRecord | None) -> AuditRecord:
    body = event.model_dump(mode="json")
    seq = previous.seq + 1 if previous else 1
    prev_hash = previous.hash if previous else GENESIS
    return AuditRecord(
        event_id=event.id,
        goal_id=event.goal_id,
        seq=seq,
        event_type=event.type,
        source=event.source,
        time=event.time,
        event=body,
        prev_hash=prev_hash,
        hash=record_hash(seq, prev_hash, body),
    )


def first_broken_link(records: list[AuditRecord]) -> int | None:
    """The seq of the first record whose hash or link does not hold, None when intact."""
    prev_hash = GENESIS
    for expected_seq, record in enumerate(sorted(records, key=lambda r: r.seq), start=1):
        if record.seq != expected_seq or record.prev_hash != prev_hash:
            return record.seq
        if record.hash != record_hash(record.seq, record.prev_hash, record.event):
            return record.seq
        prev_hash = record.hash
    return None


def outcome_for(event: Event, now: datetime, trace_id: str | None) -> list[Event]:
    """The official outcome an event settles, if any."""
    outcome_id = f"{event.goal_id}:outcome"
    if isinstance(event, PlanFinished):
        cycle_time_s = (now - event.submitted_at).total_seconds()
        if event.status == "completed":
            return [
                event.derive(
                    GoalCompleted, outcome_id, SOURCE, outputs=event.outputs, trace_id=trace_id,
                    cycle_time_s=cycle_time_s, steps=len(event.step_states), retries=event.retries,
                    usage=event.usage,
                )
            ]
        assert event.error is not None
        return [event.derive(GoalFailed, outcome_id, SOURCE, error=event.error, trace_id=trace_id,
                             cycle_time_s=cycle_time_s)]
    if isinstance(event, EventRejected) and event.source_topic == Topic.GOALS_SUBMITTED.value:
        return [event.derive(GoalFailed, outcome_id, SOURCE, error=event.error, trace_id=trace_id)]
    return []
