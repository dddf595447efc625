"""LLM planning through litellm's real HTTP path against a local OpenAI-compatible server: the
planner's handlers with the real model client, a scripted model and an in-memory store.

Repair of an invalid plan, failure with the validation errors after the repair rounds, and a
revised plan after a permanent step failure (then escalation once the replans are used up)."""

from __future__ import annotations

import json
import uuid

import pytest
from opentelemetry import trace

from services.planner.handlers import PlannerDeps, handle
from services.planner.model_planning import ModelPlanner
from services.planner.planning import load_playbooks
from services.planner.store import PlanStore
from shared.events import (
    ErrorCode,
    GoalEscalated,
    GoalSubmitted,
    PlanCreated,
    PlanFinished,
    StepFailed,
    StepReady,
)
from shared.models.client import ModelClient
from shared.models.routing_table import parse_routing_table
from shared.settings import CONFIG_DIR
from shared.store import open_database
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy
from tests.factories import NOW, failed, goal_submitted, succeeded
from tests.fakes.openai_server import FakeOpenAI

GOAL = "Compare Q3 sales with our top accounts"  # no playbook covers it
SPECS = {spec.name: spec for spec in build_catalogue().catalogue()}

FIGURES = {"id": "fetch_figures", "task_type": "extract", "tool": "sales.get_figures",
           "inputs": {"quarter": "Q3", "year": 2026}}
ACCOUNTS = {"id": "fetch_accounts", "task_type": "extract", "tool": "crm.top_accounts",
            "inputs": {"quarter": "Q3", "year": 2026}}
SUMMARY = {"id": "write_summary", "task_type": "summarise", "instruction": "Compare Q3 sales with the top accounts",
           "inputs": {"figures": {"$ref": "steps.fetch_figures.output"}, "accounts": {"$ref": "steps.fetch_accounts.output"}},
           "depends_on": ["fetch_figures", "fetch_accounts"]}
PLAN = {"steps": [FIGURES, ACCOUNTS, SUMMARY], "outputs": {"summary": {"$ref": "steps.write_summary.output.text"}}}
# the model forgot depends_on, used a tool that does not exist and a quarter the tool rejects
INVALID = {"steps": [{**FIGURES, "inputs": {"quarter": "third", "year": 2026}},
                     {**ACCOUNTS, "tool": "crm.accounts"},
                     {**SUMMARY, "depends_on": ["fetch_figures"]}],
           "outputs": PLAN["outputs"]}
REVISED = {"steps": [FIGURES, {**SUMMARY, "inputs": {"figures": {"$ref": "steps.fetch_figures.output"}},
                               "depends_on": ["fetch_figures"]}],
           "outputs": PLAN["outputs"]}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("GOALRAIL_TEST_PLANNER_KEY", "test-key")
    with FakeOpenAI() as fake:
        yield fake


