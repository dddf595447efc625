"""The offline planner turns real goals into valid, sensible plans over the demo catalogue, through
the same prompt, model client and validation a real model's answer goes through."""

from __future__ import annotations

import json
from datetime import date

import pytest
from opentelemetry import trace

from services.planner.model_planning import ModelPlanner
from services.planner.plan_validation import check_plan, permission
from shared.events import Constraints, GoalSpec, Plan, Step
from shared.models import offline_planner
from shared.models.client import ModelClient
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy
from shared.settings import CONFIG_DIR

TODAY = date(2026, 11, 25)
SPECS = {spec.name: spec for spec in build_catalogue().catalogue()}
POLICY = ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml")


def catalogue() -> list[dict]:
    return [{"name": s.name, "description": s.description, "input_schema": s.input_schema,
             "side_effect": s.side_effect} for s in SPECS.values()]


def offline(text: str, goal_input: dict | None = None, **extra) -> dict:
    goal = {"text": text, "input": goal_input or {}, "today": TODAY.isoformat()}
    return json.loads(offline_planner.plan(text, {"goal": goal, "tools": catalogue(), **extra}))


def valid(answer: dict, goal_input: dict | None = None, constraints: Constraints | None = None):
    draft, problems = check_plan(answer, SPECS, permission(constraints or Constraints(), "acme", POLICY),
                                 goal_input or {})
    assert problems == [] and draft is not None
    return draft


def tools_of(draft) -> list[str]:
    return [s.tool for s in draft.steps if s.tool]


def step(draft, tool: str) -> Step:
    return next(s for s in draft.steps if s.tool == tool)


# goal text -> (tools in order, model task type or None, inputs of the first tool)
GOALS = {
    "Prepare the Q3 sales report for the board": (
        ["sales.get_figures", "reports.publish"], "summarise", {"quarter": "Q3", "year": 2026}),
    "Summarise our top CRM accounts": (["crm.top_accounts"], "summarise", {"quarter": "Q3", "year": 2026}),
    "Publish a report of Q2 sales figures": (
        ["sales.get_figures", "reports.publish"], "summarise", {"quarter": "Q2", "year": 2026}),
    "Classify the Q4 figures by region": (["sales.get_figures"], "summarise", {"quarter": "Q4", "year": 2026}),
    "Write a brief on Q1 sales for the sales team": (["sales.get_figures"], "write", {"quarter": "Q1", "year": 2026}),
    "Send the top 5 accounts of the third quarter 2025 to management": (
        ["crm.top_accounts", "reports.publish"], "summarise", {"quarter": "Q3", "year": 2025, "limit": 5}),
    "Who are our biggest customers this quarter?": (["crm.top_accounts"], "summarise", {"quarter": "Q4", "year": 2026}),
    "List the published reports": (["reports.list"], None, {}),
    "Open an issue about the Q3 sales shortfall for the sales team": (
        ["sales.get_figures", "tracker.create_issue"], "summarise", {"quarter": "Q3", "year": 2026}),
    "Close issue ISS-3": (["tracker.update_issue"], None, {"issue_id": "ISS-3", "status": "done"}),
    "List the open issues": (["tracker.list_issues"], None, {}),
}


@pytest.mark.parametrize("text", list(GOALS))
def test_offline_planner_turns_goals_into_valid_sensible_plans(text):
    tools, task_type, first_inputs = GOALS[text]
    draft = valid(offline(text))
    assert tools_of(draft) == tools
    assert draft.steps[0].inputs == first_inputs
    model_steps = [s for s in draft.steps if s.tool is None]
    assert [s.task_type for s in model_steps] == ([task_type] if task_type else [])
    if task_type:
        (model,) = model_steps
        assert model.instruction and model.depends_on == [s.id for s in draft.steps if s.side_effect == "read" and s.tool]
        assert all("$ref" in v for v in model.inputs.values())
    for writer in [s for s in draft.steps if s.side_effect == "write" and model_steps]:
        text = {"reports.publish": "body", "tracker.create_issue": "description"}[writer.tool]
        assert writer.inputs[text] == {"$ref": f"steps.{model_steps[0].id}.output.text"}
        assert writer.depends_on == [model_steps[0].id]
    assert draft.outputs  # every plan names its results


