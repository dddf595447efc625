"""Router domain: the routing table and how a step gets its binding; the router handler."""

from __future__ import annotations

import uuid

import pytest

from services.router.handlers import RouterDeps, handle, wants
from services.router.routing import RoutingError, RoutingTable, choose, load_routing_table
from services.router.store import RouterStore
from shared.bus import event_headers
from shared.events import (
    Binding,
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanCreated,
    PlanFinished,
    Step,
    StepDispatched,
    StepFailed,
    StepReady,
    StepSucceeded,
    TypedError,
)
from shared.settings import CONFIG_DIR
from shared.store import open_database

TABLE = load_routing_table(CONFIG_DIR / "routing.yaml")


def table(**task_types) -> RoutingTable:
    return RoutingTable.model_validate(
        {"default": {"candidates": [{"model": "goalrail/default"}]}, "task_types": task_types}
    )


def test_builtin_table_loads():
    assert TABLE.version == 1
    assert TABLE.default.candidates[0].model == "goalrail/offline-writer"
    assert set(TABLE.task_types) == {"plan", "summarise", "write", "extract", "classify", "code"}
    assert TABLE.route("plan").candidates[0].model == "goalrail/offline-planner"


def test_candidate_data_classes_default_to_public_and_internal():
    assert TABLE.route("code").candidates[0].data_classes == ["public", "internal"]


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\ntask_types: {}\n",  # no default route
        "default: {candidates: []}\n",  # a route needs a candidate
        "default: {candidates: [{model: ab}]}\n",  # model string too short
        "default: {candidates: [{model: x/y, max_cost_usd: -1}]}\n",
        "default: [unclosed\n",  # not YAML
    ],
)
def test_invalid_tables_are_rejected_with_the_path(tmp_path, text):
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="routing table .*routing.yaml is invalid"):
        load_routing_table(path)


def test_missing_table_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="is invalid"):
        load_routing_table(tmp_path / "absent.yaml")


def test_tool_steps_bind_to_their_tool_whatever_the_task_type():
    step = Step(id="fetch", task_type="summarise", tool="sales.get_figures", data_classes=["secret"])
    binding = choose(step, TABLE)
    assert (binding.kind, binding.tool, binding.model) == ("tool", "sales.get_figures", None)
    assert "sales.get_figures" in binding.reason


def test_model_steps_bind_by_task_type_with_fallbacks():
    t = table(summarise={"candidates": [{"model": "acme/big"}, {"model": "acme/small"}, {"model": "acme/tiny"}]})
    binding = choose(Step(id="s", task_type="summarise", instruction="sum"), t)
    assert (binding.kind, binding.model, binding.fallbacks) == ("model", "acme/big", ["acme/small", "acme/tiny"])
    assert binding.reason.startswith("task type summarise")


def test_builtin_summarise_routes_to_the_offline_writer():
    binding = choose(Step(id="s", task_type="summarise", instruction="sum"), TABLE)
    assert binding.model == "goalrail/offline-writer" and binding.fallbacks == []


def test_unknown_task_type_uses_the_default_route():
    binding = choose(Step(id="a", task_type="act", instruction="do"), TABLE)
    assert binding.model == "goalrail/offline-writer"
    assert binding.reason.startswith("default route act")


def test_data_classes_filter_candidates():
    t = table(write={"candidates": [
        {"model": "cloud/cheap"},  # public, internal only
        {"model": "onprem/a", "data_classes": ["public", "internal", "pii"]},
        {"model": "onprem/b", "data_classes": ["pii"]},
    ]})
    pii = choose(Step(id="w", task_type="write", instruction="w", data_classes=["pii"]), t)
    assert (pii.model, pii.fallbacks) == ("onprem/a", ["onprem/b"])
    internal = choose(Step(id="w", task_type="write", instruction="w", data_classes=["internal"]), t)
    assert (internal.model, internal.fallbacks) == ("cloud/cheap", ["onprem/a"])
    both = choose(Step(id="w", task_type="write", instruction="w", data_classes=["internal", "pii"]), t)
    assert (both.model, both.fallbacks) == ("onprem/a", [])


def test_no_cleared_candidate_is_a_policy_violation():
    step = Step(id="c", task_type="code", instruction="c", data_classes=["pii"])
    with pytest.raises(RoutingError) as info:
        choose(step, TABLE)
    error = info.value.error
    assert error.code is ErrorCode.POLICY_VIOLATION
    assert error.details == {"task_type": "code", "data_classes": ["pii"], "candidates": ["goalrail/offline-writer"]}


# --- handler -------------------------------------------------------------------------------


