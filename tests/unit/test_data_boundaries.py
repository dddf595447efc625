"""Data boundaries of goal types: the validated policy file, the checks, and their enforcement by
the planner and the executor (PERMISSION_DENIED with details); model clearances from the routing
table; redaction of what leaves for a model or a web-facing tool."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from services.executor.execution import StepRunner  # noqa: E402
from services.planner.handlers import PlannerDeps, handle  # noqa: E402
from services.planner.planning import load_playbooks  # noqa: E402
from services.planner.store import PlanStore  # noqa: E402
from shared.events import (  # noqa: E402
    Binding,
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanFinished,
    Step,
    StepDispatched,
    StepFailed,
    StepReady,
    StepSucceeded,
    Usage,
)
from shared.governance.boundaries import (  # noqa: E402
    PlanBoundary,
    boundary_for,
    cleared_classes,
    is_web_facing,
    model_clearances,
    redact_outgoing,
)
from shared.models.client import ModelResult  # noqa: E402
from shared.models.routing_table import parse_routing_table  # noqa: E402
from shared.settings import CONFIG_DIR  # noqa: E402
from shared.store import open_database  # noqa: E402
from shared.tools.catalogue import build_catalogue  # noqa: E402
from shared.tools.policy import ToolPolicy, parse_tool_policy  # noqa: E402
from shared.tools.registry import Tool, ToolRegistry, ToolSpec  # noqa: E402
from tests.factories import NOW, goal_submitted as submitted  # noqa: E402

CARD = "4111 1111 1111 1111"
SPECS = {spec.name: spec for spec in build_catalogue().catalogue()}
POLICY = parse_tool_policy({
    "tenants": {"*": {"scopes": ["*"]}},
    "goal_types": {
        "playbook:quarterly-sales-report": {"tools": ["sales.*", "crm.*", "reports.publish"],
                                            "sources": ["openapi:demo"], "data_classes": ["internal"]},
        "playbook:*": {"tools": ["noop.*"]},
        "model:*": {"sources": ["python"]},
    },
})


def spec(name: str = "web.post", source: str = "openapi:web", data_classes: list[str] | None = None) -> ToolSpec:
    return ToolSpec(name=name, description="d", input_schema={"type": "object"}, source=source,
                    data_classes=data_classes or ["internal"])


# --- the policy file ---------------------------------------------------------------------------


def test_the_shipped_policy_bounds_the_builtin_playbooks():
    policy = ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml")
    playbooks = load_playbooks(CONFIG_DIR / "playbooks")
    bounded = {name: pb for name, pb in playbooks.items() if policy.boundary(f"playbook:{name}") is not None}
    assert {"quarterly-sales-report", "benchmark-chain"} <= set(bounded)
    for name, playbook in bounded.items():
        for step in playbook.steps:
            if step.tool:
                assert policy.check(SPECS[step.tool], "acme", None, f"playbook:{name}") is None, step.tool
    assert policy.check(SPECS["tracker.create_issue"], "acme", None, "playbook:quarterly-sales-report") is not None


def test_policy_errors_name_the_goal_type_or_tenant_and_the_field(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({
        "tenants": {"acme": {"scopes": "sales.read"}},
        "goal_types": {"playbook:x": {"tools": ["a", "a"], "data_clases": ["pii"]}},
    }))
    with pytest.raises(ValueError) as raised:
        ToolPolicy.load(path)
    message = str(raised.value)
    assert f"tool policy {path} is invalid" in message
    assert "tenant 'acme', scopes: Input should be a valid list" in message
    assert "goal type 'playbook:x', tools: ['a'] listed twice" in message
    assert "goal type 'playbook:x', data_clases: unknown field" in message
    with pytest.raises(ValueError, match="goal_types: goal type 'quarterly' must be a plan source"):
        parse_tool_policy({"tenants": {}, "goal_types": {"quarterly": {}}})


def test_the_exact_goal_type_wins_then_globs_then_star():
    goal_types = parse_tool_policy({"tenants": {}, "goal_types": {
        "*": {}, "playbook:*": {"tools": ["x"]}, "playbook:a": {"tools": ["y"]}}}).goal_types
    assert boundary_for(goal_types, "playbook:a")[0] == "playbook:a"
    assert boundary_for(goal_types, "playbook:b")[0] == "playbook:*"
    assert boundary_for(goal_types, "model:m")[0] == "*"
    assert boundary_for(goal_types, None) is None
    assert boundary_for({}, "playbook:a") is None


def test_a_tool_outside_the_boundary_is_denied_with_details():
    goal_type = "playbook:quarterly-sales-report"
    assert POLICY.check(SPECS["sales.get_figures"], "acme", None, goal_type) is None
    by_name = POLICY.check(SPECS["tracker.create_issue"], "acme", None, goal_type)
    assert by_name.code is ErrorCode.PERMISSION_DENIED
    assert by_name.details.items() >= {"tool": "tracker.create_issue", "goal_type": goal_type, "reason": "data_boundary",
                                    "allowed_tools": ["sales.*", "crm.*", "reports.publish"]}.items()
    by_source = POLICY.check(spec("sales.mirror", source="mcp:mirror"), "acme", None, goal_type)
    assert "source 'mcp:mirror'" in by_source.message and by_source.details["allowed_sources"] == ["openapi:demo"]
    by_class = POLICY.check(spec("sales.people", source="openapi:demo", data_classes=["internal", "pii"]), "acme",
                            None, goal_type)
    assert by_class.details["data_classes"] == ["pii"]
    # a goal type without an entry, or no goal type at all: bounded by the tenant only
    assert POLICY.check(SPECS["tracker.create_issue"], "acme", None, None) is None
    assert POLICY.check(SPECS["noop.echo"], "acme", None, "playbook:benchmark-chain") is None
    assert POLICY.check(SPECS["sales.get_figures"], "acme", None, "model:goalrail/offline-planner") is not None


def test_plan_boundary_names_every_step_outside_it():
    plan = Plan(plan_id="p", source="playbook:quarterly-sales-report", steps=[
        Step(id="ok", task_type="extract", tool="sales.get_figures"),
        Step(id="tracker", task_type="act", tool="tracker.create_issue"),
        Step(id="secret", task_type="write", instruction="w", data_classes=["pii"]),
    ])
    error = PlanBoundary(POLICY.goal_types, SPECS).error(plan)
    assert error.code is ErrorCode.PERMISSION_DENIED
    assert [p["step_id"] for p in error.details["problems"]] == ["tracker", "secret"]
    assert PlanBoundary(POLICY.goal_types, SPECS).error(plan.model_copy(update={"steps": plan.steps[:1]})) is None


# --- clearances and redaction ----------------------------------------------------------------


def test_model_clearances_come_from_the_routing_table_and_a_chain_gets_the_common_part():
    table = parse_routing_table({
        "default": {"candidates": [{"model": "a/local", "data_classes": ["public", "internal", "pii"]}]},
        "task_types": {"write": {"candidates": [{"model": "a/cloud"}, {"model": "a/local", "data_classes": ["pii"]}]}},
    })
    clearances = model_clearances(table)
    assert clearances == {"a/cloud": ["internal", "public"], "a/local": ["pii"]}  # listed twice: the common part
    assert cleared_classes(["a/local"], clearances) == ["pii"]
    assert cleared_classes(["a/local", "a/cloud"], clearances) == []
    assert cleared_classes(["unknown/model"], clearances) == []


def test_redact_outgoing_keeps_what_is_cleared_and_says_where_it_redacted():
    value = {"note": f"card {CARD}, mail jane@acme.example", "n": 7}
    redacted, paths = redact_outgoing(value, [])
    assert redacted == {"note": "card [REDACTED:card], mail [REDACTED:email]", "n": 7}
    assert paths == ["$.note: card", "$.note: email"]
    assert redact_outgoing(value, ["email"])[0]["note"] == "card [REDACTED:card], mail jane@acme.example"
    assert redact_outgoing(value, ["internal", "pii"]) == (value, [])
    assert is_web_facing(spec(source="openapi:x")) and is_web_facing(spec(source="mcp:x"))
    assert not is_web_facing(spec(source="python"))


# --- the planner enforces the boundary ----------------------------------------------------------


@pytest.fixture
async def planner_deps() -> PlannerDeps:
    store = PlanStore(open_database("memory://", f"planner_{uuid.uuid4().hex}"))
    await store.init()
    return PlannerDeps(store=store, playbooks=load_playbooks(CONFIG_DIR / "playbooks"),
                       tool_names=frozenset(SPECS), clock=lambda: NOW,
                       boundaries=PlanBoundary(POLICY.goal_types, SPECS))


async def test_the_planner_refuses_a_playbook_outside_its_boundary(planner_deps):
    # the policy above leaves the quarterly playbook `sales.*`, `crm.*` and reports.publish, but
    # only openapi:demo sources and `internal` data: all of its tools fit …
    outbox = await handle(submitted("Prepare the Q3 sales report"), planner_deps)
    assert [e.type for e in outbox][:2] == ["goalrail.plan.created", "goalrail.step.ready"]
    ready = [e for e in outbox if isinstance(e, StepReady)]
    assert {e.goal_type for e in ready} == {"playbook:quarterly-sales-report"}
    # … the benchmark chain's noop tools too (playbook:*), but not its model step declaring pii
    narrow = parse_tool_policy({"tenants": {"*": {"scopes": ["*"]}},
                                "goal_types": {"playbook:benchmark-chain": {"tools": ["sales.*"]}}})
    deps = PlannerDeps(store=planner_deps.store, playbooks=planner_deps.playbooks, tool_names=planner_deps.tool_names,
                       clock=lambda: NOW, boundaries=PlanBoundary(narrow.goal_types, SPECS))
    event = submitted("run the benchmark chain").model_copy(update={"id": "b:submitted", "goal_id": "b"})
    (finished,) = await handle(event, deps)
    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.code is ErrorCode.PERMISSION_DENIED
    assert "leaves its data boundary" in finished.error.message
    assert {p["step_id"] for p in finished.error.details["problems"]} == {"step_1", "step_2", "step_4", "step_5"}


# --- the executor enforces it and redacts ------------------------------------------------------


class RecordingModels:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def complete(self, model, task_type, instruction, data, fallbacks=None) -> ModelResult:
        self.calls.append((instruction, data))
        return ModelResult("ok", model, Usage(), 1.0)


def web_tool(received: list[Any], data_classes: list[str]) -> ToolRegistry:
    async def invoke(arguments: dict[str, Any], ctx: Any) -> Any:
        received.append(arguments)
        return {"ok": True}

    registry = ToolRegistry()
    registry.add(Tool(spec=spec("web.post", "openapi:web", data_classes), invoke=invoke))
    return registry


def runner(tools: ToolRegistry, models: Any = None, **options: Any) -> StepRunner:
    return StepRunner(tools=tools, models=models or RecordingModels(), http=httpx.AsyncClient(),
                      tracer=TracerProvider().get_tracer("t"), tool_config={}, attempts=1, **options)


def dispatched(step: Step, inputs: dict[str, Any], binding: Binding, goal_type: str | None = None) -> StepDispatched:
    root = submitted("goal")
    return root.derive(StepDispatched, f"g:{step.id}:1:dispatched", "router", plan_id="g:plan", step=step,
                       resolved_inputs=inputs, binding=binding, goal_type=goal_type)


async def test_the_executor_refuses_a_tool_outside_the_goal_types_boundary():
    received: list[Any] = []
    run = runner(web_tool(received, ["internal"]), policy=POLICY)
    step = Step(id="post", task_type="act", tool="web.post")
    binding = Binding(kind="tool", tool="web.post", reason="r")
    failed = await run.run(dispatched(step, {}, binding, "playbook:quarterly-sales-report"))
    assert isinstance(failed, StepFailed) and failed.error.code is ErrorCode.PERMISSION_DENIED
    assert failed.error.details["goal_type"] == "playbook:quarterly-sales-report"
    assert failed.error.details["reason"] == "data_boundary" and received == []
    # no boundary for its goal type: the tenant's scopes decide
    assert isinstance(await run.run(dispatched(step, {}, binding, "model:m")), StepFailed)  # model:* = python only
    assert isinstance(await run.run(dispatched(step, {}, binding, None)), StepSucceeded)


@pytest.mark.parametrize("cleared, sent", [
    (["internal"], {"text": "card [REDACTED:card]", "to": "[REDACTED:email]"}),
    (["internal", "email"], {"text": "card [REDACTED:card]", "to": "jane@acme.example"}),
    (["internal", "pii"], {"text": f"card {CARD}", "to": "jane@acme.example"}),
])
async def test_a_web_facing_tool_gets_only_the_personal_data_it_is_cleared_for(cleared, sent):
    received: list[Any] = []
    step = Step(id="post", task_type="act", tool="web.post")
    result = await runner(web_tool(received, cleared)).run(
        dispatched(step, {"text": f"card {CARD}", "to": "jane@acme.example"},
                   Binding(kind="tool", tool="web.post", reason="r")))
    assert isinstance(result, StepSucceeded) and received == [sent]


async def test_a_python_tool_is_not_web_facing_and_gets_its_inputs_as_they_are():
    received: list[Any] = []
    registry = ToolRegistry()

    async def invoke(arguments: dict[str, Any], ctx: Any) -> Any:
        received.append(arguments)
        return {}

    registry.add(Tool(spec=spec("local.keep", "python"), invoke=invoke))
    step = Step(id="keep", task_type="act", tool="local.keep")
    await runner(registry).run(dispatched(step, {"text": CARD}, Binding(kind="tool", tool="local.keep", reason="r")))
    assert received == [{"text": CARD}]


async def test_a_model_gets_inputs_and_instruction_redacted_to_its_clearance():
    models = RecordingModels()
    run = runner(ToolRegistry(), models, clearances={"a/cloud": ["public", "internal"], "a/local": ["pii"]})
    step = Step(id="w", task_type="write", instruction=f"Write to jane@acme.example about {CARD}")
    inputs = {"card": CARD}
    await run.run(dispatched(step, inputs, Binding(kind="model", model="a/cloud", reason="r")))
    await run.run(dispatched(step, inputs, Binding(kind="model", model="a/local", reason="r")))
    await run.run(dispatched(step, inputs, Binding(kind="model", model="a/local", fallbacks=["a/cloud"], reason="r")))
    await run.run(dispatched(step, inputs, Binding(kind="model", model="unknown/x", reason="r")))
    redacted = ("Write to [REDACTED:email] about [REDACTED:card]", {"card": "[REDACTED:card]"})
    assert models.calls == [redacted, (step.instruction, inputs), redacted, redacted]


def test_the_planning_model_is_shown_only_tools_inside_its_goal_types_boundary():
    from services.planner.model_planning import ModelPlanner

    planner = ModelPlanner(models=RecordingModels(), model="goalrail/offline-planner", tools=SPECS,  # type: ignore[arg-type]
                           policy=POLICY, max_tools=50)
    goal = GoalSpec(text="Prepare the Q3 sales report and mail it", requester="cfo")
    shown = {tool["name"] for tool in planner.catalogue_for(goal, "acme")}
    assert shown and all(SPECS[name].source == "python" for name in shown)  # model:* = python tools only
    assert "sales.get_figures" not in shown
    # a playbook is checked against its own boundary by the planner's handler, not re-planned
    assert planner.forbidden(Plan(plan_id="p", source=GOAL_TYPE_Q, steps=[
        Step(id="t", task_type="act", tool="tracker.create_issue")]), goal, "acme") == []


GOAL_TYPE_Q = "playbook:quarterly-sales-report"
