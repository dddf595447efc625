"""Auditor domain: the per-goal hash chain, policy flags, and the official outcome after the
result is verified. Pure: no I/O.

Policy flags: each event is checked against the tool policy (tenants, the goal type's data
boundary), the routing table's model clearances and the tools' data classes. A flag is `open`
when the event breaks the policy, `mitigated` when the breach cannot reach its destination
(personal data on its way to a model or web-facing tool, which the executor redacts).

Outcome verification: a completed plan becomes GoalCompleted only when every step succeeded or
was deliberately skipped, no flag of the goal is open and the outputs hold no personal data
after redaction; otherwise the goal is escalated (GoalEscalated with the reasons, and GoalFailed
so whoever waits for the outcome hears of it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from shared.events import (
    ErrorCode,
    Event,
    EventRejected,
    GoalCompleted,
    GoalEscalated,
    GoalFailed,
    Plan,
    PlanCreated,
    PlanFinished,
    Step,
    StepDispatched,
    StepSucceeded,
    Topic,
    TypedError,
)
from shared.governance.boundaries import (
    GoalTypeBoundary,
    cleared_classes,
    is_web_facing,
    redact_outgoing,
    step_boundary_error,
)
from shared.governance.pii import find_in_value, redact_value
from shared.tools.registry import ToolSpec

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
    payload = redact_value({k: v for k, v in body.items() if k not in ENVELOPE_FIELDS})
    return {k: v if k in ENVELOPE_FIELDS else payload[k] for k, v in body.items()}


def chain(event: Event, previous: AuditRecord | None) -> AuditRecord:
    # the hash covers the redacted body: the chain must verify from what is stored
    body = stored_body(event)
    seq = previous.seq + 1 if previous else 1
    prev_hash = previous.hash if previous else GENESIS
    # built from an event that was validated and a body made here: nothing left to validate
    return AuditRecord.model_construct(
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


def outcome_for(
    event: Event, now: datetime, trace_id: str | None, flags: list[PolicyFlag] | tuple[()] = ()
) -> list[Event]:
    """The official outcome an event settles, if any; `flags` are the goal's policy flags so far."""
    outcome_id = f"{event.goal_id}:outcome"
    if isinstance(event, PlanFinished):  # after an operator's retry or cancel: a new outcome, `:<round>`
        outcome_id += event.id.removeprefix(f"{event.goal_id}:plan:finished")
    if isinstance(event, PlanFinished):
        cycle_time_s = (now - event.submitted_at).total_seconds()
        if event.status == "completed":
            reasons = verify_outcome(event, list(flags))
            if reasons:
                open_flags = [f for f in flags if f.status == "open"]
                return _escalated(event, outcome_id, reasons, open_flags, trace_id, cycle_time_s)
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


# --- policy flags --------------------------------------------------------------------------

FlagStatus = Literal["open", "mitigated"]
DONE_STEP_STATES = frozenset({"succeeded", "skipped"})
"""Step states a completed plan may end with: done, or deliberately left out."""


class PolicyFlag(BaseModel):
    """One way an event broke (or tried to break) the policy."""

    flag_id: str
    goal_id: str
    event_id: str
    event_type: str
    rule: str
    status: FlagStatus
    message: str
    step_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    time: datetime


class ToolRules(Protocol):
    goal_types: Mapping[str, GoalTypeBoundary]

    def check(
        self, spec: ToolSpec, tenant: str, allowed_tools: list[str] | None = None, goal_type: str | None = None
    ) -> TypedError | None: ...


@dataclass(frozen=True)
class PolicyContext:
    """What the auditor checks events against: the tool policy (tenants and goal types), the
    tool catalogue, and which data classes each model of the routing table is cleared for."""

    policy: ToolRules | None
    tools: Mapping[str, ToolSpec] = field(default_factory=dict)
    clearances: Mapping[str, list[str]] = field(default_factory=dict)


_Found = tuple[str, FlagStatus, str, "str | None", dict[str, Any]]


def policy_flags(event: Event, context: PolicyContext, plan: Plan | None = None) -> list[PolicyFlag]:
    """The flags an event earns; `plan` is the goal's latest plan (to see where a step's output
    goes next)."""
    found: list[_Found] = []
    if isinstance(event, PlanCreated):
        found += _plan_flags(event, context)
    elif isinstance(event, StepDispatched):
        found += _dispatch_flags(event, context)
    elif isinstance(event, StepSucceeded) and plan is not None:
        found += _output_flags(event, context, plan)
    return [
        PolicyFlag(flag_id=f"{event.id}:{rule}:{index}", goal_id=event.goal_id, event_id=event.id,
                   event_type=event.type, rule=rule, status=status, message=message, step_id=step_id,
                   details=details, time=event.time)
        for index, (rule, status, message, step_id, details) in enumerate(found, start=1)
    ]


def _refusal_rule(error: TypedError) -> str:
    return "outside_data_boundary" if error.details.get("reason") == "data_boundary" else "tool_not_permitted"


def _plan_flags(event: PlanCreated, context: PolicyContext) -> list[_Found]:
    found: list[_Found] = []
    goal_types = context.policy.goal_types if context.policy is not None else {}
    for step in event.plan.steps:
        error = step_boundary_error(goal_types, step, event.plan.source)
        spec = context.tools.get(step.tool) if step.tool else None
        if error is None and spec is not None and context.policy is not None:
            error = context.policy.check(spec, event.tenant, None, event.plan.source)
        if error is not None:
            found.append((_refusal_rule(error), "open", f"plan step {step.id!r}: {error.message}", step.id,
                          error.details))
    return found


