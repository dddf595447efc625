"""Approvals and operator actions on memory stores: the router holds a step that needs a person
and resumes or fails it on the decision; the planner ends a goal on a rejection without a
replan, retries a failed goal's failed steps and cancels goals; the auditor projects approvals
from its records and publishes decisions over HTTP."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from services.auditor.approvals import approvals_view, goal_state
from services.auditor.audit import chain
from services.auditor.http import create_api
from services.auditor.store import AuditStore
from services.planner.handlers import PlannerDeps, handle as plan
from services.planner.model_planning import Planned
from services.planner.planning import Playbook
from services.planner.store import PlanStore
from services.router.approvals import approval_reason
from services.router.handlers import RouterDeps, handle as route
from services.router.routing import load_routing_table
from services.router.store import RouterStore
from shared.client import decision_event, goal_action_event
from shared.events import (
    ApprovalDecided,
    ApprovalRequested,
    Binding,
    ErrorCode,
    Event,
    GoalEscalated,
    GoalFailed,
    GoalSpec,
    GoalSubmitted,
    PlanCreated,
    PlanFinished,
    Step,
    StepDispatched,
    StepFailed,
    StepReady,
    StepSucceeded,
    TypedError,
    parse_approval_id,
)
from shared.settings import CONFIG_DIR
from shared.store import open_database

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TABLE = load_routing_table(CONFIG_DIR / "routing.yaml")
ROOT = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", time=NOW,
                     goal=GoalSpec(text="Pay vendor Acme invoice INV-1", requester="cfo"))
TOOL = Binding(kind="tool", tool="vendor.pay", reason="step names tool vendor.pay")


# --- why a step waits (pure) ---------------------------------------------------------------


def test_reasons_to_wait_for_a_person():
    step = Step(id="pay", task_type="act", tool="vendor.pay", side_effect="write")
    assert approval_reason(step, TOOL, {}, {}, 1000) is None
    marked = step.model_copy(update={"needs_approval": True})
    assert approval_reason(marked, TOOL, {}, {}, 1000) == "step pay is marked needs_approval"
    # the catalogue's class counts, whatever the plan says
    assert approval_reason(step, TOOL, {}, {"vendor.pay": "irreversible"}, None) == "tool vendor.pay is irreversible"
    assert "input amount 5000 is above the approval threshold 1000" in approval_reason(step, TOOL, {"amount": 5000}, {}, 1000)
    assert approval_reason(step, TOOL, {"amount": 999.5}, {}, 1000) is None
    assert approval_reason(step, TOOL, {"amount": 5000}, {}, None) is None
    model = Binding(kind="model", model="openai/gpt-4o", reason="r", estimated_cost_usd=3.0)
    assert "estimated cost $3.00 is above the approval threshold $2" in approval_reason(
        Step(id="w", task_type="write", instruction="w"), model, {}, {}, 2.0)


def test_approval_ids_name_goal_step_and_attempt():
    assert parse_approval_id("goal-1:pay:2:approval", "goal-1") == ("pay", 2)
    with pytest.raises(ValueError):
        parse_approval_id("goal-2:pay:2:approval", "goal-1")
    decided = decision_event("goal-1:pay:2:approval", "goal-1", "acme", False, "ops", "too much")
    assert (decided.id, decided.step_id, decided.attempt, decided.decision) == (
        "goal-1:pay:2:approval:decided", "pay", 2, "rejected")


# --- router: hold, resume, reject ----------------------------------------------------------


@pytest.fixture
def router() -> RouterDeps:
    store = RouterStore(open_database("memory://", f"router_{uuid.uuid4().hex}"))
    return RouterDeps(decisions=store.decisions, table=TABLE, store=store,
                      tool_effects={"vendor.pay": "irreversible", "noop.echo": "read"}, approval_amount_usd=1000)


def ready(step: Step, attempt: int = 1, inputs: dict | None = None, time: datetime = NOW) -> StepReady:
    return ROOT.derive(StepReady, f"g:{step.id}:{attempt}:ready", "planner", plan_id="g:plan", step=step,
                       attempt=attempt, resolved_inputs=inputs or {"to": "ap@vendor.example", "amount": 10},
                       time=time)


def decided(approve: bool, by: str = "ops@acme.example", attempt: int = 1, comment: str = "") -> ApprovalDecided:
    return decision_event(f"g:pay:{attempt}:approval", "g", "ops-tenant", approve, by, comment)


PAY = Step(id="pay", task_type="act", tool="vendor.pay", side_effect="irreversible")


async def test_an_irreversible_step_is_held_with_redacted_inputs_then_dispatched_once_approved(router):
    (request,) = await route(ready(PAY), router)
    assert isinstance(request, ApprovalRequested)
    assert request.id == request.approval_id == "g:pay:1:approval"
    assert request.reason == "tool vendor.pay is irreversible"
    assert request.inputs == {"to": "[REDACTED:email]", "amount": 10}
    assert request.binding == TOOL and request.tenant == "acme"

    (dispatched,) = await route(decided(True), router)
    assert isinstance(dispatched, StepDispatched)
    assert dispatched.id == "g:pay:1:dispatched" and dispatched.approved_by == "ops@acme.example"
    assert dispatched.approval_id == "g:pay:1:approval" and dispatched.causation_id == "g:pay:1:approval:decided"
    # the executor gets the real inputs, and the goal's tenant (not the operator's)
    assert dispatched.resolved_inputs == {"to": "ap@vendor.example", "amount": 10} and dispatched.tenant == "acme"
    assert await route(decided(True), router) == [dispatched]  # a redelivery republishes the same


async def test_a_rejected_step_fails_for_good_and_later_decisions_are_ignored(router):
    await route(ready(PAY), router)
    (failed,) = await route(decided(False, comment="not this vendor"), router)
    assert isinstance(failed, StepFailed) and failed.id == "g:pay:1:failed"
    assert failed.error.code is ErrorCode.POLICY_VIOLATION and not failed.error.retryable
    assert failed.error.message == "rejected by ops@acme.example: not this vendor"
    assert failed.error.details["approval_id"] == "g:pay:1:approval"
    # a decision under another id (not through the client) comes too late
    late = decided(True).model_copy(update={"id": "g:pay:1:approval:other"})
    assert await route(late, router) == []


async def test_a_needs_approval_step_and_an_amount_above_the_threshold_wait_too(router):
    echo = Step(id="e", task_type="act", tool="noop.echo")
    (dispatched,) = await route(ready(echo), router)
    assert isinstance(dispatched, StepDispatched) and dispatched.approved_by is None
    (held,) = await route(ready(echo.model_copy(update={"id": "f", "needs_approval": True})), router)
    assert isinstance(held, ApprovalRequested)
    (big,) = await route(ready(echo.model_copy(update={"id": "h"}), inputs={"amount": 25_000}), router)
    assert isinstance(big, ApprovalRequested) and "input amount 25000" in big.reason


async def test_steps_waiting_when_the_goal_ends_never_run(router):
    await route(ready(PAY), router)
    finished = ROOT.derive(PlanFinished, "g:plan:finished", "planner", plan_id="g:plan", status="failed",
                           error=TypedError(code=ErrorCode.CANCELLED, message="cancelled"), submitted_at=NOW,
                           time=NOW + timedelta(seconds=5))
    assert await route(finished, router) == []
    assert await route(decided(True), router) == []
    # a retry's new attempt, held after the end, is not affected
    await route(ready(PAY, attempt=2, time=NOW + timedelta(seconds=10)), router)
    (dispatched,) = await route(decided(True, attempt=2), router)
    assert isinstance(dispatched, StepDispatched) and dispatched.attempt == 2


async def test_a_decision_for_no_held_step_is_ignored(router):
    assert await route(decided(True), router) == []


# --- planner: rejection, retry, cancel -----------------------------------------------------

PAYMENT = Playbook.model_validate({
    "name": "pay", "match": {"all_words": ["pay", "vendor"]},
    "steps": [
        {"id": "check", "task_type": "extract", "tool": "noop.echo"},
        {"id": "pay", "task_type": "act", "tool": "noop.echo", "needs_approval": True,
         "inputs": {"checked": {"$ref": "steps.check.output"}}},
    ],
    "outputs": {"paid": {"$ref": "steps.pay.output"}},
})


class Replanner:
    """A model planner that finds no revision, counting how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def forbidden(self, *_: object) -> bool:
        return False

    async def replan(self, *_: object) -> Planned:
        self.asked += 1
        return Planned(plan=None, error=TypedError(code=ErrorCode.NO_PLAN, message="no revision"))