def test_only_goals_that_order_a_change_write():
    ordering = {"Prepare", "Publish", "Send", "Open", "Close"}
    for text in GOALS:
        draft = valid(offline(text))
        writes = [s for s in draft.steps if s.side_effect != "read"]
        assert len(writes) == (1 if text.split()[0] in ordering else 0), text


@pytest.mark.parametrize("text", ["Summarise the share of Q3 sales per region", "List the open issues",
                                  "Summarise the published reports"])
def test_words_that_are_not_orders_do_not_write(text):
    assert all(s.side_effect == "read" for s in valid(offline(text)).steps)


def test_report_title_and_audience_are_read_from_the_text():
    publish = step(valid(offline("Prepare the Q3 sales report for the board")), "reports.publish")
    assert publish.inputs["title"] == "Q3 sales report for the board"
    assert publish.inputs["audience"] == "board"
    publish = step(valid(offline("Send the top 5 accounts of the third quarter 2025 to management")), "reports.publish")
    assert publish.inputs["audience"] == "management"


def test_goal_input_is_referenced_not_copied():
    answer = offline("Summarise our top CRM accounts", {"quarter": "Q1", "year": 2025, "notes": "from the CFO"})
    draft = valid(answer, {"quarter": "Q1", "year": 2025, "notes": "from the CFO"})
    fetch = step(draft, "crm.top_accounts")
    assert fetch.inputs == {"quarter": {"$ref": "goal.input.quarter"}, "year": {"$ref": "goal.input.year"}}
    model = next(s for s in draft.steps if s.tool is None)
    assert model.inputs["notes"] == {"$ref": "goal.input.notes"}


def test_a_goal_without_a_matching_tool_becomes_a_model_task():
    draft = valid(offline("Write a haiku about Kafka"))
    assert [(s.tool, s.task_type) for s in draft.steps] == [(None, "write")]


def test_classify_with_labels_in_the_input_is_a_classify_task():
    answer = offline("Classify this ticket", {"text": "The invoice is wrong", "labels": ["billing", "tech"]})
    draft = valid(answer, {"text": "The invoice is wrong", "labels": ["billing", "tech"]})
    assert [s.task_type for s in draft.steps] == ["classify"]
    assert draft.outputs == {"label": {"$ref": "steps.classify.output.text"}}


def test_publishing_without_a_permitted_publisher_is_refused_with_the_reason():
    tools = [t for t in catalogue() if t["name"] != "reports.publish"]
    answer = json.loads(offline_planner.plan("x", {"goal": {"text": "Publish the Q2 sales report"}, "tools": tools}))
    assert "publish" in answer["cannot_plan"]


def test_a_playbook_is_adapted_to_the_tools_the_goal_may_use():
    steps = [
        {"id": "fetch_figures", "task_type": "extract", "tool": "sales.get_figures", "inputs": {"quarter": "Q3", "year": 2026}},
        {"id": "fetch_accounts", "task_type": "extract", "tool": "crm.top_accounts", "inputs": {"quarter": "Q3", "year": 2026}},
        {"id": "write_summary", "task_type": "summarise", "instruction": "Summarise",
         "inputs": {"figures": {"$ref": "steps.fetch_figures.output"}, "top": {"$ref": "steps.fetch_accounts.output"}}},
    ]
    playbook = {"steps": steps, "outputs": {"summary": {"$ref": "steps.write_summary.output.text"},
                                            "accounts": {"$ref": "steps.fetch_accounts.output"}}}
    tools = [t for t in catalogue() if t["name"] != "crm.top_accounts"]
    answer = json.loads(offline_planner.plan("x", {"goal": {"text": "Summarise Q3 sales"}, "tools": tools,
                                                   "playbook": playbook}))
    # the summary goes on without the accounts; the result that was the accounts goes
    assert [s["id"] for s in answer["steps"]] == ["fetch_figures", "write_summary"]
    assert answer["steps"][1]["inputs"] == {"figures": {"$ref": "steps.fetch_figures.output"}}
    assert answer["steps"][1]["depends_on"] == ["fetch_figures"]
    assert answer["outputs"] == {"summary": {"$ref": "steps.write_summary.output.text"}}


