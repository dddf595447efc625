"""The planner's handlers with the model path on (the offline planner through the model
client): goals no playbook covers, playbooks adapted by the model, replanning, deadlines and
budgets."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from opentelemetry import trace

from services.planner.handlers import PlannerDeps, expire_overdue, handle
from services.planner.model_planning import ModelPlanner
from services.planner.planning import load_playbooks
from services.planner.store import PlanStore
from shared.events import (
    Budget,
    Constraints,
    ErrorCode,
    GoalEscalated,
    PlanCreated,
    PlanFinished,
    Usage,
)
from shared.models.client import ModelClient
from shared.settings import CONFIG_DIR
from shared.store import open_database
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy
from tests.factories import NOW, failed, goal_submitted as goal, succeeded

SPECS = {spec.name: spec for spec in build_catalogue().catalogue()}
MODELS = ModelClient(trace.get_tracer("test"))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deps(clock) -> PlannerDeps:
    planner = ModelPlanner(models=MODELS, model="goalrail/offline-planner", tools=SPECS,
                           policy=ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml"))
    store = PlanStore(open_database("memory://", f"planner_{uuid.uuid4().hex}"))
    return PlannerDeps(store=store, playbooks=load_playbooks(CONFIG_DIR / "playbooks"), tool_names=frozenset(SPECS),
                       clock=clock, planner=planner, max_replans=1)


async def test_a_goal_no_playbook_covers_is_planned_by_the_model(deps):
    created, ready = await handle(goal("Summarise our top CRM accounts"), deps)
    assert isinstance(created, PlanCreated) and created.plan.source == "model:goalrail/offline-planner"
    assert ready.step.tool == "crm.top_accounts" and ready.resolved_inputs == {"quarter": "Q3", "year": 2026}
    (summary,) = await handle(succeeded(ready, {"accounts": [{"name": "Acme", "revenue": 9}]}), deps)
    assert summary.step.task_type == "summarise"
    (finished,) = await handle(succeeded(summary, {"text": "Acme leads."}), deps)
    assert finished.status == "completed" and finished.outputs == {"summary": "Acme leads."}
    assert finished.usage.input_tokens > 0  # the planning call


async def test_a_matching_playbook_is_still_used_as_is(deps):
    created, *_ = await handle(goal("Prepare the Q3 sales report for the board"), deps)
    assert created.plan.source == "playbook:quarterly-sales-report"


async def test_a_playbook_can_be_the_models_starting_point(deps):
    created, *_ = await handle(goal("Prepare the Q3 sales report for the board", adapt_playbook=True), deps)
    assert created.plan.source == "model:goalrail/offline-planner"
    assert [s.id for s in created.plan.steps] == ["fetch_figures", "fetch_accounts", "write_summary", "publish_report"]


async def test_a_playbook_that_breaks_the_goals_constraints_is_adapted_by_the_model(deps):
    allowed = ["sales.get_figures", "reports.publish"]
    created, ready = await handle(goal("Prepare the Q3 sales report for the board",
                                       constraints=Constraints(allowed_tools=allowed)), deps)
    assert created.plan.source == "model:goalrail/offline-planner"
    assert [s.tool for s in created.plan.steps] == ["sales.get_figures", None, "reports.publish"]
    summary = created.plan.steps[1]
    assert summary.inputs == {"figures": {"$ref": "steps.fetch_figures.output"}}


async def test_a_playbook_the_tenant_may_not_run_is_adapted_or_refused_with_the_reason(deps):
    readonly = goal("Prepare the Q3 sales report for the board").model_copy(update={"tenant": "readonly"})
    (finished,) = await handle(readonly, deps)
    assert finished.status == "failed" and finished.error.code is ErrorCode.NO_PLAN
    assert "asks to publish, but no permitted tool publishes" in finished.error.message


async def test_offline_replanning_goes_on_without_a_failed_read(deps):
    created, *ready = await handle(goal("Prepare the Q3 sales report for the board", adapt_playbook=True), deps)
    figures, accounts = ready
    await handle(succeeded(figures, {"totals": {"revenue": 5}}), deps)
    revised, summary = await handle(failed(accounts, retryable=False, message="CRM is down for good"), deps)
    assert isinstance(revised, PlanCreated) and [s.id for s in revised.plan.steps] == [
        "fetch_figures", "write_summary", "publish_report"]
    assert summary.step.id == "write_summary" and summary.resolved_inputs == {"figures": {"totals": {"revenue": 5}}}


async def test_without_a_revision_the_goal_is_escalated_with_the_failure(deps):
    _, ready = await handle(goal("Summarise our top CRM accounts"), deps)
    escalated, finished = await handle(failed(ready, retryable=False, message="CRM is down for good"), deps)
    assert isinstance(escalated, GoalEscalated) and "no revised plan was found" in escalated.reason
    assert escalated.error.code is ErrorCode.UPSTREAM_ERROR
    assert escalated.error.details["failure_chain"][0]["step_id"] == "fetch_top_accounts"
    assert isinstance(finished, PlanFinished) and finished.status == "failed"


async def test_a_goal_past_its_deadline_fails_before_planning(deps):
    (finished,) = await handle(goal("Summarise our top CRM accounts", deadline=NOW - timedelta(minutes=1)), deps)
    assert finished.status == "failed" and finished.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert "passed its deadline" in finished.error.message and finished.usage.input_tokens == 0


async def test_a_goal_past_its_deadline_while_running_fails_with_the_reason(deps, clock):
    _, ready = await handle(goal("Summarise our top CRM accounts", deadline=NOW + timedelta(minutes=5)), deps)
    clock.now = NOW + timedelta(minutes=6)
    (finished,) = await handle(succeeded(ready, {"accounts": []}), deps)
    assert finished.error.code is ErrorCode.DEADLINE_EXCEEDED


async def test_a_goal_over_its_time_budget_fails(deps, clock):
    _, ready = await handle(goal("Summarise our top CRM accounts",
                                 constraints=Constraints(budget=Budget(max_seconds=30))), deps)
    clock.now = NOW + timedelta(seconds=31)
    (finished,) = await handle(succeeded(ready, {"accounts": []}), deps)
    assert finished.error.code is ErrorCode.BUDGET_EXCEEDED
    assert finished.error.details["limit"] == "max_seconds"
    assert "over its time budget of 30s" in finished.error.message


async def test_a_goal_over_its_money_budget_fails(deps):
    _, ready = await handle(goal("Summarise our top CRM accounts",
                                 constraints=Constraints(budget=Budget(max_cost_usd=0.01))), deps)
    (finished,) = await handle(succeeded(ready, {"accounts": []}, Usage(cost_usd=0.02)), deps)
    assert finished.error.code is ErrorCode.BUDGET_EXCEEDED
    assert finished.error.details == {"limit": "max_cost_usd", "max_cost_usd": 0.01, "cost_usd": 0.02}


async def test_the_sweep_ends_a_goal_whose_step_never_answers(deps, clock):
    await handle(goal("Summarise our top CRM accounts", constraints=Constraints(budget=Budget(max_seconds=30))), deps)
    sent: list = []

    async def publish(events):
        sent.extend(events)

    assert await expire_overdue(deps, publish) == 0  # not yet
    clock.now = NOW + timedelta(seconds=31)
    assert await expire_overdue(deps, publish) == 1
    (finished,) = sent
    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.code is ErrorCode.BUDGET_EXCEEDED and finished.causation_id == "g:submitted"
    assert await expire_overdue(deps, publish) == 0  # once
    record = await deps.store.get("g")
    assert record.status == "failed" and not record.has_unpublished


async def test_events_of_a_sweep_that_could_not_publish_go_out_on_the_next(deps, clock):
    await handle(goal("Summarise our top CRM accounts", deadline=NOW + timedelta(seconds=5)), deps)
    clock.now = NOW + timedelta(seconds=6)

    async def broken(events):
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        await expire_overdue(deps, broken)
    sent: list = []

    async def publish(events):
        sent.extend(events)

    assert await expire_overdue(deps, publish) == 1
    assert [e.error.code for e in sent] == [ErrorCode.DEADLINE_EXCEEDED]


async def test_goals_without_limits_are_never_swept(deps, clock):
    await handle(goal("Summarise our top CRM accounts"), deps)
    clock.now = NOW + timedelta(days=30)
    assert await expire_overdue(deps, lambda events: None) == 0
