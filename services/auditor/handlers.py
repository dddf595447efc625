"""Auditor handler: every event is checked against the policy (flags stored) and joins its
goal's audit chain; a finished plan is verified and becomes the official outcome (or an
escalation), a rejected goal a failed one."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from services.auditor.audit import AuditRecord, PolicyContext, PolicyFlag, chain, outcome_for, policy_flags
from services.auditor.store import AuditStore
from shared.events import Event, Plan, PlanFinished, StepSucceeded
from shared.governance.pii import find_in_value
from shared.telemetry.tracing import current_trace_id

CHAIN_RACE_TRIES = 20
HEADS_KEPT = 2048


class ChainHeads:
    """The last record this process appended to each recent goal's chain, so appending the next
    one needs no read. Only a hint: a stale head (another replica appended since) makes the append
    collide on the chain's unique (goal_id, seq), and the head is read again."""

    def __init__(self, kept: int = HEADS_KEPT) -> None:
        self._heads: OrderedDict[str, AuditRecord] = OrderedDict()
        self._kept = kept

    def get(self, goal_id: str) -> AuditRecord | None:
        return self._heads.get(goal_id)

    def put(self, record: AuditRecord) -> None:
        self._heads[record.goal_id] = record
        self._heads.move_to_end(record.goal_id)
        if len(self._heads) > self._kept:
            self._heads.popitem(last=False)

    def forget(self, goal_id: str) -> None:
        self._heads.pop(goal_id, None)


@dataclass(frozen=True)
class AuditorDeps:
    store: AuditStore
    clock: Callable[[], datetime]
    policy: PolicyContext | None = None  # None: events are not checked against the policy
    heads: ChainHeads = field(default_factory=ChainHeads)


async def handle(event: Event, deps: AuditorDeps) -> list[Event]:
    """Append the event to its goal's chain and return its outbox. A redelivered event is found
    by its append colliding on its `_id` (the event id): then the stored outbox is returned, so
    a first delivery, the common case, pays no lookup for it."""
    if deps.policy is not None:
        # checked on the event as it arrives: the stored copy is redacted, its personal data gone
        # (flags are stored once each, by id, so a redelivery adds none)
        await deps.store.add_flags(await _flags(event, deps.policy, deps.store))
    for _ in range(CHAIN_RACE_TRIES):
        flags = await deps.store.flags(event.goal_id) if isinstance(event, PlanFinished) else []
        outbox = outcome_for(event, deps.clock(), current_trace_id(), flags)
        previous = deps.heads.get(event.goal_id) or await deps.store.head(event.goal_id)
        record = chain(event, previous)
        if await deps.store.append(record, outbox):
            deps.heads.put(record)
            return outbox
        deps.heads.forget(event.goal_id)
        stored = await deps.store.outbox_of(event.id)
        if stored is not None:
            return stored
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