def deps_for(server: FakeOpenAI, repair_rounds: int = 2, max_replans: int = 1) -> PlannerDeps:
    table = parse_routing_table({
        "default": {"candidates": [{"model": "goalrail/offline-writer"}]},
        "task_types": {"plan": {"candidates": [{"model": "openai/planner", "api_base": server.base_url,
                                                "api_key_env": "GOALRAIL_TEST_PLANNER_KEY"}]}},
        "router": {"num_retries": 0},
    })
    models = ModelClient(trace.get_tracer("test"), timeout_s=10, table=table)
    planner = ModelPlanner(models=models, model="openai/planner", tools=SPECS,
                           policy=ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml"), repair_rounds=repair_rounds)
    store = PlanStore(open_database("memory://", f"planner_{uuid.uuid4().hex}"))
    return PlannerDeps(store=store, playbooks=load_playbooks(CONFIG_DIR / "playbooks"),
                       tool_names=frozenset(SPECS), clock=lambda: NOW, planner=planner, max_replans=max_replans)


def submitted(text: str = GOAL, **spec) -> GoalSubmitted:
    return goal_submitted(text, **spec)


def failed_for_good(ready: StepReady, message: str = "account service is gone") -> StepFailed:
    return failed(ready, retryable=False, message=message)


def prompt_data(request: dict) -> dict:
    user = request["messages"][-1]["content"]
    return json.loads(user.split("```json\n", 1)[1].rsplit("\n```", 1)[0])


async def test_an_invalid_plan_is_repaired_with_the_errors_fed_back(server):
    server.script("planner", [INVALID, PLAN])
    out = await handle(submitted(), deps_for(server))

    created, *ready = out
    assert isinstance(created, PlanCreated) and created.plan.source == "model:openai/planner"
    assert [s.id for s in created.plan.steps] == ["fetch_figures", "fetch_accounts", "write_summary"]
    assert [r.step.id for r in ready] == ["fetch_figures", "fetch_accounts"]
    first, second = server.requests_for("planner")
    assert first["response_format"]["type"] == "json_schema"
    assert "steps" in first["response_format"]["json_schema"]["schema"]["properties"]
    shown = {t["name"] for t in prompt_data(first)["tools"]}
    assert {"sales.get_figures", "crm.top_accounts"} <= shown
    feedback = prompt_data(second)
    assert json.loads(feedback["rejected_answer"]) == INVALID
    problems = " | ".join(feedback["problems"])
    assert "unknown tool 'crm.accounts'" in problems
    assert "'third' does not match '^Q[1-4]$'" in problems
    assert "uses step 'fetch_accounts', which is not in depends_on" in problems
    record = await deps_for(server).store.get("g")  # another store: nothing leaks between tests
    assert record is None


async def test_a_plan_still_invalid_after_the_repair_rounds_fails_the_goal_with_the_errors(server):
    server.script("planner", [INVALID, "this is not JSON", INVALID])
    deps = deps_for(server, repair_rounds=2)
    (finished,) = await handle(submitted(), deps)

    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.code is ErrorCode.NO_PLAN
    assert finished.error.message.startswith("model openai/planner gave no valid plan in 3 attempts (2 repair rounds)")
    attempts = finished.error.details["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert "not valid JSON" in attempts[1]["problems"][0]
    assert any("unknown tool 'crm.accounts'" in p for p in attempts[2]["problems"])
    assert server.count("planner") == 3
    assert finished.usage.input_tokens > 0  # the planning calls count toward the goal's usage
    assert (await deps.store.get("g")).status == "failed"


async def test_a_model_that_cannot_plan_ends_the_goal_at_once_with_its_reason(server):
    server.script("planner", [{"cannot_plan": "no tool books flights"}])
    (finished,) = await handle(submitted("Book a flight to Lisbon"), deps_for(server))
    assert finished.error.code is ErrorCode.NO_PLAN
    assert finished.error.message == "model openai/planner cannot plan the goal: no tool books flights"
    assert server.count("planner") == 1


async def test_a_model_outage_fails_the_goal_with_the_model_error_not_a_hang(server):
    from tests.fakes.openai_server import Status

    server.script("planner", [Status(500, message="down")])
    (finished,) = await handle(submitted(), deps_for(server))
    assert finished.status == "failed" and finished.error.code is ErrorCode.MODEL_ERROR
    assert finished.error.message.startswith("planning failed: model openai/planner failed")


async def test_a_permanent_step_failure_gets_a_revised_plan_that_keeps_completed_steps(server):
    server.script("planner", [PLAN, REVISED])
    deps = deps_for(server)
    _, figures, accounts = await handle(submitted(), deps)
    assert await handle(succeeded(figures, {"totals": {"revenue": 5}}), deps) == []

    revised, summary = await handle(failed_for_good(accounts), deps)

    assert isinstance(revised, PlanCreated) and revised.id == "g:plan:revised:1"
    assert revised.plan.plan_id == "g:plan:r1"
    assert [s.id for s in revised.plan.steps] == ["fetch_figures", "write_summary"]
    assert isinstance(summary, StepReady) and summary.step.id == "write_summary"
    assert summary.resolved_inputs == {"figures": {"totals": {"revenue": 5}}}  # the kept step's output
    replan = prompt_data(server.requests_for("planner")[1])["replan"]
    assert replan["completed"] == ["fetch_figures"]
    assert replan["failed"]["step_id"] == "fetch_accounts"
    assert replan["failed"]["error"]["message"] == "account service is gone"

    (finished,) = await handle(succeeded(summary, {"text": "Sales were 5."}), deps)
    assert finished.status == "completed" and finished.outputs == {"summary": "Sales were 5."}
    record = await deps.store.get("g")
    assert record.replans == 1 and [f["step_id"] for f in record.failure_chain] == ["fetch_accounts"]


async def test_past_the_replan_limit_the_goal_is_escalated_with_the_failure_chain(server):
    server.script("planner", [PLAN, REVISED])
    deps = deps_for(server, max_replans=1)
    _, figures, accounts = await handle(submitted(), deps)
    await handle(succeeded(figures, {"totals": {}}), deps)
    _, summary = await handle(failed_for_good(accounts), deps)

    escalated, finished = await handle(failed_for_good(summary, "the model refused"), deps)

    assert isinstance(escalated, GoalEscalated) and escalated.id == "g:escalated"
    assert "write_summary failed for good after 1 replan(s) (limit 1)" in escalated.reason
    chain = escalated.error.details["failure_chain"]
    assert [(c["step_id"], c["plan_id"]) for c in chain] == [("fetch_accounts", "g:plan"), ("write_summary", "g:plan:r1")]
    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.details["failure_chain"] == chain
    assert server.count("planner") == 2  # no third call: the limit is the planner's, not the model's


async def test_a_revision_that_repeats_the_failed_step_is_rejected_and_then_escalated(server):
    server.script("planner", [PLAN, PLAN])  # the "revision" runs the failed step again unchanged
    deps = deps_for(server, repair_rounds=1)
    _, figures, accounts = await handle(submitted(), deps)
    await handle(succeeded(figures, {"totals": {}}), deps)
    escalated, finished = await handle(failed_for_good(accounts), deps)
    assert isinstance(escalated, GoalEscalated)
    assert "no revised plan was found" in escalated.reason
    assert "step 'fetch_accounts' failed for good: remove it or change its tool or inputs" in escalated.reason
    assert finished.status == "failed"