def test_replanning_goes_on_without_a_failed_read_and_refuses_to_work_around_a_failed_write():
    plan = valid(offline("Prepare the Q3 sales report for the board"))
    plan_data = {"steps": [s.model_dump(mode="json") for s in plan.steps], "outputs": plan.outputs}
    revised = offline_planner.answer("x", {"replan": {"plan": plan_data, "completed": [],
                                                      "failed": {"step_id": "fetch_figures", "error": {"message": "gone"}}}})
    assert "cannot_plan" in revised  # without figures the report has nothing: the publish must not run empty
    failed_write = offline_planner.answer("x", {"replan": {"plan": plan_data, "completed": ["fetch_figures", "write_summary"],
                                                           "failed": {"step_id": "publish_report", "error": {"message": "403"}}}})
    assert "a person should decide" in failed_write["cannot_plan"]


async def test_the_offline_model_plans_through_the_model_client_and_the_model_planner():
    planner = ModelPlanner(models=ModelClient(trace.get_tracer("test")), model="goalrail/offline-planner",
                           tools=SPECS, policy=POLICY)
    goal = GoalSpec(text="Publish a report of Q2 sales figures", requester="cfo")
    planned = await planner.plan(goal, "acme", "g:plan", TODAY)
    assert planned.error is None and planned.attempts == 1
    assert isinstance(planned.plan, Plan) and planned.plan.source == "model:goalrail/offline-planner"
    assert [s.tool for s in planned.plan.steps] == ["sales.get_figures", None, "reports.publish"]
    assert planned.usage.input_tokens > 0 and planned.usage.cost_usd == 0.0


async def test_tenant_policy_and_allowed_tools_narrow_what_the_model_sees():
    planner = ModelPlanner(models=ModelClient(trace.get_tracer("test")), model="goalrail/offline-planner",
                           tools=SPECS, policy=POLICY, max_tools=2)
    goal = GoalSpec(text="Summarise our top CRM accounts", requester="x")
    names = [t["name"] for t in planner.catalogue_for(goal, "acme")]
    assert names[0] == "crm.top_accounts" and len(names) == 2
    readonly = [t["name"] for t in ModelPlanner(models=None, model="m", tools=SPECS, policy=POLICY)
                .catalogue_for(goal, "readonly")]
    assert "reports.publish" not in readonly and "crm.top_accounts" in readonly
    narrowed = GoalSpec(text="x y z", requester="x", constraints=Constraints(allowed_tools=["noop.echo"]))
    assert [t["name"] for t in planner.catalogue_for(narrowed, "acme")] == ["noop.echo"]


def test_keyword_retrieval_narrows_a_large_catalogue_to_the_relevant_tools():
    from shared.tools.retrieval import rank_tools

    filler = [{"name": f"hr.tool_{i}", "description": f"Human resources: staff operation {i}"} for i in range(40)]
    tools = [*filler, *catalogue()]
    ranked = [t["name"] for t in rank_tools("Who are our biggest customers by revenue?", tools, limit=5)]
    assert ranked[0] == "crm.top_accounts" and len(ranked) == 5  # customers~accounts, biggest~top
    ranked = [t["name"] for t in rank_tools("Publish the Q2 sales figures", tools, limit=3)]
    assert set(ranked) == {"sales.get_figures", "reports.publish", "crm.top_accounts"}
    kept = [t["name"] for t in rank_tools("Publish the Q2 sales figures", tools, limit=1, keep=["noop.echo"])]
    assert kept == ["noop.echo"]
