"""Planner handlers: a goal becomes a plan (a playbook's, or the planning model's); each step
result advances it; a step that fails for good gets the rest of the plan revised by the model, a
bounded number of times, before the goal is escalated; a goal past its deadline or budget ends.
A step a person rejected ends the goal without a replan; an operator may retry a failed goal's
failed steps or cancel the goal."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from services.planner.model_planning import ModelPlanner
from services.planner.planning import (
    PlanningError,
    Playbook,
    Progress,
    carry_over,
    choose_playbook,
    over_limits,
    plan_from_playbook,
    resolve,
    validate_plan,
)
from services.planner.store import GoalRecord, PlanStore
from shared.events import (
    EVENT_ADAPTER,
    ErrorCode,
    Event,
    GoalActionRequested,
    GoalEscalated,
    GoalSubmitted,
    Plan,
    PlanCreated,
    PlanFinished,
    StepFailed,
    StepReady,
    StepSucceeded,
    TypedError,
    Usage,
    step_event_id,
)
from shared.governance.boundaries import PlanBoundary
from shared.telemetry.tracing import current_trace_id

SOURCE = "goalrail/planner"
log = logging.getLogger("goalrail.planner")


class ConcurrentUpdate(Exception):
    """The goal changed between read and write; the consume guard retries the event."""


@dataclass(frozen=True)
class PlannerDeps:
    store: PlanStore
    playbooks: dict[str, Playbook]
    tool_names: frozenset[str]
    clock: Callable[[], datetime]
    planner: ModelPlanner | None = None  # None: playbooks only, and a failed step fails the goal
    max_replans: int = 1
    boundaries: PlanBoundary | None = None  # the goal types' data boundaries (tool policy)


async def handle(event: Event, deps: PlannerDeps) -> list[Event]:
    if isinstance(event, GoalSubmitted):
        return await on_goal_submitted(event, deps)
    if isinstance(event, (StepSucceeded, StepFailed)):
        return await on_step_result(event, deps)
    if isinstance(event, GoalActionRequested):
        return await on_goal_action(event, deps)
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
        expires_at=_expiry(event),
    )
    try:
        if limit := over_limits(event.goal, record.submitted_at, 0.0, deps.clock()):
            raise PlanningError(limit)
        plan = await _make_plan(event, record, deps)
        if deps.boundaries is not None and (outside := deps.boundaries.error(plan)) is not None:
            raise PlanningError(outside)
        if limit := over_limits(event.goal, record.submitted_at, record.usage.cost_usd, deps.clock()):
            raise PlanningError(limit)
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


def _expiry(event: GoalSubmitted) -> float | None:
    budget, deadline = event.goal.constraints.budget, event.goal.deadline
    limits = [event.time.timestamp() + budget.max_seconds] if budget.max_seconds else []
    if deadline is not None:
        limits.append((deadline if deadline.tzinfo else deadline.replace(tzinfo=timezone.utc)).timestamp())
    return min(limits) if limits else None


async def expire_overdue(deps: PlannerDeps, publish: Callable[[list[Event]], Awaitable[None]]) -> int:
    """End running goals past their deadline or time budget even when no result comes any more
    (a step stuck somewhere): called periodically. The events are stored with the change before
    they are published, so a crash in between republishes them on the next sweep."""
    now, ended = deps.clock(), 0
    for record in await deps.store.overdue(now.timestamp()):
        if not record.has_unpublished:
            limit = over_limits(record.goal, record.submitted_at, record.usage.cost_usd, now)
            if record.status != "running" or limit is None:
                continue
            cause = GoalSubmitted(id=record.applied[0].event_id if record.applied else f"{record.goal_id}:submitted",
                                  goal_id=record.goal_id, tenant=record.tenant, time=record.submitted_at,
                                  goal=record.goal)
            outbox = [_finished(cause, record, limit)]
            record.record(f"{record.goal_id}:expired", outbox)
            record.unpublished, record.has_unpublished = [e.model_dump(mode="json") for e in outbox], True
            if not await deps.store.save(record):
                continue  # a result changed the goal meanwhile: look again next time
        await publish([EVENT_ADAPTER.validate_python(e) for e in record.unpublished])
        record.unpublished, record.has_unpublished = [], False
        await deps.store.save(record)  # on a conflict the events go out again: consumers drop duplicates
        ended += 1
    return ended


async def _make_plan(event: GoalSubmitted, record: GoalRecord, deps: PlannerDeps) -> Plan:
    """A matching playbook as-is; the model when none matches, when the goal asks to adapt the
    playbook, or when the playbook's plan does not fit the goal's constraints."""
    goal, plan_id = event.goal, f"{event.goal_id}:plan"
    try:
        playbook, found = choose_playbook(goal.text, deps.playbooks, goal.playbook)
    except PlanningError:
        if deps.planner is None or goal.playbook:
            raise
        return await _model_plan(event, record, deps.planner, deps.clock(), None)
    plan = plan_from_playbook(playbook, found, goal.input, plan_id, deps.clock())
    if deps.planner is not None and (goal.adapt_playbook or deps.planner.forbidden(plan, goal, event.tenant)):
        return await _model_plan(event, record, deps.planner, deps.clock(), plan)
    try:
        return validate_plan(plan, deps.tool_names, goal.constraints.allowed_tools)
    except PlanningError:
        if deps.planner is None:
            raise
        return await _model_plan(event, record, deps.planner, deps.clock(), plan)


async def _model_plan(
    event: GoalSubmitted, record: GoalRecord, planner: ModelPlanner, now: datetime, starting_point: Plan | None
) -> Plan:
    planned = await planner.plan(event.goal, event.tenant, f"{event.goal_id}:plan", now.date(), starting_point)
    record.usage = _add(record.usage, planned.usage)
    if planned.plan is None:
        assert planned.error is not None
        raise PlanningError(planned.error)
    return planned.plan


async def on_step_result(event: StepSucceeded | StepFailed, deps: PlannerDeps) -> list[Event]:
    record = await deps.store.get(event.goal_id)
    if record is None or record.plan is None or record.progress is None:
        raise LookupError(f"no plan for goal {event.goal_id}")
    replay = record.outbox_for(event.id)
    if replay is not None:
        return replay
    outbox = _fold(event, record, deps.clock())
    if outbox is None:
        outbox = await _after_permanent_failure(event, record, deps)
    record.record(event.id, outbox)
    if not await deps.store.save(record):
        raise ConcurrentUpdate(event.goal_id)
    return outbox


def _fold(event: StepSucceeded | StepFailed, record: GoalRecord, now: datetime) -> list[Event] | None:
    """The events a result causes; None when a step has failed for good (replan or give up)."""
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
        return None
    if limit := over_limits(record.goal, record.submitted_at, record.usage.cost_usd, now):
        return [_finished(event, record, limit)]
    if record.progress.finished:
        return [_finished(event, record, None)]
    return _release(event, record)


async def _after_permanent_failure(event: StepSucceeded | StepFailed, record: GoalRecord, deps: PlannerDeps) -> list[Event]:
    """Ask the model for a revised remainder of the plan, keeping what succeeded; without a
    planner the goal fails, and past `max_replans` (or with no valid revision) it is escalated
    with the chain of failures."""
    assert record.plan is not None and record.progress is not None
    failed_id, state = next((i, s) for i, s in record.progress.steps.items() if s.status == "failed")
    error = state.error or TypedError(code=ErrorCode.HANDLER_FAILED, message=f"step {failed_id} failed")
    failed = next(s for s in record.plan.steps if s.id == failed_id)
    record.failure_chain.append(
        {"step_id": failed_id, "tool": failed.tool, "attempt": state.attempt, "plan_id": record.plan.plan_id,
         "error": error.model_dump(mode="json")}
    )
    if deps.planner is None or _rejected(error):
        return [_finished(event, record, error)]  # a person's "no" is final: no replan, no escalation
    if limit := over_limits(record.goal, record.submitted_at, record.usage.cost_usd, deps.clock()):
        return [_finished(event, record, limit)]
    if record.replans >= deps.max_replans:
        return _escalate(event, record, error, f"step {failed_id} failed for good after {record.replans} "
                                                f"replan(s) (limit {deps.max_replans}): {error.message}")
    completed = [s for s in record.plan.steps if record.progress.steps[s.id].status == "succeeded"]
    planned = await deps.planner.replan(
        record.goal, record.tenant, record.plan, completed, failed, error, record.failure_chain,
        f"{record.goal_id}:plan:r{record.replans + 1}", deps.clock().date(),
    )
    record.usage = _add(record.usage, planned.usage)
    if planned.plan is None:
        assert planned.error is not None
        return _escalate(event, record, error, f"step {failed_id} failed for good ({error.message}) and no "
                                                f"revised plan was found: {planned.error.message}")
    if deps.boundaries is not None and (outside := deps.boundaries.error(planned.plan)) is not None:
        return _escalate(event, record, error, f"step {failed_id} failed for good ({error.message}) and the "
                                                f"revised plan leaves its data boundary: {outside.message}")
    record.replans += 1
    record.progress = carry_over(record.progress, record.plan, planned.plan)
    record.plan = planned.plan
    revised = event.derive(PlanCreated, f"{record.goal_id}:plan:revised:{record.replans}", SOURCE,
                           plan=planned.plan, goal_text=record.goal.text)
    if record.progress.finished:
        return [revised, _finished(event, record, None)]
    return [revised, *_release(event, record)]


def _rejected(error: TypedError) -> bool:
    return error.code == ErrorCode.POLICY_VIOLATION and "approval_id" in error.details


async def on_goal_action(event: GoalActionRequested, deps: PlannerDeps) -> list[Event]:
    record = await deps.store.get(event.goal_id)
    if record is None:
        log.warning("%s of unknown goal %s ignored", event.action, event.goal_id)
        return []
    replay = record.outbox_for(event.id)
    if replay is not None:
        return replay
    # what follows belongs to the goal's tenant, whoever's client sent the action
    cause = event.model_copy(update={"tenant": record.tenant})
    outbox = _retry(cause, record) if event.action == "retry" else _cancel(cause, record)
    record.record(event.id, outbox)
    if not await deps.store.save(record):
        raise ConcurrentUpdate(event.goal_id)
    return outbox


def _retry(event: GoalActionRequested, record: GoalRecord) -> list[Event]:
    """A failed goal runs again from where it failed: its failed (and abandoned) steps start
    over with new attempt numbers, with a fresh replan allowance; what succeeded is kept."""
    if record.status != "failed" or record.plan is None or record.progress is None:
        log.warning("retry of goal %s ignored: it is %s%s", record.goal_id, record.status,
                    "" if record.plan else " without a plan")
        return []
    for state in record.progress.steps.values():
        if state.status in ("failed", "running"):
            state.status, state.error = "pending", None
    record.status, record.replans, record.rounds = "running", 0, record.rounds + 1
    released = _release(event, record)
    if not released and record.status == "running":  # e.g. a plan output that never resolves
        return [_finished(event, record, TypedError(code=ErrorCode.NO_PLAN, message="nothing to retry"))]
    return released


def _cancel(event: GoalActionRequested, record: GoalRecord) -> list[Event]:
    """The goal ends failed with CANCELLED (again, if it had failed: the last outcome says so);
    results still on their way are ignored, steps waiting for approval never run."""
    if record.status in ("completed", "cancelled"):
        log.warning("cancel of goal %s ignored: it is %s", record.goal_id, record.status)
        return []
    if record.status != "running":
        record.rounds += 1
    message = f"cancelled by {event.requested_by}" + (f": {event.comment}" if event.comment else "")
    error = TypedError(code=ErrorCode.CANCELLED, message=message,
                       details={"requested_by": event.requested_by, "comment": event.comment})
    finished = _finished(event, record, error)
    record.status = "cancelled"
    return [finished]


def _round(record: GoalRecord) -> str:
    """Id suffix of a goal's ending events after an operator's retry or cancel, so they are new."""
    return f":{record.rounds}" if record.rounds else ""


def _escalate(cause: Event, record: GoalRecord, error: TypedError, reason: str) -> list[Event]:
    """The goal needs a person: an escalation with the failure chain, and the plan ends failed
    (so whoever waits for the outcome hears of it)."""
    chained = error.model_copy(update={"details": {**error.details, "failure_chain": record.failure_chain,
                                                   "replans": record.replans}})
    escalated = cause.derive(GoalEscalated, f"{record.goal_id}:escalated{_round(record)}", SOURCE, reason=reason, error=chained,
                             trace_id=current_trace_id())
    return [escalated, _finished(cause, record, chained)]


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(input_tokens=a.input_tokens + b.input_tokens, output_tokens=a.output_tokens + b.output_tokens,
                 cost_usd=a.cost_usd + b.cost_usd)


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
                step_event_id(record.goal_id, step.id, attempt, "ready"),
                SOURCE,
                plan_id=record.plan.plan_id,
                step=step,
                attempt=attempt,
                resolved_inputs=inputs,
                allowed_tools=record.goal.constraints.allowed_tools,
                goal_type=record.plan.source,
                goal_budget_usd=record.goal.constraints.budget.max_cost_usd,
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
        f"{record.goal_id}:plan:finished{_round(record)}",
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

