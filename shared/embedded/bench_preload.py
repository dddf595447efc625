"""Fill the services' stores with finished goals of the no-op chain, straight through each
service's own repository classes and collections (no Kafka), so `goalrail bench` can compare the
cost of an event with a full store against an empty one on any store backend.

A preloaded goal is what the four services would have stored for it: the planner's goal record
with its plan, progress and outboxes, the router's decisions and observed results, the
executor's executions, and the auditor's hash chain of every event of the goal. The events come
from the planner's planning functions, the audit records from the auditor's `chain`, and the
documents have the shape each service's repository gives them (the unit tests compare them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from services.auditor.audit import AuditRecord, chain, outcome_for
from services.auditor.store import AuditStore
from services.executor.execution import SOURCE as EXECUTOR
from services.executor.execution import execution_key
from services.planner.handlers import SOURCE as PLANNER
from services.planner.planning import Playbook, Progress, plan_from_playbook, resolve, validate_plan
from services.planner.store import GoalRecord, PlanStore
from services.router.handlers import SOURCE as ROUTER
from services.router.store import RouterStore
from shared.embedded.bench_goals import FAST_CHAIN_TEXT, REQUESTER, TENANT, goal_text
from shared.events import (
    Binding,
    Event,
    GoalCompleted,
    GoalSpec,
    GoalSubmitted,
    PlanCreated,
    PlanFinished,
    Step,
    StepDispatched,
    StepReady,
    StepSucceeded,
    Usage,
    step_event_id,
    utcnow,
)
from shared.store import Collection, open_database

ProgressLine = Callable[[str], object]
T = TypeVar("T")

CLIENT = "goalrail/client"  # as GoalrailClient submits the bench's live goals
MODEL = "goalrail/offline-writer"  # what the offline routing table binds a summarise step to
EVENT_SPACING = timedelta(milliseconds=10)
STEP_DURATION_MS = 1.0
AUDIT_COLLECTION = "audit"  # AuditStore's
BATCH_GOALS = 50  # goals written together; the next batch is built while one is written


def database_name(service: str) -> str:
    """As services/<service>/app.py names its database."""
    return f"goalrail_{service}"


@dataclass(frozen=True)
class StepRun:
    ready: StepReady
    dispatched: StepDispatched
    succeeded: StepSucceeded


@dataclass(frozen=True)
class FinishedGoal:
    """Every event of one goal that completed, and the planner's record of it at the end."""

    submitted: GoalSubmitted
    created: PlanCreated
    steps: tuple[StepRun, ...]
    finished: PlanFinished
    outcome: GoalCompleted
    record: GoalRecord

    @property
    def goal_id(self) -> str:
        return self.submitted.goal_id

    def events(self) -> list[Event]:
        """In the order the auditor chains them."""
        runs = [event for run in self.steps for event in (run.ready, run.dispatched, run.succeeded)]
        return [self.submitted, self.created, *runs, self.finished, self.outcome]


class _Clock:
    """Event times a little apart, as a real goal's would be."""

    def __init__(self, start: datetime) -> None:
        self._next = start

    def __call__(self) -> datetime:
        now, self._next = self._next, self._next + EVENT_SPACING
        return now


def finished_goal(goal_id: str, playbook: Playbook, started: datetime, tenant: str = TENANT) -> FinishedGoal:
    """The events of one goal of `playbook` whose steps all succeeded at the first attempt, built
    with the planner's own planning functions."""
    clock = _Clock(started)
    text = goal_text(FAST_CHAIN_TEXT, goal_id)
    goal = GoalSpec(text=text, requester=REQUESTER)
    submitted = GoalSubmitted(id=f"{goal_id}:submitted", source=CLIENT, goal_id=goal_id, tenant=tenant,
                              time=clock(), goal=goal)
    tools = {step.tool for step in playbook.steps if step.tool}
    plan = plan_from_playbook(playbook, playbook.matches(text) or {}, goal.input, f"{goal_id}:plan", started)
    plan = validate_plan(plan, tools, None)
    record = GoalRecord(goal_id=goal_id, tenant=tenant, goal=goal, submitted_at=submitted.time, plan=plan,
                        progress=Progress.start(plan))
    created = submitted.derive(PlanCreated, f"{goal_id}:plan:created", PLANNER, time=clock(), plan=plan,
                               goal_text=text)
    released = _release(submitted, record, clock)
    record.record(submitted.id, [created, *released])
    runs: list[StepRun] = []
    while released:
        run = _run(released.pop(0), clock)
        runs.append(run)
        assert record.progress is not None
        record.progress.succeed(run.succeeded.step_id, run.succeeded.output)
        if record.progress.finished:
            finished = _finished(run.succeeded, record, clock)
            record.record(run.succeeded.id, [finished])
        else:
            more = _release(run.succeeded, record, clock)
            record.record(run.succeeded.id, more)
            released += more
    record.version = len(runs)  # the planner saves its record once per step result
    (outcome,) = outcome_for(finished, clock(), None)
    assert isinstance(outcome, GoalCompleted)
    return FinishedGoal(submitted, created, tuple(runs), finished, outcome, record)


