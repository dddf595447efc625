"""Approvals and operator actions over the auditor's HTTP API.

The auditor stores every event, so the approvals are a projection of its records: an
ApprovalRequested is pending until an ApprovalDecided for it is stored (the first one counts).
A person's answer is published as an ApprovalDecided (id `<approval_id>:decided`, so only the
first one can take effect) in the goal's trace; retry and cancel of a goal as a
GoalActionRequested. The router and the planner act on them.

    GET  /approvals[?status=pending]          the approvals, pending first
    POST /approvals/{approval_id}/approve     {"by": "...", "comment": "..."}  200 | 404 | 409
    POST /approvals/{approval_id}/reject      {"by": "...", "comment": "..."}  200 | 404 | 409
    POST /goals/{goal_id}/retry               {"by": "...", "comment": "..."}  202 | 404 | 409
    POST /goals/{goal_id}/cancel              {"by": "...", "comment": "..."}  202 | 404 | 409
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.auditor.audit import AuditRecord
from services.auditor.store import AuditStore
from shared.client import decision_event, goal_action_event
from shared.events import ErrorCode, Event

SOURCE = "goalrail/auditor"
REQUESTED = "goalrail.approval.requested"
DECIDED = "goalrail.approval.decided"
ENDED = "goalrail.plan.finished"
OUTCOMES = ("goalrail.goal.completed", "goalrail.goal.failed")
ACTION = "goalrail.goal.action"

# publish(span name, event, traceparent or None): the auditor's broker, in a span of its own
Publisher = Callable[[str, Event, str | None], Awaitable[None]]


class Answer(BaseModel):
    by: str = Field(min_length=1, description="Who decides (a name or an address).")
    comment: str = ""


class Approval(BaseModel):
    approval_id: str
    goal_id: str
    tenant: str
    step_id: str
    attempt: int
    tool: str | None
    side_effect: str
    reason: str
    inputs: dict[str, Any]
    requested_at: str
    status: Literal["pending", "approved", "rejected"]
    decided_by: str | None = None
    decided_at: str | None = None
    comment: str | None = None
    traceparent: str | None = None
    goal_ended: bool = False


def approvals_view(records: Iterable[AuditRecord]) -> list[Approval]:
    """Every approval in the records, pending ones first (oldest first), then the decided ones
    (newest first). Pending approvals of goals that ended meanwhile are left out: nobody can
    decide them any more."""
    requested: dict[str, AuditRecord] = {}
    decided: dict[str, AuditRecord] = {}
    ended_at: dict[str, int] = {}
    for record in sorted(records, key=lambda r: (r.goal_id, r.seq)):
        body = record.event
        if record.event_type == REQUESTED:
            requested.setdefault(str(body.get("approval_id")), record)
        elif record.event_type == DECIDED:
            decided.setdefault(str(body.get("approval_id")), record)  # the first decision counts
        elif record.event_type == ENDED:
            ended_at[record.goal_id] = record.seq
    approvals: list[Approval] = []
    for approval_id, record in requested.items():
        body, decision = record.event, decided.get(approval_id)
        step = body.get("step") or {}
        binding = body.get("binding") or {}
        ended = ended_at.get(record.goal_id, 0) > record.seq
        if decision is None and ended:
            continue
        approvals.append(Approval(
            approval_id=approval_id,
            goal_id=record.goal_id,
            tenant=str(body.get("tenant")),
            step_id=str(step.get("id")),
            attempt=int(body.get("attempt") or 1),
            tool=step.get("tool") or binding.get("tool") or binding.get("model"),
            side_effect=str(step.get("side_effect") or "read"),
            reason=str(body.get("reason") or ""),
            inputs=body.get("inputs") or {},
            requested_at=record.time.isoformat(),
            status=decision.event.get("decision", "approved") if decision else "pending",
            decided_by=decision.event.get("decided_by") if decision else None,
            decided_at=decision.time.isoformat() if decision else None,
            comment=decision.event.get("comment") if decision else None,
            traceparent=body.get("traceparent"),
            goal_ended=ended,
        ))
    pending = sorted((a for a in approvals if a.status == "pending"), key=lambda a: a.requested_at)
    done = sorted((a for a in approvals if a.status != "pending"), key=lambda a: a.decided_at or "", reverse=True)
    return pending + done


def goal_state(records: Iterable[AuditRecord]) -> str:
    """running | completed | failed | cancelled, from the goal's latest outcome and actions."""
    state = "running"
    for record in sorted(records, key=lambda r: r.seq):
        if record.event_type == "goalrail.goal.completed":
            state = "completed"
        elif record.event_type == "goalrail.goal.failed":
            code = (record.event.get("error") or {}).get("code")
            state = "cancelled" if code == ErrorCode.CANCELLED.value else "failed"
        elif record.event_type == ACTION and record.event.get("action") == "retry":
            state = "running"
    return state