def _dispatch_flags(event: StepDispatched, context: PolicyContext) -> list[_Found]:
    found: list[_Found] = []
    step, binding = event.step, event.binding
    goal_types = context.policy.goal_types if context.policy is not None else {}
    if (error := step_boundary_error(goal_types, step, event.goal_type)) is not None:
        found.append(("outside_data_boundary", "open", error.message, step.id, error.details))
    if binding.kind == "tool":
        spec = context.tools.get(binding.tool or "")
        if spec is None:
            return found  # the executor fails it with TOOL_NOT_FOUND
        if context.policy is not None:
            error = context.policy.check(spec, event.tenant, event.allowed_tools, event.goal_type)
            if error is not None:
                found.append((_refusal_rule(error), "open", f"dispatched: {error.message}", step.id, error.details))
        if is_web_facing(spec):
            _, paths = redact_outgoing(event.resolved_inputs, spec.data_classes)
            if paths:
                found.append(("pii_to_web_tool", "mitigated",
                              f"personal data in the inputs of web-facing tool {spec.name!r} (cleared for "
                              f"{spec.data_classes}): the executor redacts it before the call", step.id,
                              {"tool": spec.name, "found": paths, "cleared_for": spec.data_classes}))
        return found
    models = [binding.model or "", *binding.fallbacks]
    cleared = cleared_classes(models, context.clearances)
    missing = sorted(set(step.data_classes) - set(cleared))
    if missing:
        found.append(("model_not_cleared", "open",
                      f"step {step.id!r} carries data classes {missing} to models {models} not cleared for them",
                      step.id, {"models": models, "data_classes": missing, "cleared_for": cleared}))
    _, paths = redact_outgoing({"instruction": step.instruction or "", "inputs": event.resolved_inputs}, cleared)
    if paths:
        found.append(("pii_to_model", "mitigated",
                      f"personal data in what step {step.id!r} sends to models {models} (cleared for {cleared}): "
                      "the executor redacts it before the call", step.id,
                      {"models": models, "found": paths, "cleared_for": cleared}))
    return found


def _output_flags(event: StepSucceeded, context: PolicyContext, plan: Plan) -> list[_Found]:
    """Personal data in a step's output that a later web-facing tool step takes as input."""
    found: list[_Found] = []
    prefix = f"steps.{event.step_id}.output"
    for step in plan.steps:
        spec = context.tools.get(step.tool) if step.tool else None
        if spec is None or not is_web_facing(spec) or not _reads(step, prefix):
            continue
        paths = sorted({f"{path}: {f.kind}" for path, f in find_in_value(event.output, spec.data_classes)})
        if paths:
            found.append(("pii_headed_to_web_tool", "mitigated",
                          f"output of step {event.step_id!r} holds personal data and goes on to web-facing tool "
                          f"{spec.name!r} (step {step.id!r}, cleared for {spec.data_classes}): the executor "
                          "redacts it before that call", event.step_id,
                          {"tool": spec.name, "to_step": step.id, "found": paths, "cleared_for": spec.data_classes}))
    return found


def _reads(step: Step, prefix: str) -> bool:
    def refs(value: Any) -> list[str]:
        if isinstance(value, dict):
            if set(value) == {"$ref"} and isinstance(value["$ref"], str):
                return [value["$ref"]]
            return [r for item in value.values() for r in refs(item)]
        if isinstance(value, list):
            return [r for item in value for r in refs(item)]
        return []

    return any(ref == prefix or ref.startswith(prefix + ".") for ref in refs(step.inputs))


# --- outcome verification ------------------------------------------------------------------


def verify_outcome(finished: PlanFinished, flags: list[PolicyFlag]) -> list[str]:
    """Why a completed plan may not become the goal's official result ([] when it may): a step
    that neither succeeded nor was skipped, an open policy flag, or outputs that still hold
    personal data after redaction."""
    reasons = [f"step {step_id!r} ended {state!r}, not succeeded or skipped"
               for step_id, state in sorted(finished.step_states.items()) if state not in DONE_STEP_STATES]
    reasons += [f"open policy flag {flag.rule} on {flag.event_type.removeprefix('goalrail.')} "
                f"{flag.step_id or flag.event_id}: {flag.message}" for flag in flags if flag.status == "open"]
    left = find_in_value(redact_value(finished.outputs))
    if left:
        reasons.append(f"outputs still hold personal data after redaction at {sorted({p for p, _ in left})[:5]}")
    return reasons


def _escalated(
    event: PlanFinished, outcome_id: str, reasons: list[str], open_flags: list[PolicyFlag], trace_id: str | None,
    cycle_time_s: float,
) -> list[Event]:
    error = TypedError(
        code=ErrorCode.POLICY_VIOLATION,
        message="outcome verification failed: " + "; ".join(reasons),
        details={"reasons": reasons, "flags": [f.flag_id for f in open_flags], "plan_id": event.plan_id,
                 "step_states": event.step_states},
    )
    return [
        event.derive(GoalEscalated, f"{outcome_id}:escalated", SOURCE, reason=error.message, error=error,
                     trace_id=trace_id),
        event.derive(GoalFailed, outcome_id, SOURCE, error=error, trace_id=trace_id, cycle_time_s=cycle_time_s),
    ]