def _release(cause: Event, record: GoalRecord, clock: _Clock) -> list[StepReady]:
    """StepReady for every step whose dependencies have succeeded, as the planner releases them."""
    assert record.plan is not None and record.progress is not None
    outputs = record.progress.outputs()
    released = []
    for step in record.progress.ready(record.plan):
        attempt = record.progress.mark_running(step.id)
        released.append(cause.derive(
            StepReady, step_event_id(record.goal_id, step.id, attempt, "ready"), PLANNER, time=clock(),
            plan_id=record.plan.plan_id, step=step, attempt=attempt,
            resolved_inputs=resolve(step.inputs, outputs, record.goal.input), goal_type=record.plan.source,
        ))
    return released


def _run(ready: StepReady, clock: _Clock) -> StepRun:
    binding = _binding(ready.step)
    dispatched = ready.derive(
        StepDispatched, step_event_id(ready.goal_id, ready.step.id, ready.attempt, "dispatched"), ROUTER,
        time=clock(), plan_id=ready.plan_id, step=ready.step, attempt=ready.attempt,
        resolved_inputs=ready.resolved_inputs, goal_type=ready.goal_type, binding=binding,
    )
    succeeded = dispatched.derive(
        StepSucceeded, step_event_id(ready.goal_id, ready.step.id, ready.attempt, "succeeded"), EXECUTOR,
        time=clock(), plan_id=ready.plan_id, step_id=ready.step.id, attempt=ready.attempt,
        output=_output(ready, binding), binding=binding, usage=Usage(), duration_ms=STEP_DURATION_MS,
    )
    return StepRun(ready, dispatched, succeeded)


def _binding(step: Step) -> Binding:
    if step.tool:
        return Binding(kind="tool", tool=step.tool, reason=f"step names tool {step.tool}")
    return Binding(kind="model", model=MODEL, reason=f"offline model for {step.task_type}")


def _output(ready: StepReady, binding: Binding) -> dict[str, Any]:
    """What the no-op tools and the offline model return."""
    if binding.kind == "tool":
        return {"echo": ready.resolved_inputs}
    return {"text": f"{ready.step.instruction} ({ready.goal_id}).", "model": MODEL}


def _finished(cause: Event, record: GoalRecord, clock: _Clock) -> PlanFinished:
    assert record.plan is not None and record.progress is not None
    record.status = "completed"
    return cause.derive(
        PlanFinished, f"{record.goal_id}:plan:finished", PLANNER, time=clock(), plan_id=record.plan.plan_id,
        status="completed", outputs=resolve(record.plan.outputs, record.progress.outputs(), record.goal.input),
        step_states={i: s.status for i, s in record.progress.steps.items()}, submitted_at=record.submitted_at,
        usage=record.usage,
    )


# --- writing through the services' repositories ------------------------------------------------


