"""Validation of a model's plan: every kind of problem is found and stated precisely."""

from __future__ import annotations

import copy

import pytest

from services.planner.plan_validation import check_plan, permission, response_schema
from shared.events import Constraints, Step
from shared.settings import CONFIG_DIR
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy

SPECS = {spec.name: spec for spec in build_catalogue().catalogue()}
POLICY = ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml")
GOOD = {
    "steps": [
        {"id": "fetch_figures", "task_type": "extract", "tool": "sales.get_figures",
         "inputs": {"quarter": "Q3", "year": {"$ref": "goal.input.year"}}},
        {"id": "write_summary", "task_type": "summarise", "instruction": "Summarise Q3 sales",
         "inputs": {"figures": {"$ref": "steps.fetch_figures.output"}}, "depends_on": ["fetch_figures"]},
        {"id": "publish_report", "task_type": "act", "tool": "reports.publish",
         "inputs": {"title": "Q3", "body": {"$ref": "steps.write_summary.output.text"}},
         "depends_on": ["write_summary"]},
    ],
    "outputs": {"report": {"$ref": "steps.publish_report.output"}},
}
GOAL_INPUT = {"year": 2026}


def check(candidate, constraints=None, tenant="acme", goal_input=GOAL_INPUT, keep=()):
    return check_plan(candidate, SPECS, permission(constraints or Constraints(), tenant, POLICY), goal_input, keep)


def changed(edit) -> dict:
    candidate = copy.deepcopy(GOOD)
    edit(candidate)
    return candidate


def only_problem(candidate, **kwargs) -> str:
    draft, problems = check(candidate, **kwargs)
    assert draft is None and len(problems) == 1, problems
    return problems[0]


def test_a_good_plan_passes_and_takes_side_effects_from_the_catalogue():
    draft, problems = check(GOOD)
    assert problems == []
    assert [s.side_effect for s in draft.steps] == ["read", "read", "write"]  # the model said nothing


def test_not_an_object_and_schema_errors_name_the_field():
    assert "JSON object" in check([1, 2])[1][0]
    assert only_problem({"steps": []}).startswith("steps: List should have at least 1 item")
    problem = only_problem(changed(lambda c: c["steps"][0].update(id="Fetch Figures")))
    assert problem.startswith("steps.0.id: String should match pattern")
    problem = only_problem(changed(lambda c: c["steps"][0].update(task_type="dance")))
    assert problem.startswith("steps.0.task_type: Input should be")
    assert "Extra inputs are not permitted" in only_problem(changed(lambda c: c.update(notes="hi")))


def test_duplicate_ids():
    problems = check(changed(lambda c: c["steps"][2].update(id="write_summary")))[1]
    assert problems[0] == "duplicate step ids ['write_summary']: every step needs its own id"


def test_unknown_and_self_dependencies():
    assert only_problem(changed(lambda c: c["steps"][1]["depends_on"].append("ghost"))) == \
        "step 'write_summary': depends on unknown steps ['ghost']"
    problems = check(changed(lambda c: c["steps"][0].update(depends_on=["fetch_figures"])))[1]
    assert "step 'fetch_figures': depends on itself" in problems


def test_cycles_are_named():
    def loop(c):
        c["steps"][0]["depends_on"] = ["publish_report"]
    problem = only_problem(changed(loop))
    assert problem.startswith("the steps form a cycle: ") and "fetch_figures" in problem


def test_unknown_tool_lists_the_tools():
    problem = only_problem(changed(lambda c: c["steps"][0].update(tool="erp.get_figures")))
    assert problem.startswith("step 'fetch_figures': unknown tool 'erp.get_figures'; the tools are [")


def test_tool_not_permitted_by_the_goal_or_the_tenant():
    assert check(GOOD, constraints=Constraints(allowed_tools=["sales.get_figures", "reports.publish"]))[1] == []
    problems = check(GOOD, constraints=Constraints(allowed_tools=["sales.get_figures"]))[1]
    assert problems == ["step 'publish_report': the goal does not allow tool 'reports.publish'"]
    problems = check(GOOD, tenant="readonly")[1]
    assert problems == ["step 'publish_report': tenant 'readonly' lacks scope 'reports.write' for tool 'reports.publish'"]
    problems = check_plan(GOOD, SPECS, permission(Constraints(data_scopes=["sales.read"]), "acme"), GOAL_INPUT)[1]
    assert problems == [
        "step 'publish_report': tool 'reports.publish' needs permission scope 'reports.write', the goal has ['sales.read']"
    ]


def test_model_step_without_instruction():
    problem = only_problem(changed(lambda c: c["steps"][1].update(instruction="  ")))
    assert problem == "step 'write_summary': needs either a tool or a model instruction"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("goal.input.quarter", "reference 'goal.input.quarter': the goal input has no 'quarter' (it has ['year'])"),
        ("goal.quarter", "reference 'goal.quarter' must look like goal.input.<key>"),
        ("steps.ghost.output", "reference 'steps.ghost.output' names no step of the plan"),
        ("steps.fetch_figures", "reference 'steps.fetch_figures' must look like steps.<id>.output[.<path>] or goal.input.<key>"),
        ("steps.publish_report.output", "reference 'steps.publish_report.output' uses step 'publish_report', which is not in depends_on ['fetch_figures']"),
    ],
)
def test_references_must_resolve(ref, expected):
    problems = check(changed(lambda c: c["steps"][1]["inputs"].update(figures={"$ref": ref})))[1]
    assert f"step 'write_summary' input 'figures': {expected}" in problems


def test_plan_outputs_must_name_steps():
    problem = only_problem(changed(lambda c: c["outputs"].update(extra={"$ref": "steps.ghost.output"})))
    assert problem.startswith("output 'extra': reference 'steps.ghost.output' names no step of the plan")


def test_literal_and_goal_inputs_must_fit_the_tool_schema():
    problem = only_problem(changed(lambda c: c["steps"][0]["inputs"].update(quarter="third")))
    assert problem == "step 'fetch_figures': input quarter does not fit tool sales.get_figures: 'third' does not match '^Q[1-4]$'"
    problem = only_problem(GOOD, goal_input={"year": 1990})  # the goal input is known before the run
    assert "input year does not fit tool sales.get_figures: 1990 is less than the minimum of 2000" in problem
    problem = only_problem(changed(lambda c: c["steps"][0]["inputs"].pop("quarter")))
    assert "'quarter' is a required property" in problem
    # an input fed by another step is checked when it exists, not before
    assert check(changed(lambda c: c["steps"][2]["inputs"].update(title={"$ref": "steps.write_summary.output.text"})))[1] == []


def test_a_revised_plan_must_keep_completed_steps_unchanged():
    done = Step.model_validate(GOOD["steps"][0])
    assert check(GOOD, keep=[done])[1] == []
    problem = only_problem(changed(lambda c: c["steps"][0]["inputs"].update(quarter="Q2")), keep=[done])
    assert problem == "completed step 'fetch_figures' must stay unchanged (same tool, instruction and inputs)"
    gone = changed(lambda c: c.update(steps=c["steps"][2:]))
    gone["steps"][0]["inputs"]["body"] = "fixed text"
    gone["steps"][0]["depends_on"] = []
    assert check(gone, keep=[done])[1] == ["completed step 'fetch_figures' must stay in the plan unchanged"]


def test_the_response_schema_allows_a_plan_or_a_refusal():
    schema = response_schema()
    assert {"steps", "outputs", "cannot_plan"} <= set(schema["properties"])
    assert "required" not in schema
