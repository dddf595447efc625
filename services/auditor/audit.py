"""Auditor domain: the per-goal hash chain and the official outcome. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from shared.events import Event, EventRejected, GoalCompleted, GoalFailed, PlanFinished, Topic
from shared.governance.pii import redact_value

SOURCE = "goalrail/auditor"
GENESIS = "0" * 64
ENVELOPE_FIELDS = frozenset(Event.model_fields)


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


class ChainBreak(BaseModel):
    """Where a goal's audit chain stops holding, and why."""

    seq: int
    event_id: str
    event_type: str
    reason: str


def stored_body(event: Event) -> dict[str, Any]:
    """What the audit trail keeps of an event: the envelope as is (ids route and link records),
    every payload string with personal data redacted."""
    body = event.model_dump(mode="json")
    return {k: v if k in ENVELOPE_FIELDS else redact_value(v) for k, v in body.items()}


def chain(event: Event, previous: AuditRecord | None) -> AuditRecord:
    # the hash covers the redacted body: the chain must verify from what is stored
    body = stored_body(event)
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


def verify_chain(records: list[AuditRecord]) -> ChainBreak | None:
    """The first record whose place, link or hash does not hold, None when the chain is intact."""
    prev_hash = GENESIS
    for expected_seq, record in enumerate(sorted(records, key=lambda r: r.seq), start=1):
        reason = None
        if record.seq > expected_seq:
            reason = f"records {expected_seq}..{record.seq - 1} before it are missing"
        elif record.seq != expected_seq:
            reason = f"seq {record.seq} appears twice or out of order (expected {expected_seq})"
        elif record.prev_hash != prev_hash:
            reason = "prev_hash does not match the hash of the record before it"
        elif record.hash != record_hash(record.seq, record.prev_hash, record.event):
            reason = "the stored hash does not match the record's content (the record was changed)"
        elif (record.event.get("id"), record.event.get("type")) != (record.event_id, record.event_type):
            # the hash covers the event body only: the record's own id and type must agree with it
            reason = "the record's event id or type differs from the hashed event"
        if reason:
            return ChainBreak(seq=record.seq, event_id=record.event_id, event_type=record.event_type, reason=reason)
        prev_hash = record.hash
    return None


def first_broken_link(records: list[AuditRecord]) -> int | None:
    """The seq of the first record whose hash or link does not hold, None when intact."""
    broken = verify_chain(records)
    return broken.seq if broken else None


def outcome_for(event: Event, now: datetime, trace_id: str | None) -> list[Event]:
    """The official outcome an event settles, if any."""
    outcome_id = f"{event.goal_id}:outcome"
    if isinstance(event, PlanFinished):
        cycle_time_s = (now - event.submitted_at).total_seconds()
        if event.status == "completed":
            return [
                event.derive(
                    GoalCompleted, outcome_id, SOURCE, outputs=redact_value(event.outputs), trace_id=trace_id,
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


class TimelineEntry(BaseModel):
    """One line of a goal's audit timeline, for people."""

    seq: int
    time: datetime
    source: str
    event_type: str
    step: str | None = None
    attempt: int | None = None
    used: str | None = None
    cost_usd: float | None = None
    error: str | None = None
    note: str | None = None


def timeline(records: list[AuditRecord]) -> list[TimelineEntry]:
    """What happened to a goal, record by record: who, which step, which model or tool, at what
    cost, and what went wrong."""
    return [_timeline_entry(r) for r in sorted(records, key=lambda r: r.seq)]


def _timeline_entry(record: AuditRecord) -> TimelineEntry:
    body = record.event
    step = body.get("step_id") or (body.get("step") or {}).get("id")
    binding = body.get("binding") or {}
    used = None
    if binding:
        used = f"{binding.get('kind')} {binding.get('tool') or binding.get('model')}"
    usage = body.get("usage") or {}
    error = body.get("error")
    note = None
    if record.event_type == "goalrail.plan.created":
        plan = body.get("plan") or {}
        note = f"{plan.get('source')}: {len(plan.get('steps') or [])} steps"
    elif record.event_type == "goalrail.goal.submitted":
        note = (body.get("goal") or {}).get("text")
    elif record.event_type == "goalrail.plan.finished":
        note = body.get("status")
    elif record.event_type == "goalrail.goal.escalated":
        note = body.get("reason")
    elif body.get("cycle_time_s") is not None:  # the outcomes
        note = f"cycle time {body['cycle_time_s']:.2f}s"
    return TimelineEntry(
        seq=record.seq,
        time=record.time,
        source=record.source,
        event_type=record.event_type,
        step=step,
        attempt=body.get("attempt"),
        used=used,
        cost_usd=usage.get("cost_usd") if usage else None,
        error=f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else None,
        note=note,
    )