def outbox_document(key: str, outbox: list[Event], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A document as shared.outbox.handle_once stores it: the events handling `key` produced."""
    return {"_id": key, "outbox": [event.model_dump(mode="json") for event in outbox], **(extra or {})}


def audit_document(record: AuditRecord, outbox: list[Event]) -> dict[str, Any]:
    """As AuditStore.append stores one record of a goal's chain."""
    return {"_id": record.event_id, **record.model_dump(mode="json"),
            "outbox": [event.model_dump(mode="json") for event in outbox]}


def audit_chain(goal: FinishedGoal) -> list[dict[str, Any]]:
    """The auditor's documents of every event of the goal, hash-chained as the auditor chains them."""
    documents, previous = [], None
    for event in goal.events():
        previous = chain(event, previous)
        documents.append(audit_document(previous, [goal.outcome] if event is goal.finished else []))
    return documents


@dataclass(frozen=True)
class ServiceStores:
    """Each service's repository, opened on its own database as the service opens it."""

    plans: PlanStore
    router: RouterStore
    executions: Collection
    audit: AuditStore
    audit_records: Collection  # the collection behind `audit`, written in bulk

    @classmethod
    def open(cls, store_url: str) -> ServiceStores:
        def database(service: str) -> Any:
            return open_database(store_url, database_name(service))

        auditor = database("auditor")
        return cls(PlanStore(database("planner")), RouterStore(database("router")),
                   database("executor")["executions"], AuditStore(auditor), auditor[AUDIT_COLLECTION])

    async def init(self) -> None:
        """The indexes each service makes at startup (a no-op when they run already)."""
        await self.plans.init()
        await self.router.init()
        await self.executions.create_index("goal_id")
        await self.audit.init()

    async def write(self, goals: Sequence[FinishedGoal]) -> int:
        """Store the goals in every service's store. Goal records go through PlanStore.create;
        the other documents, of the shape their service stores, in one insert per collection:
        a transaction per document (19 audit records a goal) would take most of the time."""
        await asyncio.gather(self._planner(goals), self._router(goals), self._executor(goals), self._auditor(goals))
        return len(goals)

    async def _planner(self, goals: Sequence[FinishedGoal]) -> None:
        await asyncio.gather(*(self._plan(goal) for goal in goals))

    async def _plan(self, goal: FinishedGoal) -> None:
        if not await self.plans.create(goal.record):
            raise ValueError(f"goal {goal.goal_id} is stored already")

    async def _router(self, goals: Sequence[FinishedGoal]) -> None:
        runs = [(goal, run) for goal in goals for run in goal.steps]
        await self.router.decisions.insert_many(
            [outbox_document(run.ready.id, [run.dispatched], {"goal_id": goal.goal_id}) for goal, run in runs])
        await self.router.observed.insert_many([outbox_document(run.succeeded.id, []) for _, run in runs])

    async def _executor(self, goals: Sequence[FinishedGoal]) -> None:
        await self.executions.insert_many([execution_document(run) for goal in goals for run in goal.steps])

    async def _auditor(self, goals: Sequence[FinishedGoal]) -> None:
        await self.audit_records.insert_many([document for goal in goals for document in audit_chain(goal)])


def execution_document(run: StepRun) -> dict[str, Any]:
    """As the executor's handler stores one execution of a step."""
    dispatched = run.dispatched
    extra = {"goal_id": dispatched.goal_id, "step_id": dispatched.step.id, "attempt": dispatched.attempt,
             "binding": dispatched.binding.model_dump(mode="json")}
    return outbox_document(execution_key(dispatched), [run.succeeded], extra)


# --- the preload -------------------------------------------------------------------------------


def preloaded_goal_ids(goals: int, prefix: str = "preload") -> Iterator[str]:
    return (f"{prefix}-{index:06d}" for index in range(goals))


async def preload(store_url: str, goals: int, playbook: Playbook, progress: ProgressLine = print) -> float:
    """Write `goals` finished goals into every service's store at `store_url`, reporting about
    ten times as it goes; the seconds it took."""
    stores = ServiceStores.open(store_url)
    await stores.init()
    first = next(preloaded_goal_ids(goals), None)
    if first is not None and await stores.plans.get(first) is not None:
        raise ValueError(f"{store_url} holds preloaded goals already: preload into a fresh store")
    started, every = time.perf_counter(), max(BATCH_GOALS, goals // 10)
    first_time = utcnow() - timedelta(seconds=goals)  # one goal a second, up to now
    writing: asyncio.Task[int] | None = None
    stored = reported = 0
    for batch in _batches(list(enumerate(preloaded_goal_ids(goals))), BATCH_GOALS):
        built = []
        for index, goal_id in batch:
            built.append(finished_goal(goal_id, playbook, first_time + timedelta(seconds=index)))
            await asyncio.sleep(0)  # the previous batch's writes go on meanwhile
        stored += await _written(writing)
        if stored - reported >= every:
            progress(_progress_line(stored, goals, time.perf_counter() - started))
            reported = stored
        writing = asyncio.create_task(stores.write(built))
    await _written(writing)
    elapsed = time.perf_counter() - started
    progress(_progress_line(goals, goals, elapsed))
    return elapsed


async def _written(writing: asyncio.Task[int] | None) -> int:
    """How many goals the batch being written held, once it is written."""
    return await writing if writing is not None else 0


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress_line(done: int, goals: int, elapsed_s: float) -> str:
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    left = f", ~{(goals - done) / rate:.0f}s left" if rate and done < goals else ""
    return f"  preload: {done:,}/{goals:,} goals stored ({rate:.0f} goals/s{left})"
