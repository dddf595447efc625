"""Planner handlers: a goal becomes a plan; each step result advances it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.planner.planning import (
    PlanningError,
    Playbook,
    Progress,
    choose_playbook,
    plan_from_playbook,
    resolve,
    validate_plan,
)
from services.planner.store import GoalRecord, PlanStore
from shared.events import (
    Event,
    GoalSubmitted,
    PlanCreated,
    PlanFinished,
    StepFailed,
    StepReady,
    StepSucceeded,
    TypedError,
)

SOURCE = "goalrail/planner"


class ConcurrentUpdate(Exception):
    """The goal changed between read and write; the consume guard retries the event."""


@dataclass(frozen=True)
class PlannerDeps:
    store: PlanStore
    playbooks: dict[str, Playbook]
    tool_names: frozenset[str]
    clock: Callable[[], datetime]


async def handle(event: Event, deps: PlannerDeps) -> list[Event]:
    if isinstance(event, GoalSubmitted):
        return await on_goal_submitted(event, deps)
    if isinstance(event, (StepSucceeded, StepFailed)):
        return await on_step_result(event, deps)
    return []


async def on_goal_submitted(event: GoalSubmitted, deps: PlannerDeps) -> list[Event]:
    existing = await deps.store.get(event.goal_id)
    if existing is not None:
        return existing.outbox_for(event.id) or []
    record = GoalRecord(
        goal_id=event.goal_id,
        tenant=event.tenant,
        goal=event.goal,
        submitted_at=event.time,
    )
    try:
        playbook, found = choose_playbook(event.goal.text, deps.playbooks, event.goal.playbook)
        plan = plan_from_playbook(playbook, found, event.goal.input, f"{event.goal_id}:plan", deps.clock())
        plan = validate_plan(plan, deps.tool_names, event.goal.constraints.allowed_tools)
    except PlanningError as exc:
        outbox: list[Event] = [_finished(event, record, exc.error)]
    else:
        record.plan, record.progress = plan, Progress.start(plan)
        created = event.derive(PlanCreated, f"{event.goal_id}:plan:created", SOURCE, plan=plan, goal_text=event.goal.text)
        outbox = [created, *_release(event, record)]
    record.record(event.id, outbox)
    if not await deps.store.create(record):
        stored = await deps.store.get(event.goal_id)
        return (stored.outbox_for(event.id) if stored else None) or []
    return outbox


async def on_step_result(event: StepSucceeded | StepFailed, deps: PlannerDeps) -> list[Event]:
    record = await deps.store.get(event.goal_id)
    if record is None or record.plan is None or record.progress is None:
        raise LookupError(f"no plan for goal {event.goal_id}")
    replay = record.outbox_for(event.id)
    if replay is not None:
        return replay
    outbox = _fold(event, record)
    record.record(event.id, outbox)
    if not await deps.store.save(record):
        raise ConcurrentUpdate(event.goal_id)
    return outbox


def _fold(event: StepSucceeded | StepFailed, record: GoalRecord) -> list[Event]:
    assert record.plan is not None and record.progress is not None
    state = record.progress.steps.get(event.step_id)
    if record.status != "running" or state is None or state.status != "running" or state.attempt != event.attempt:
        return []  # a stale or foreign result: the step moved on already
    step = next(s for s in record.plan.steps if s.id == event.step_id)
    if isinstance(event, StepSucceeded):
        record.progress.succeed(step.id, event.output)
        record.usage.input_tokens += event.usage.input_tokens
        record.usage.output_tokens += event.usage.output_tokens
        record.usage.cost_usd += event.usage.cost_usd
    elif record.progress.fail(step.id, event.error, step.retry.max_attempts):
        record.retries += 1
    if record.progress.failed:
        failed = next(s for s in record.progress.steps.values() if s.status == "failed")
        return [_finished(event, record, failed.error)]
    if record.progress.finished:
        return [_finished(event, record, None)]
    return _release(event, record)


def _release(cause: Event, record: GoalRecord) -> list[Event]:
    """StepReady for every step whose dependencies have succeeded, inputs resolved."""
    assert record.plan is not None and record.progress is not None
    outputs = record.progress.outputs()
    released: list[Event] = []
    for step in record.progress.ready(record.plan):
        attempt = record.progress.mark_running(step.id)
        try:
            inputs = resolve(step.inputs, outputs, record.goal.input)
        except PlanningError as exc:
            record.progress.fail(step.id, exc.error, max_attempts=0)
            return [_finished(cause, record, exc.error)]
        released.append(
            cause.derive(
                StepReady,
                f"{record.goal_id}:{step.id}:{attempt}:ready",
                SOURCE,
                plan_id=record.plan.plan_id,
                step=step,
                attempt=attempt,
                resolved_inputs=inputs,
                allowed_tools=record.goal.constraints.allowed_tools,
            )
        )
    return released


def _finished(cause: Event, record: GoalRecord, error: TypedError | None) -> PlanFinished:
    record.status = "failed" if error else "completed"
    outputs: dict = {}
    if record.plan is not None and record.progress is not None and error is None:
        try:
            outputs = resolve(record.plan.outputs, record.progress.outputs(), record.goal.input)
        except PlanningError as exc:
            record.status, error = "failed", exc.error
    return cause.derive(
        PlanFinished,
        f"{record.goal_id}:plan:finished",
        SOURCE,
        plan_id=record.plan.plan_id if record.plan else f"{record.goal_id}:plan",
        status=record.status,
        outputs=outputs,
        step_states={i: s.status for i, s in record.progress.steps.items()} if record.progress else {},
        error=error,
        submitted_at=record.submitted_at,
        retries=record.retries,
        usage=record.usage,
    )

