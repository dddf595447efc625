"""Executor handler: a dispatched step runs once per execution key; a redelivery gets the
stored result instead of a second call."""

from __future__ import annotations

from dataclasses import dataclass

from services.executor.execution import StepRunner, execution_key
from shared.events import Event, StepDispatched
from shared.outbox import handle_once
from shared.store import Collection


@dataclass(frozen=True)
class ExecutorDeps:
    executions: Collection
    runner: StepRunner


async def handle(event: Event, deps: ExecutorDeps) -> list[Event]:
    if not isinstance(event, StepDispatched):
        return []

    async def run() -> list[Event]:
        return [await deps.runner.run(event)]

    extra = {"goal_id": event.goal_id, "step_id": event.step.id, "attempt": event.attempt,
             "binding": event.binding.model_dump(mode="json")}
    return await handle_once(deps.executions, execution_key(event), run, extra)
