"""Auditor handler: every event joins its goal's audit chain; a finished plan or a rejected
goal becomes the official outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.auditor.audit import chain, outcome_for
from services.auditor.store import AuditStore
from shared.events import Event
from shared.telemetry.tracing import current_trace_id

CHAIN_RACE_TRIES = 20


@dataclass(frozen=True)
class AuditorDeps:
    store: AuditStore
    clock: Callable[[], datetime]


async def handle(event: Event, deps: AuditorDeps) -> list[Event]:
    for _ in range(CHAIN_RACE_TRIES):
        stored = await deps.store.outbox_of(event.id)
        if stored is not None:
            return stored
        outbox = outcome_for(event, deps.clock(), current_trace_id())
        record = chain(event, await deps.store.head(event.goal_id))
        if await deps.store.append(record, outbox):
            return outbox
    raise RuntimeError(f"could not append {event.id} to the audit chain of {event.goal_id}")
