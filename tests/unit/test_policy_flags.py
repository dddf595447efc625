"""The auditor checks every event against the policy (flags, stored and shown) and verifies a
finished plan before it becomes the official outcome: every branch of the verification."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
from rich.console import Console
from typer.testing import CliRunner

import shared.cli_audit as cli_audit
from services.auditor.app import DATABASE
from services.auditor.audit import PolicyContext, PolicyFlag, outcome_for, policy_flags, verify_outcome
from services.auditor.handlers import AuditorDeps, handle
from services.auditor.http import create_api
from services.auditor.store import AuditStore
from shared.cli import app
from shared.events import (
    Binding,
    ErrorCode,
    GoalCompleted,
    GoalEscalated,
    GoalFailed,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanCreated,
    PlanFinished,
    Step,
    StepDispatched,
    StepSucceeded,
    TypedError,
)
from shared.governance.boundaries import model_clearances
from shared.models.routing_table import parse_routing_table
from shared.store import open_database, reset_memory_stores
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import parse_tool_policy
from tests.factories import audit_store  # noqa: F401 (a fixture)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
CARD = "4111 1111 1111 1111"
GOAL_TYPE = "playbook:quarterly-sales-report"
POLICY = parse_tool_policy({
    "tenants": {"*": {"scopes": ["*"]}, "readonly": {"scopes": ["sales.read"]}},
    "goal_types": {GOAL_TYPE: {"tools": ["sales.*", "reports.publish"], "data_classes": ["public", "internal"]}},
})
TABLE = parse_routing_table({"default": {"candidates": [
    {"model": "a/cloud"}, {"model": "a/local", "data_classes": ["public", "internal", "pii"]}]}})
CONTEXT = PolicyContext(policy=POLICY, tools={s.name: s for s in build_catalogue().catalogue()},
                        clearances=model_clearances(TABLE))
ROOT = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", time=T0,
                     goal=GoalSpec(text="Prepare the Q3 sales report", requester="cfo"))
PLAN = Plan(plan_id="g:plan", source=GOAL_TYPE, steps=[
    Step(id="summary", task_type="summarise", instruction="Summarise"),
    Step(id="publish", task_type="act", tool="reports.publish", inputs={"body": {"$ref": "steps.summary.output.text"}}),
])


def dispatch(step: Step, binding: Binding, inputs: dict | None = None, tenant: str = "acme",
             goal_type: str | None = GOAL_TYPE) -> StepDispatched:
    return ROOT.model_copy(update={"tenant": tenant}).derive(
        StepDispatched, f"g:{step.id}:1:dispatched", "router", plan_id="g:plan", step=step,
        resolved_inputs=inputs or {}, binding=binding, goal_type=goal_type)


def finished(step_states: dict[str, str], outputs: dict | None = None) -> PlanFinished:
    return ROOT.derive(PlanFinished, "g:plan:finished", "planner", plan_id="g:plan", status="completed",
                       outputs=outputs or {"summary": "ok"}, step_states=step_states, submitted_at=T0)


def flag(status: str = "open", rule: str = "outside_data_boundary") -> PolicyFlag:
    return PolicyFlag(flag_id=f"x:{rule}:1", goal_id="g", event_id="x", event_type="goalrail.step.dispatched",
                      rule=rule, status=status, message="tool 'tracker.create_issue' is outside", step_id="s", time=T0)


# --- flags -------------------------------------------------------------------------------------


def rules(flags: list[PolicyFlag]) -> list[tuple[str, str]]:
    return [(f.rule, f.status) for f in flags]


def test_a_dispatched_tool_outside_the_goal_types_boundary_is_an_open_flag():
    step = Step(id="issue", task_type="act", tool="tracker.create_issue")
    (found,) = policy_flags(dispatch(step, Binding(kind="tool", tool="tracker.create_issue", reason="r")), CONTEXT)
    assert (found.rule, found.status, found.step_id) == ("outside_data_boundary", "open", "issue")
    assert found.flag_id == "g:issue:1:dispatched:outside_data_boundary:1"
    assert found.details["goal_type"] == GOAL_TYPE and "outside the data boundary" in found.message


def test_a_tool_the_tenant_lacks_is_an_open_flag_and_a_permitted_one_none():
    step = Step(id="publish", task_type="act", tool="reports.publish")
    binding = Binding(kind="tool", tool="reports.publish", reason="r")
    assert rules(policy_flags(dispatch(step, binding, tenant="readonly"), CONTEXT)) == [("tool_not_permitted", "open")]
    assert policy_flags(dispatch(step, binding), CONTEXT) == []


def test_a_model_binding_not_cleared_for_the_steps_data_classes_is_an_open_flag():
    step = Step(id="w", task_type="write", instruction="w", data_classes=["pii"])
    found = policy_flags(dispatch(step, Binding(kind="model", model="a/cloud", reason="r"), goal_type=None), CONTEXT)
    assert rules(found) == [("model_not_cleared", "open")]
    assert found[0].details == {"models": ["a/cloud"], "data_classes": ["pii"], "cleared_for": ["internal", "public"]}
    cleared = dispatch(step, Binding(kind="model", model="a/local", reason="r"), goal_type=None)
    assert policy_flags(cleared, CONTEXT) == []
    # a fallback not cleared for it breaks the policy as much
    chained = Binding(kind="model", model="a/local", fallbacks=["a/cloud"], reason="r")
    assert rules(policy_flags(dispatch(step, chained, goal_type=None), CONTEXT)) == [("model_not_cleared", "open")]
    # a declared class the goal type's boundary does not allow
    assert ("outside_data_boundary", "open") in rules(
        policy_flags(dispatch(step, Binding(kind="model", model="a/local", reason="r")), CONTEXT))


def test_personal_data_on_its_way_to_an_uncleared_model_or_web_tool_is_a_mitigated_flag():
    step = Step(id="w", task_type="write", instruction="Write to jane@acme.example")
    (to_model,) = policy_flags(dispatch(step, Binding(kind="model", model="a/cloud", reason="r"),
                                        {"card": CARD}), CONTEXT)
    assert (to_model.rule, to_model.status) == ("pii_to_model", "mitigated")
    assert to_model.details["found"] == ["$.inputs.card: card", "$.instruction: email"]
    assert CARD not in to_model.model_dump_json()  # a flag names where, never what
    assert policy_flags(dispatch(step, Binding(kind="model", model="a/local", reason="r"), {"card": CARD}),
                        CONTEXT) == []
    publish = Step(id="publish", task_type="act", tool="reports.publish")
    (to_tool,) = policy_flags(dispatch(publish, Binding(kind="tool", tool="reports.publish", reason="r"),
                                       {"body": f"card {CARD}"}), CONTEXT)
    assert (to_tool.rule, to_tool.status, to_tool.details["found"]) == ("pii_to_web_tool", "mitigated",
                                                                       ["$.body: card"])


def test_personal_data_in_an_output_headed_to_a_web_tool_is_flagged():
    done = ROOT.derive(StepSucceeded, "g:summary:1:succeeded", "executor", plan_id="g:plan", step_id="summary",
                       attempt=1, output={"text": f"paid with {CARD}"},
                       binding=Binding(kind="model", model="a/cloud", reason="r"))
    (found,) = policy_flags(done, CONTEXT, PLAN)
    assert (found.rule, found.status, found.step_id) == ("pii_headed_to_web_tool", "mitigated", "summary")
    assert found.details["tool"] == "reports.publish" and found.details["to_step"] == "publish"
    assert policy_flags(done, CONTEXT, None) == []
    clean = done.model_copy(update={"output": {"text": "fine"}})
    assert policy_flags(clean, CONTEXT, PLAN) == []


def test_a_plan_outside_its_boundary_is_flagged_when_it_is_created():
    plan = PLAN.model_copy(update={"steps": [*PLAN.steps, Step(id="issue", task_type="act",
                                                                tool="tracker.create_issue")]})
    created = ROOT.derive(PlanCreated, "g:plan:created", "planner", plan=plan, goal_text="t")
    assert [(f.rule, f.step_id) for f in policy_flags(created, CONTEXT)] == [("outside_data_boundary", "issue")]
    assert policy_flags(created.model_copy(update={"plan": PLAN}), CONTEXT) == []


# --- outcome verification: each branch ---------------------------------------------------------


def test_verified_plan_becomes_goal_completed():
    done = finished({"summary": "succeeded", "publish": "succeeded", "mail": "skipped"})
    assert verify_outcome(done, [flag("mitigated", "pii_to_model")]) == []
    (outcome,) = outcome_for(done, T0 + timedelta(seconds=2), None, [flag("mitigated", "pii_to_model")])
    assert isinstance(outcome, GoalCompleted) and outcome.id == "g:outcome"


def test_a_step_that_did_not_succeed_escalates():
    done = finished({"summary": "succeeded", "publish": "running"})
    escalated, failed = outcome_for(done, T0, "t" * 32, [])
    assert isinstance(escalated, GoalEscalated) and escalated.id == "g:outcome:escalated"
    assert escalated.reason == "outcome verification failed: step 'publish' ended 'running', not succeeded or skipped"
    assert escalated.topic.value == "goals.escalations" and escalated.trace_id == "t" * 32
    assert isinstance(failed, GoalFailed) and failed.id == "g:outcome"
    assert failed.error.code is ErrorCode.POLICY_VIOLATION and failed.error == escalated.error


def test_an_open_policy_flag_escalates():
    done = finished({"summary": "succeeded"})
    escalated, failed = outcome_for(done, T0, None, [flag("open"), flag("mitigated", "pii_to_model")])
    assert "open policy flag outside_data_boundary on step.dispatched s" in escalated.reason
    assert failed.error.details["flags"] == ["x:outside_data_boundary:1"]


def test_outputs_that_cannot_be_redacted_escalate(monkeypatch):
    import services.auditor.audit as audit

    monkeypatch.setattr(audit, "redact_value", lambda value, *a: value)  # a redaction that fails
    reasons = verify_outcome(finished({"summary": "succeeded"}, {"summary": f"card {CARD}"}), [])
    assert reasons == ["outputs still hold personal data after redaction at ['$.summary']"]


def test_outputs_with_personal_data_are_published_redacted():
    (outcome,) = outcome_for(finished({"summary": "succeeded"}, {"summary": f"card {CARD}"}), T0, None, [])
    assert isinstance(outcome, GoalCompleted) and outcome.outputs == {"summary": "card [REDACTED:card]"}


def test_a_failed_plan_stays_a_failed_goal_whatever_the_flags():
    failed_plan = finished({"summary": "failed"}).model_copy(
        update={"status": "failed", "error": TypedError(code=ErrorCode.UPSTREAM_ERROR, message="down")})
    (outcome,) = outcome_for(failed_plan, T0, None, [flag("open")])
    assert isinstance(outcome, GoalFailed) and outcome.error.code is ErrorCode.UPSTREAM_ERROR


# --- the handler stores flags; the API and the CLI show them ----------------------------------


async def test_the_handler_stores_flags_once_and_escalates_a_goal_with_an_open_one(audit_store):
    deps = AuditorDeps(store=audit_store, clock=lambda: T0 + timedelta(seconds=3), policy=CONTEXT)
    issue = Step(id="issue", task_type="act", tool="tracker.create_issue")
    outside = dispatch(issue, Binding(kind="tool", tool="tracker.create_issue", reason="r"))
    assert await handle(outside, deps) == []
    assert await handle(outside, deps) == []  # redelivered: no second flag
    (stored,) = await audit_store.flags("g")
    assert stored.rule == "outside_data_boundary"
    escalated, failed = await handle(finished({"issue": "succeeded"}), deps)
    assert isinstance(escalated, GoalEscalated) and isinstance(failed, GoalFailed)
    assert await handle(finished({"issue": "succeeded"}), deps) == [escalated, failed]  # replayed, not re-verified


async def test_the_handler_completes_a_goal_with_only_mitigated_flags(audit_store):
    deps = AuditorDeps(store=audit_store, clock=lambda: T0, policy=CONTEXT)
    await handle(ROOT.derive(PlanCreated, "g:plan:created", "planner", plan=PLAN, goal_text="t"), deps)
    summary = ROOT.derive(StepSucceeded, "g:summary:1:succeeded", "executor", plan_id="g:plan", step_id="summary",
                          attempt=1, output={"text": f"card {CARD}"},
                          binding=Binding(kind="model", model="a/cloud", reason="r"))
    await handle(summary, deps)
    assert rules(await audit_store.flags("g")) == [("pii_headed_to_web_tool", "mitigated")]
    (outcome,) = await handle(finished({"summary": "succeeded", "publish": "succeeded"}), deps)
    assert isinstance(outcome, GoalCompleted)
    # the stored record of the output is redacted, the flag names only where
    records = await audit_store.records("g")
    assert all(CARD not in str(r.event) for r in records)


async def test_the_audit_api_lists_the_flags(audit_store):
    deps = AuditorDeps(store=audit_store, clock=lambda: T0, policy=CONTEXT)
    await handle(ROOT, deps)
    await handle(dispatch(Step(id="issue", task_type="act", tool="tracker.create_issue"),
                          Binding(kind="tool", tool="tracker.create_issue", reason="r")), deps)
    api = create_api(audit_store, {})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://auditor") as http:
        audit = (await http.get("/goals/g/audit")).json()
    (listed,) = audit["policy_flags"]
    assert (listed["rule"], listed["status"], listed["step_id"]) == ("outside_data_boundary", "open", "issue")


def test_audit_show_prints_the_flags(monkeypatch):
    monkeypatch.setattr(cli_audit, "console", Console(width=250))
    reset_memory_stores()
    try:
        async def fill() -> None:
            store = AuditStore(open_database("memory://", DATABASE))
            await store.init()
            deps = AuditorDeps(store=store, clock=lambda: T0, policy=CONTEXT)
            await handle(ROOT, deps)
            await handle(dispatch(Step(id="issue", task_type="act", tool="tracker.create_issue"),
                                  Binding(kind="tool", tool="tracker.create_issue", reason="r")), deps)

        asyncio.run(fill())
        result = CliRunner().invoke(app, ["audit", "show", "g", "--mongo-url", "memory://"])
        assert result.exit_code == 0, result.output
        assert "Policy flags of g" in result.output
        assert "open" in result.output and "outside_data_boundary" in result.output
    finally:
        reset_memory_stores()