@pytest.fixture
def planner() -> PlannerDeps:
    store = PlanStore(open_database("memory://", f"planner_{uuid.uuid4().hex}"))
    return PlannerDeps(store=store, playbooks={"pay": PAYMENT}, tool_names=frozenset({"noop.echo"}),
                       clock=lambda: NOW, planner=Replanner())  # type: ignore[arg-type]


def result(ready_event: StepReady, ok: bool = True, error: TypedError | None = None) -> Event:
    key = f"{ready_event.goal_id}:{ready_event.step.id}:{ready_event.attempt}"
    if ok:
        return ready_event.derive(StepSucceeded, f"{key}:succeeded", "executor", plan_id=ready_event.plan_id,
                                  step_id=ready_event.step.id, attempt=ready_event.attempt, output={"ok": 1},
                                  binding=TOOL)
    return ready_event.derive(StepFailed, f"{key}:failed", "router", plan_id=ready_event.plan_id,
                              step_id=ready_event.step.id, attempt=ready_event.attempt,
                              error=error or TypedError(code=ErrorCode.UPSTREAM_ERROR, message="down"))


def action(kind: str, by: str = "ops@acme.example") -> Event:
    return goal_action_event("g", "operators", kind, by, "see ticket 7")


async def _to_pay(planner: PlannerDeps) -> StepReady:
    _, check = await plan(ROOT, planner)
    (pay,) = await plan(result(check), planner)
    assert pay.step.id == "pay"
    return pay


