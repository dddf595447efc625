"""Router handler: a ready step gets its binding and is dispatched."""

from __future__ import annotations

from dataclasses import dataclass

from services.router.routing import RoutingError, RoutingTable, choose
from shared.events import Event, StepDispatched, StepFailed, StepReady
from shared.outbox import handle_once
from shared.store import Collection

SOURCE = "goalrail/router"


@dataclass(frozen=True)
class RouterDeps:
    decisions: Collection
    table: RoutingTable


async def handle(event: Event, deps: RouterDeps) -> list[Event]:
    if not isinstance(event, StepReady):
        return []
    return await handle_once(deps.decisions, event.id, lambda: _dispatch(event, deps), {"goal_id": event.goal_id})


async def _dispatch(event: StepReady, deps: RouterDeps) -> list[Event]:
    prefix = f"{event.goal_id}:{event.step.id}:{event.attempt}"
    try:
        binding = choose(event.step, deps.table)
    except RoutingError as exc:
        return [event.derive(StepFailed, f"{prefix}:failed", SOURCE, plan_id=event.plan_id,
                             step_id=event.step.id, attempt=event.attempt, error=exc.error)]
    return [
        event.derive(
            StepDispatched,
            f"{prefix}:dispatched",
            SOURCE,
            plan_id=event.plan_id,
            step=event.step,
            attempt=event.attempt,
            resolved_inputs=event.resolved_inputs,
            allowed_tools=event.allowed_tools,
            binding=binding,
        )
    ]