def ready(step: Step, attempt: int = 1) -> StepReady:
    root = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", goal=GoalSpec(text="abc", requester="r"))
    return root.derive(StepReady, f"g:{step.id}:{attempt}:ready", "planner", plan_id="g:plan", step=step,
                       attempt=attempt, resolved_inputs={"x": 1}, allowed_tools=["noop.echo"])


@pytest.fixture
def deps() -> RouterDeps:
    return RouterDeps(decisions=open_database("memory://", f"router_{uuid.uuid4().hex}")["decisions"], table=TABLE)


async def test_handler_dispatches_with_binding_and_carries_the_step(deps):
    event = ready(Step(id="s", task_type="summarise", instruction="sum"), attempt=2)
    (dispatched,) = await handle(event, deps)
    assert isinstance(dispatched, StepDispatched)
    assert dispatched.id == "g:s:2:dispatched" and dispatched.causation_id == event.id
    assert dispatched.binding.model == "goalrail/offline-writer"
    assert (dispatched.attempt, dispatched.resolved_inputs, dispatched.allowed_tools) == (2, {"x": 1}, ["noop.echo"])


async def test_handler_turns_policy_violation_into_step_failed(deps):
    (failed,) = await handle(ready(Step(id="c", task_type="code", instruction="c", data_classes=["pii"])), deps)
    assert isinstance(failed, StepFailed) and failed.id == "g:c:1:failed"
    assert failed.error.code is ErrorCode.POLICY_VIOLATION


async def test_handler_decides_once_per_event(deps):
    event = ready(Step(id="s", task_type="summarise", instruction="sum"))
    first = await handle(event, deps)
    changed = RouterDeps(decisions=deps.decisions, table=table())  # a new table must not change a made decision
    assert await handle(event, changed) == first
    assert await deps.decisions.count_documents({"goal_id": "g"}) == 1


async def test_handler_ignores_other_events(deps):
    root = GoalSubmitted(goal_id="g", tenant="acme", goal=GoalSpec(text="abc", requester="r"))
    assert await handle(root, deps) == []


# --- what the router passes by unparsed -----------------------------------------------------------


def results_and_plan_events() -> dict[str, object]:
    root = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", goal=GoalSpec(text="abc", requester="r"))
    tool = Binding(kind="tool", tool="noop.echo", reason="r")
    model = Binding(kind="model", model="goalrail/offline-writer", reason="r")
    error = TypedError(code=ErrorCode.UPSTREAM_ERROR, message="down", retryable=True)

    def result(cls, kind, binding, **fields):
        return root.derive(cls, f"g:s:1:{kind}", "executor", plan_id="g:plan", step_id="s", attempt=1,
                           binding=binding, **fields)

    return {
        "plan created": root.derive(PlanCreated, "g:plan:created", "planner", goal_text="abc",
                                    plan=Plan(plan_id="g:plan", source="playbook:p", steps=[Step(id="s", task_type="extract",
                                                                                     tool="noop.echo")])),
        "plan finished": root.derive(PlanFinished, "g:plan:finished", "planner", plan_id="g:plan",
                                     status="completed", submitted_at=root.time),
        "tool succeeded": result(StepSucceeded, "succeeded", tool, output={}),
        "tool failed": result(StepFailed, "failed", tool, error=error),
        "model succeeded": result(StepSucceeded, "succeeded", model, output={"text": "t"}),
        "model failed": result(StepFailed, "failed", model, error=error),
        "refused, no binding": result(StepFailed, "failed", None, error=error),
        "ready": ready(Step(id="s", task_type="summarise", instruction="sum")),
    }


def test_the_router_passes_by_plan_events_but_the_finish_and_results_of_tools_from_their_headers():
    wanted = {name: wants(event.topic.value, event_headers(event)) for name, event in results_and_plan_events().items()}
    assert wanted == {"plan created": False, "plan finished": True, "tool succeeded": False, "tool failed": False,
                      "model succeeded": True, "model failed": True, "refused, no binding": True, "ready": True}
    assert wants("steps.results", {}) and wants("plans.events", {})  # no headers: parsed, judged by the handler


async def test_what_the_router_passes_by_would_have_changed_nothing():
    database = open_database("memory://", f"router_{uuid.uuid4().hex}")
    store = RouterStore(database)
    deps = RouterDeps(decisions=store.decisions, table=TABLE, store=store)
    passed_by = [e for e in results_and_plan_events().values() if not wants(e.topic.value, event_headers(e))]
    assert passed_by
    for event in passed_by:
        assert await handle(event, deps) == []
    for name in ("decisions", "observed", "model_stats", "spend", "holds"):
        assert await database[name].count_documents({}) == 0, name
    # while a model's result, which the router reads, does change them
    await handle(results_and_plan_events()["model succeeded"], deps)
    assert await database["model_stats"].count_documents({}) == 1