async def test_a_rejection_ends_the_goal_without_replan_or_escalation(planner):
    pay = await _to_pay(planner)
    rejection = TypedError(code=ErrorCode.POLICY_VIOLATION, message="rejected by ops: no",
                           details={"approval_id": "g:pay:1:approval"})
    (finished,) = await plan(result(pay, ok=False, error=rejection), planner)
    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.message == "rejected by ops: no"
    assert planner.planner.asked == 0


async def test_an_escalated_goal_is_retried_from_its_failed_step_and_completes(planner):
    pay = await _to_pay(planner)
    escalated, finished = await plan(result(pay, ok=False), planner)
    assert isinstance(escalated, GoalEscalated) and escalated.id == "g:escalated"
    assert [c["step_id"] for c in escalated.error.details["failure_chain"]] == ["pay"]
    assert finished.id == "g:plan:finished" and finished.status == "failed"

    retry = action("retry")
    (again,) = await plan(retry, planner)
    assert isinstance(again, StepReady) and again.step.id == "pay" and again.attempt == 2
    assert again.id == "g:pay:2:ready" and again.tenant == "acme"  # the goal's tenant
    assert await plan(retry, planner) == [again]  # a redelivered action republishes the same
    (done,) = await plan(result(again), planner)
    assert isinstance(done, PlanFinished) and done.status == "completed"
    assert done.id == "g:plan:finished:1"  # a new end: the auditor publishes a new outcome
    assert await plan(action("retry"), planner) == []  # nothing to retry in a completed goal
    assert await plan(action("cancel"), planner) == []


async def test_a_retried_goal_that_fails_again_is_escalated_again_with_the_whole_chain(planner):
    pay = await _to_pay(planner)
    await plan(result(pay, ok=False), planner)
    (again,) = await plan(action("retry"), planner)
    escalated, finished = await plan(result(again, ok=False), planner)
    assert escalated.id == "g:escalated:1" and finished.id == "g:plan:finished:1"
    assert [c["attempt"] for c in escalated.error.details["failure_chain"]] == [1, 2]


async def test_cancel_ends_a_running_goal_and_its_late_results_are_ignored(planner):
    pay = await _to_pay(planner)
    (cancelled,) = await plan(action("cancel"), planner)
    assert isinstance(cancelled, PlanFinished) and cancelled.status == "failed"
    assert cancelled.id == "g:plan:finished"
    assert cancelled.error.code is ErrorCode.CANCELLED
    assert cancelled.error.message == "cancelled by ops@acme.example: see ticket 7"
    assert await plan(result(pay), planner) == []
    assert await plan(action("retry"), planner) == []
    assert (await planner.store.get("g")).status == "cancelled"


async def test_cancel_of_an_escalated_goal_ends_it_again_as_cancelled(planner):
    pay = await _to_pay(planner)
    await plan(result(pay, ok=False), planner)
    (cancelled,) = await plan(action("cancel"), planner)
    assert cancelled.id == "g:plan:finished:1" and cancelled.error.code is ErrorCode.CANCELLED


async def test_an_action_on_an_unknown_goal_is_ignored(planner):
    assert await plan(action("retry"), planner) == []


# --- auditor: the approvals projection and the HTTP API ------------------------------------


async def _audit(store: AuditStore, *events: Event) -> None:
    for event in events:
        assert await store.append(chain(event, await store.head(event.goal_id)), [])


def _requested(goal_id: str = "g", step_id: str = "pay", seconds: int = 0) -> ApprovalRequested:
    root = ROOT.model_copy(update={"goal_id": goal_id, "id": f"{goal_id}:submitted"})
    step = PAY.model_copy(update={"id": step_id})
    return root.derive(ApprovalRequested, f"{goal_id}:{step_id}:1:approval", "goalrail/router",
                       approval_id=f"{goal_id}:{step_id}:1:approval", plan_id=f"{goal_id}:plan", step=step,
                       inputs={"to": "[REDACTED:email]"}, reason="tool vendor.pay is irreversible", binding=TOOL,
                       traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                       time=NOW + timedelta(seconds=seconds))


