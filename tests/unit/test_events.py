"""The event contract: envelope defaults, lineage, the discriminated union and its topics."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from shared.events import (
    EVENT_TYPES,
    ApprovalDecided,
    ApprovalRequested,
    GoalActionRequested,
    TOPIC_EVENTS,
    Binding,
    ErrorCode,
    EventRejected,
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
    StepFailed,
    StepReady,
    StepSucceeded,
    Topic,
    TypedError,
    parse_event,
    to_wire,
)

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
GOAL = GoalSpec(text="Prepare the Q3 sales report for the board", requester="cfo@acme.example")
STEP = Step(id="fetch_figures", task_type="extract", tool="sales.get_figures", inputs={"quarter": "Q3"})
TOOL_BINDING = Binding(kind="tool", tool="sales.get_figures", reason="step names tool")
ERROR = TypedError(code=ErrorCode.UPSTREAM_ERROR, message="boom", retryable=True)


def submitted(**overrides) -> GoalSubmitted:
    return GoalSubmitted(**{"id": "goal-1:submitted", "goal_id": "goal-1", "tenant": "acme", "goal": GOAL, **overrides})


def one_of_each() -> list:
    root = submitted()
    common = {"plan_id": "goal-1:plan"}
    return [
        root,
        root.derive(PlanCreated, "goal-1:plan:created", "planner",
                    plan=Plan(plan_id="goal-1:plan", source="playbook:x", steps=[STEP]), goal_text=GOAL.text),
        root.derive(StepReady, "goal-1:fetch_figures:1:ready", "planner", step=STEP, **common),
        root.derive(StepDispatched, "goal-1:fetch_figures:1:dispatched", "router", step=STEP,
                    binding=TOOL_BINDING, **common),
        root.derive(StepSucceeded, "goal-1:fetch_figures:1:succeeded", "executor", step_id=STEP.id,
                    attempt=1, output={"totals": {"revenue": 1}}, binding=TOOL_BINDING, **common),
        root.derive(StepFailed, "goal-1:fetch_figures:1:failed", "executor", step_id=STEP.id, attempt=1,
                    error=ERROR, **common),
        root.derive(PlanFinished, "goal-1:plan:finished", "planner", status="completed",
                    outputs={"report": {"id": 1}}, submitted_at=T0, **common),
        root.derive(GoalCompleted, "goal-1:outcome", "auditor", outputs={}, cycle_time_s=1.5, steps=4),
        root.derive(GoalFailed, "goal-1:outcome", "auditor", error=ERROR),
        root.derive(GoalEscalated, "goal-1:escalated", "auditor", reason="needs a person"),
        root.derive(EventRejected, "goal-1:rejected", "router", rejected_by="router",
                    source_topic="steps.ready", partition=0, offset=7, error=ERROR),
        root.derive(ApprovalRequested, "goal-1:fetch_figures:1:approval", "router",
                    approval_id="goal-1:fetch_figures:1:approval", step=STEP, inputs={"quarter": "Q3"},
                    reason="step fetch_figures is marked needs_approval", binding=TOOL_BINDING, **common),
        root.derive(ApprovalDecided, "goal-1:fetch_figures:1:approval:decided", "operator",
                    approval_id="goal-1:fetch_figures:1:approval", step_id=STEP.id, decision="approved",
                    decided_by="ops@acme.example"),
        root.derive(GoalActionRequested, "goal-1:action:retry:1", "operator", action="retry",
                    requested_by="ops@acme.example"),
    ]


def test_subject_and_correlation_default_to_the_goal_id():
    event = submitted()
    assert event.subject == "goal-1"
    assert event.correlation_id == "goal-1"
    assert event.causation_id is None
    assert event.specversion == "1.0"
    assert event.type == "goalrail.goal.submitted"


def test_explicit_subject_and_correlation_are_kept():
    event = submitted(subject="other", correlation_id="corr-9")
    assert (event.subject, event.correlation_id) == ("other", "corr-9")


def test_ids_are_unique_when_not_given():
    a = GoalSubmitted(goal_id="g", tenant="t", goal=GOAL)
    b = GoalSubmitted(goal_id="g", tenant="t", goal=GOAL)
    assert a.id and b.id and a.id != b.id


def test_derive_is_deterministic_and_records_causation():
    root = submitted(correlation_id="corr-9")
    first = root.derive(StepReady, "goal-1:fetch_figures:1:ready", "goalrail/planner", plan_id="p", step=STEP)
    again = root.derive(StepReady, "goal-1:fetch_figures:1:ready", "goalrail/planner", plan_id="p", step=STEP)
    assert first.id == again.id == "goal-1:fetch_figures:1:ready"
    assert first.causation_id == root.id == "goal-1:submitted"
    assert first.correlation_id == "corr-9"  # lineage is carried, not reset to the goal id
    assert (first.goal_id, first.tenant, first.source) == ("goal-1", "acme", "goalrail/planner")
    assert first.subject == "goal-1"


def test_one_of_each_covers_every_event_type():
    assert {type(e) for e in one_of_each()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_the_wire(event):
    parsed = parse_event(to_wire(event))
    assert type(parsed) is type(event)
    assert parsed == event
    assert parse_event(to_wire(event).decode()) == event  # str input too


def test_unknown_type_is_a_discriminator_error():
    body = json.loads(to_wire(submitted()))
    body["type"] = "goalrail.goal.teleported"
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(body))
    assert info.value.errors()[0]["type"] == "union_tag_invalid"


def test_missing_type_is_a_discriminator_error():
    body = json.loads(to_wire(submitted()))
    del body["type"]
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(body))
    assert info.value.errors()[0]["type"] == "union_tag_not_found"


def test_malformed_json_is_a_json_error():
    with pytest.raises(ValidationError) as info:
        parse_event(b"{not json")
    assert info.value.errors()[0]["type"] == "json_invalid"


def test_extra_fields_are_forbidden_on_the_wire_and_in_code():
    body = json.loads(to_wire(submitted()))
    body["surprise"] = 1
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(body))
    assert any(e["type"] == "extra_forbidden" for e in info.value.errors())
    with pytest.raises(ValidationError):
        GoalFailed(goal_id="g", tenant="t", error=ERROR, surprise=1)


def test_missing_goal_id_is_rejected():
    body = json.loads(to_wire(submitted()))
    del body["goal_id"]
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps(body))
    assert any(e["loc"][-1] == "goal_id" and e["type"] == "missing" for e in info.value.errors())


@pytest.mark.parametrize("text", ["", "ab"])
def test_goal_text_must_have_three_characters(text):
    with pytest.raises(ValidationError) as info:
        GoalSpec(text=text, requester="cfo")
    assert info.value.errors()[0]["loc"] == ("text",)


def test_goal_spec_defaults_and_other_validation():
    spec = GoalSpec(text="abc", requester="cfo")
    assert spec.priority == "normal"
    assert spec.reply_to == "goals.outcomes"
    assert spec.constraints.allowed_tools is None
    with pytest.raises(ValidationError):
        GoalSpec(text="abc", requester="")
    with pytest.raises(ValidationError):
        GoalSpec(text="abc", requester="cfo", priority="whenever")
    with pytest.raises(ValidationError):
        GoalSpec(text="abc", requester="cfo", constraints={"budget": {"max_cost_usd": -1}})


def test_step_ids_must_be_snake_case():
    with pytest.raises(ValidationError):
        Step(id="Fetch-Figures", task_type="extract")
    with pytest.raises(ValidationError):
        Step(id="fetch", task_type="dance")


def test_topic_events_maps_each_topic_to_its_event_classes():
    assert TOPIC_EVENTS[Topic.GOALS_SUBMITTED] == [GoalSubmitted]
    assert TOPIC_EVENTS[Topic.PLANS_EVENTS] == [PlanCreated, PlanFinished]
    assert TOPIC_EVENTS[Topic.STEPS_READY] == [StepReady]
    assert TOPIC_EVENTS[Topic.STEPS_DISPATCHED] == [StepDispatched]
    assert TOPIC_EVENTS[Topic.STEPS_RESULTS] == [StepSucceeded, StepFailed]
    assert TOPIC_EVENTS[Topic.GOALS_OUTCOMES] == [GoalCompleted, GoalFailed]
    assert TOPIC_EVENTS[Topic.GOALS_ESCALATIONS] == [GoalEscalated]
    assert TOPIC_EVENTS[Topic.EVENTS_REJECTED] == [EventRejected]
    assert sum(len(v) for v in TOPIC_EVENTS.values()) == len(EVENT_TYPES)
    for topic, classes in TOPIC_EVENTS.items():
        assert all(cls.topic is topic for cls in classes)


def test_dlq_topic_names():
    assert Topic.GOALS_SUBMITTED.dlq == "goals.submitted.dlq"
    assert Topic.STEPS_RESULTS.dlq == "steps.results.dlq"
    assert all(t.dlq == f"{t.value}.dlq" for t in Topic)
