"""Sample events and stores shared by test modules: goals and step results as the planner receives
them, one goal's audit trail, and audit stores on memory databases (empty, or filled with that
trail)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from services.auditor.app import DATABASE
from services.auditor.audit import chain
from services.auditor.store import AuditStore
from shared.events import (
    Binding,
    ErrorCode,
    GoalCompleted,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanCreated,
    Step,
    StepFailed,
    StepReady,
    StepSucceeded,
    TypedError,
    Usage,
)
from shared.store import open_database, reset_memory_stores

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)

# --- goals and step results ----------------------------------------------------------------


def goal_submitted(text: str, goal_id: str = "g", **spec) -> GoalSubmitted:
    """A goal of tenant acme submitted at NOW; `spec` goes to its GoalSpec (constraints, deadline…)."""
    return GoalSubmitted(id=f"{goal_id}:submitted", goal_id=goal_id, tenant="acme", time=NOW,
                         goal=GoalSpec(text=text, requester="cfo", **spec))


def succeeded(ready: StepReady, output, usage: Usage | None = None) -> StepSucceeded:
    """The executor's result for a ready step."""
    return ready.derive(StepSucceeded, f"{ready.goal_id}:{ready.step.id}:{ready.attempt}:succeeded", "executor",
                        plan_id=ready.plan_id, step_id=ready.step.id, attempt=ready.attempt, output=output,
                        binding=Binding(kind="tool", tool=ready.step.tool or "x", reason="r"), usage=usage or Usage())


def failed(ready: StepReady, retryable: bool = True, message: str = "503") -> StepFailed:
    """The executor's failure of a ready step (UPSTREAM_ERROR)."""
    error = TypedError(code=ErrorCode.UPSTREAM_ERROR, message=message, retryable=retryable)
    return ready.derive(StepFailed, f"{ready.goal_id}:{ready.step.id}:{ready.attempt}:failed", "executor",
                        plan_id=ready.plan_id, step_id=ready.step.id, attempt=ready.attempt, error=error)


# --- one goal's audit trail, and audit stores ------------------------------------------------

AUDIT_T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def goal_events(goal_id: str) -> list:
    """A completed goal: submitted, planned, one step failed once then succeeded, completed (1.5 s)."""
    common = {"goal_id": goal_id, "tenant": "acme"}
    binding = Binding(kind="model", model="goalrail/offline-writer", reason="offline")
    return [
        GoalSubmitted(id=f"{goal_id}:submitted", source="erp", time=AUDIT_T0, **common,
                      goal=GoalSpec(text="Prepare the Q3 sales report", requester="cfo@acme.example")),
        PlanCreated(id=f"{goal_id}:plan", source="planner", time=AUDIT_T0 + timedelta(seconds=0.2), **common,
                    plan=Plan(plan_id="p", source="playbook:quarterly-sales-report",
                              steps=[Step(id="write_summary", task_type="summarise", instruction="sum up")]),
                    goal_text="Prepare the Q3 sales report"),
        StepFailed(id=f"{goal_id}:write_summary:1:failed", source="executor", time=AUDIT_T0 + timedelta(seconds=0.5),
                   **common, plan_id="p", step_id="write_summary", attempt=1, binding=binding,
                   error=TypedError(code="UPSTREAM_TIMEOUT", message="model slow", retryable=True)),
        StepSucceeded(id=f"{goal_id}:write_summary:2:succeeded", source="executor", time=AUDIT_T0 + timedelta(seconds=1),
                      **common, plan_id="p", step_id="write_summary", attempt=2, output={"text": "ok"},
                      binding=binding, usage=Usage(cost_usd=0.0123)),
        GoalCompleted(id=f"{goal_id}:outcome", source="goalrail/auditor", time=AUDIT_T0 + timedelta(seconds=1.5),
                      **common, outputs={"summary": "ok"}, cycle_time_s=1.5, steps=1, retries=1,
                      usage=Usage(cost_usd=0.0123)),
    ]


def fill(url: str, goal_id: str = "goal-1") -> None:
    """Append goal_events(goal_id), chained, to the auditor's store at `url`."""
    async def run() -> None:
        store = AuditStore(open_database(url, DATABASE))
        await store.init()
        previous = None
        for event in goal_events(goal_id):
            record = chain(event, previous)
            assert await store.append(record, [])
            previous = record

    asyncio.run(run())


def tamper(url: str, event_id: str, change: dict) -> None:
    """Change a stored audit record behind the store's back."""
    collection = open_database(url, DATABASE)["audit"]
    asyncio.run(collection.update_one({"_id": event_id}, {"$set": change}))


@pytest.fixture
async def audit_store() -> AuditStore:
    """An empty audit store on its own memory database."""
    audit = AuditStore(open_database("memory://", f"audit_{uuid.uuid4().hex}"))
    await audit.init()
    return audit


@pytest.fixture
def filled_audit_store() -> Iterator[AuditStore]:
    """The auditor's memory store holding goal-1's trail (memory stores reset before and after)."""
    reset_memory_stores()
    fill("memory://", "goal-1")
    yield AuditStore(open_database("memory://", DATABASE))
    reset_memory_stores()