@pytest.fixture
def audit() -> AuditStore:
    return AuditStore(open_database("memory://", f"auditor_{uuid.uuid4().hex}"))


async def test_pending_approvals_come_first_and_decided_ones_show_who(audit):
    await _audit(audit, _requested("g1", seconds=2), _requested("g2", seconds=1), _requested("g3"),
                 decision_event("g3:pay:1:approval", "g3", "acme", True, "ops"),
                 decision_event("g3:pay:1:approval", "g3", "acme", False, "late").model_copy(update={"id": "x"}))
    view = approvals_view(await audit.all_records())
    assert [(a.goal_id, a.status, a.decided_by) for a in view] == [
        ("g2", "pending", None), ("g1", "pending", None), ("g3", "approved", "ops")]
    first = view[0]
    assert (first.step_id, first.tool, first.side_effect, first.tenant) == ("pay", "vendor.pay", "irreversible", "acme")
    assert first.inputs == {"to": "[REDACTED:email]"}


async def test_http_lists_decides_once_and_acts_on_goals(audit):
    published: list[tuple[str, Event, str | None]] = []

    async def publish(name: str, event: Event, traceparent: str | None) -> None:
        published.append((name, event, traceparent))

    await _audit(audit, _requested("g1"), _requested("g2"))
    api = create_api(audit, {}, publish)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://auditor") as http:
        listed = (await http.get("/approvals?status=pending")).json()["approvals"]
        assert {a["approval_id"] for a in listed} == {"g1:pay:1:approval", "g2:pay:1:approval"}
        assert set(listed[0]) >= {"approval_id", "goal_id", "tenant", "step_id", "tool", "side_effect", "reason",
                                  "inputs", "requested_at", "status", "decided_by"}

        answer = await http.post("/approvals/g1:pay:1:approval/approve", json={"by": "ops", "comment": "ok"})
        assert answer.status_code == 200 and answer.json()["decision"] == "approved"
        (name, event, traceparent), = published
        assert isinstance(event, ApprovalDecided) and event.id == "g1:pay:1:approval:decided"
        assert event.tenant == "acme" and traceparent.startswith("00-0af7651916cd43dd")  # the goal's trace
        # answered before the auditor stored its own decision: still only once
        assert (await http.post("/approvals/g1:pay:1:approval/reject", json={"by": "x"})).status_code == 409
        await _audit(audit, event)
        assert (await http.post("/approvals/g1:pay:1:approval/reject", json={"by": "x"})).status_code == 409
        assert (await http.post("/approvals/nope:s:1:approval/approve", json={"by": "x"})).status_code == 404
        assert (await http.post("/approvals/g2:pay:1:approval/reject", json={"by": ""})).status_code == 422
        assert [a["status"] for a in (await http.get("/approvals")).json()["approvals"]] == ["pending", "approved"]

        # goal actions: retry only a failed goal, cancel a running or failed one
        assert (await http.post("/goals/g2/retry", json={"by": "ops"})).status_code == 409
        assert (await http.post("/goals/nope/cancel", json={"by": "ops"})).status_code == 404
        failed = ROOT.model_copy(update={"goal_id": "g2"}).derive(
            GoalFailed, "g2:outcome", "goalrail/auditor", error=TypedError(code=ErrorCode.UPSTREAM_ERROR, message="x"))
        await _audit(audit, failed)
        retried = await http.post("/goals/g2/retry", json={"by": "ops", "comment": "fixed upstream"})
        assert retried.status_code == 202 and retried.json()["action"] == "retry"
        assert published[-1][1].tenant == "acme" and published[-1][1].requested_by == "ops"
        assert (await http.post("/goals/g2/cancel", json={"by": "ops"})).status_code == 202


def test_goal_state_follows_outcomes_and_retries():
    assert goal_state([]) == "running"


async def test_without_a_publisher_decisions_are_refused(audit):
    await _audit(audit, _requested("g1"))
    api = create_api(audit, {})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://auditor") as http:
        assert (await http.post("/approvals/g1:pay:1:approval/approve", json={"by": "ops"})).status_code == 503


def test_plan_created_is_not_an_approval():
    assert approvals_view([chain(ROOT.derive(PlanCreated, "g:plan:created", "p",
                                             plan={"plan_id": "g:plan", "source": "x", "steps": []},
                                             goal_text="t"), None)]) == []
