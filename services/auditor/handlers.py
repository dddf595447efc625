"""Auditor handler: every event is checked against the policy (flags stored) and joins its
goal's audit chain; a finished plan is verified and becomes the official outcome (or an
escalation), a rejected goal a failed one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from services.auditor.audit import PolicyContext, PolicyFlag, chain, outcome_for, policy_flags
from services.auditor.store import AuditStore
from shared.events import Event, Plan, PlanFinished, StepSucceeded
from shared.governance.pii import find_in_value
from shared.telemetry.tracing import current_trace_id

CHAIN_RACE_TRIES = 20


@dataclass(frozen=True)
class AuditorDeps:
    store: AuditStore
    clock: Callable[[], datetime]
    policy: PolicyContext | None = None  # None: events are not checked against the policy


async def handle(event: Event, deps: AuditorDeps) -> list[Event]:
    checked = False
    for _ in range(CHAIN_RACE_TRIES):
        stored = await deps.store.outbox_of(event.id)
        if stored is not None:
            return stored
        if not checked and deps.policy is not None:
            # checked on the event as it arrives: the stored copy is redacted, its personal data gone
            await deps.store.add_flags(await _flags(event, deps.policy, deps.store))
            checked = True
        flags = await deps.store.flags(event.goal_id) if isinstance(event, PlanFinished) else []
        outbox = outcome_for(event, deps.clock(), current_trace_id(), flags)
        record = chain(event, await deps.store.head(event.goal_id))
        if await deps.store.append(record, outbox):
            return outbox
    raise RuntimeError(f"could not append {event.id} to the audit chain of {event.goal_id}")


async def _flags(event: Event, context: PolicyContext, store: AuditStore) -> list[PolicyFlag]:
    plan = None
    # the plan is read only for an output holding personal data: where does it go next?
    if isinstance(event, StepSucceeded) and find_in_value(event.output):
        stored = await store.latest_plan(event.goal_id)
        try:
            plan = Plan.model_validate(stored) if stored else None
        except ValidationError:
            plan = None
    return policy_flags(event, context, plan)