def approvals_router(store: AuditStore, publish: Publisher | None) -> APIRouter:
    router = APIRouter(tags=["approvals"])
    lock = asyncio.Lock()
    # decisions published by this process but perhaps not yet consumed back: a second answer
    # in between must get 409 too
    answered: dict[str, dict[str, Any]] = {}

    async def view() -> list[Approval]:
        return approvals_view(await store.all_records([REQUESTED, DECIDED, ENDED]))

    @router.get("/approvals")
    async def list_approvals(
        status: Literal["pending", "approved", "rejected"] | None = Query(None, description="Only this status."),
    ) -> dict[str, Any]:
        approvals = [a for a in await view() if status is None or a.status == status]
        return {"approvals": [a.model_dump(mode="json") for a in approvals]}

    async def decide(approval_id: str, answer: Answer, approve: bool) -> dict[str, Any]:
        if publish is None:
            raise HTTPException(503, "this auditor cannot publish decisions")
        async with lock:
            approval = next((a for a in await view() if a.approval_id == approval_id), None)
            if approval is None:
                raise HTTPException(404, f"no approval {approval_id!r} is pending")
            earlier = answered.get(approval_id)
            if approval.status != "pending" or earlier is not None:
                decided_by = approval.decided_by or (earlier or {}).get("decided_by")
                status = approval.status if approval.status != "pending" else (earlier or {}).get("decision")
                raise HTTPException(409, f"approval {approval_id} was {status} by {decided_by} already")
            event = decision_event(approval_id, approval.goal_id, approval.tenant, approve, answer.by,
                                   answer.comment, SOURCE)
            await publish(f"{event.decision} {approval_id}", event, approval.traceparent)
            answered[approval_id] = event.model_dump(mode="json")
        return event.model_dump(mode="json")

    @router.post("/approvals/{approval_id}/approve")
    async def approve(approval_id: str, answer: Answer) -> dict[str, Any]:
        return await decide(approval_id, answer, True)

    @router.post("/approvals/{approval_id}/reject")
    async def reject(approval_id: str, answer: Answer) -> dict[str, Any]:
        return await decide(approval_id, answer, False)

    async def act(goal_id: str, action: str, answer: Answer) -> dict[str, Any]:
        if publish is None:
            raise HTTPException(503, "this auditor cannot publish goal actions")
        records = await store.records(goal_id)
        if not records:
            raise HTTPException(404, f"no goal {goal_id!r}")
        state = goal_state(records)
        allowed = {"retry": ("failed",), "cancel": ("running", "failed")}[action]
        if state not in allowed:
            done = {"retry": "retried", "cancel": "cancelled"}[action]
            raise HTTPException(409, f"goal {goal_id} is {state}: it cannot be {done}")
        tenant = str(records[0].event.get("tenant"))
        event = goal_action_event(goal_id, tenant, action, answer.by, answer.comment, SOURCE)
        await publish(f"{action} goal", event, None)
        return event.model_dump(mode="json")

    @router.post("/goals/{goal_id}/retry", status_code=202)
    async def retry(goal_id: str, answer: Answer) -> dict[str, Any]:
        return await act(goal_id, "retry", answer)

    @router.post("/goals/{goal_id}/cancel", status_code=202)
    async def cancel(goal_id: str, answer: Answer) -> dict[str, Any]:
        return await act(goal_id, "cancel", answer)

    return router
