"""The event envelope and every event of the Goalrail chain, defined once for all services.

Each event is a CloudEvents-shaped pydantic model (JSON on the wire). Derived events get
deterministic ids, so a replayed handler republishes the same id and consumers drop duplicates.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1
E = TypeVar("E", bound="Event")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Topic(StrEnum):
    GOALS_SUBMITTED = "goals.submitted"
    PLANS_EVENTS = "plans.events"
    STEPS_READY = "steps.ready"
    STEPS_DISPATCHED = "steps.dispatched"
    STEPS_RESULTS = "steps.results"
    GOALS_OUTCOMES = "goals.outcomes"
    GOALS_ESCALATIONS = "goals.escalations"
    APPROVALS_REQUESTED = "approvals.requested"
    APPROVALS_DECIDED = "approvals.decided"
    EVENTS_REJECTED = "events.rejected"

    @property
    def dlq(self) -> str:
        return f"{self.value}.dlq"


class ErrorCode(StrEnum):
    TOOL_NOT_FOUND = "TOOL_NOT_FOUND"
    INVALID_INPUT = "INVALID_INPUT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    OUTPUT_INVALID = "OUTPUT_INVALID"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    POLICY_VIOLATION = "POLICY_VIOLATION"
    MODEL_ERROR = "MODEL_ERROR"
    NO_PLAN = "NO_PLAN"
    MALFORMED_EVENT = "MALFORMED_EVENT"
    INVALID_EVENT = "INVALID_EVENT"
    HANDLER_FAILED = "HANDLER_FAILED"
    CANCELLED = "CANCELLED"


class TypedError(BaseModel):
    """What went wrong, precisely enough for a planner or a person to act on."""

    code: ErrorCode
    message: str
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


# --- goals ---------------------------------------------------------------------------------


class Budget(BaseModel):
    max_cost_usd: float | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, gt=0)


class Constraints(BaseModel):
    budget: Budget = Field(default_factory=Budget)
    allowed_tools: list[str] | None = Field(
        None, description="Tool names the goal may use; None = every tool of the tenant."
    )
    data_scopes: list[str] = Field(default_factory=list)


class GoalSpec(BaseModel):
    text: str = Field(min_length=3, max_length=4000)
    requester: str = Field(min_length=1)
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deadline: datetime | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    constraints: Constraints = Field(default_factory=Constraints)
    reply_to: str = Field(Topic.GOALS_OUTCOMES.value, description="Topic for the outcome.")
    playbook: str | None = Field(None, description="Force a playbook by name.")
    adapt_playbook: bool = Field(
        False, description="Give the playbook to the planning model as a starting point instead of using it as-is."
    )


# --- plans ---------------------------------------------------------------------------------

TaskType = Literal["plan", "extract", "summarise", "write", "code", "classify", "act"]
SideEffect = Literal["read", "write", "irreversible"]


class RetryPolicy(BaseModel):
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_s: float = Field(0.2, ge=0)


class Step(BaseModel):
    """One node of a plan. Inputs are literals or `{"$ref": "steps.<id>.output[.<path>]"}`
    / `{"$ref": "goal.input.<key>"}` references, resolved when the step is released."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    task_type: TaskType
    tool: str | None = None
    instruction: str | None = Field(None, description="Model task: what the model must do.")
    inputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    side_effect: SideEffect = "read"
    data_classes: list[str] = Field(default_factory=list)
    needs_approval: bool = False


class Plan(BaseModel):
    plan_id: str
    source: str = Field(description="playbook:<name> or model:<model>")
    steps: list[Step]
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="Result name -> {$ref: steps.<id>.output…}."
    )


class Binding(BaseModel):
    """How the router decided a step runs."""

    kind: Literal["tool", "model"]
    tool: str | None = None
    model: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    reason: str
    estimated_cost_usd: float | None = Field(None, description="The router's cost estimate of the call.")


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


# --- envelope ------------------------------------------------------------------------------


class Event(BaseModel):
    """CloudEvents attributes as fields, plus Goalrail's routing and lineage fields."""

    model_config = ConfigDict(extra="forbid")
    topic: ClassVar[Topic]

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field("goalrail", min_length=1)
    type: str
    time: datetime = Field(default_factory=utcnow)
    subject: str = Field("", description="The goal id (CloudEvents subject).")
    datacontenttype: Literal["application/json"] = "application/json"
    schema_version: int = SCHEMA_VERSION
    goal_id: str = Field(min_length=1, max_length=200)
    tenant: str = Field(min_length=1, max_length=100)
    correlation_id: str = Field("", description="The goal id for every event of one goal.")
    causation_id: str | None = Field(None, description="Id of the event that caused this one.")

    def model_post_init(self, __context: Any) -> None:
        # subject and correlation default to the goal id; set here so callers cannot forget
        if not self.subject:
            object.__setattr__(self, "subject", self.goal_id)
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.goal_id)

    def derive(self, cls: type[E], event_id: str, source: str, **fields: Any) -> E:
        """A follow-up event of the same goal, caused by this one, with a deterministic id."""
        return cls(
            id=event_id,
            source=source,
            goal_id=self.goal_id,
            tenant=self.tenant,
            correlation_id=self.correlation_id,
            causation_id=self.id,
            **fields,
        )


class GoalSubmitted(Event):
    topic: ClassVar[Topic] = Topic.GOALS_SUBMITTED
    type: Literal["goalrail.goal.submitted"] = "goalrail.goal.submitted"
    goal: GoalSpec


class PlanCreated(Event):
    topic: ClassVar[Topic] = Topic.PLANS_EVENTS
    type: Literal["goalrail.plan.created"] = "goalrail.plan.created"
    plan: Plan
    goal_text: str


class StepReady(Event):
    topic: ClassVar[Topic] = Topic.STEPS_READY
    type: Literal["goalrail.step.ready"] = "goalrail.step.ready"
    plan_id: str
    step: Step
    attempt: int = Field(1, ge=1)
    resolved_inputs: dict[str, Any] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None
    goal_type: str | None = Field(
        None, description="The plan's source (playbook:<name>, model:<model>): whose data boundary applies."
    )
    goal_budget_usd: float | None = Field(
        None, ge=0, description="The goal's constraints.budget.max_cost_usd; the router refuses steps beyond it."
    )


class StepDispatched(Event):
    topic: ClassVar[Topic] = Topic.STEPS_DISPATCHED
    type: Literal["goalrail.step.dispatched"] = "goalrail.step.dispatched"
    plan_id: str
    step: Step
    attempt: int = Field(1, ge=1)
    resolved_inputs: dict[str, Any] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None
    goal_type: str | None = Field(
        None, description="The plan's source (playbook:<name>, model:<model>): whose data boundary applies."
    )
    binding: Binding
    approval_id: str | None = Field(None, description="The approval this dispatch waited for, if any.")
    approved_by: str | None = Field(
        None, description="Who approved the step; the executor runs an irreversible tool only with it."
    )


class StepSucceeded(Event):
    topic: ClassVar[Topic] = Topic.STEPS_RESULTS
    type: Literal["goalrail.step.succeeded"] = "goalrail.step.succeeded"
    plan_id: str
    step_id: str
    attempt: int
    output: Any
    binding: Binding
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float = 0.0


class StepFailed(Event):
    topic: ClassVar[Topic] = Topic.STEPS_RESULTS
    type: Literal["goalrail.step.failed"] = "goalrail.step.failed"
    plan_id: str
    step_id: str
    attempt: int
    error: TypedError
    binding: Binding | None = None
    duration_ms: float = 0.0


class PlanFinished(Event):
    topic: ClassVar[Topic] = Topic.PLANS_EVENTS
    type: Literal["goalrail.plan.finished"] = "goalrail.plan.finished"
    plan_id: str
    status: Literal["completed", "failed"]
    outputs: dict[str, Any] = Field(default_factory=dict)
    step_states: dict[str, str] = Field(default_factory=dict)
    error: TypedError | None = None
    submitted_at: datetime
    retries: int = 0
    usage: Usage = Field(default_factory=Usage)


class GoalCompleted(Event):
    topic: ClassVar[Topic] = Topic.GOALS_OUTCOMES
    type: Literal["goalrail.goal.completed"] = "goalrail.goal.completed"
    outputs: dict[str, Any]
    trace_id: str | None = None
    cycle_time_s: float
    steps: int
    retries: int = 0
    usage: Usage = Field(default_factory=Usage)


class GoalFailed(Event):
    topic: ClassVar[Topic] = Topic.GOALS_OUTCOMES
    type: Literal["goalrail.goal.failed"] = "goalrail.goal.failed"
    error: TypedError
    trace_id: str | None = None
    cycle_time_s: float | None = None


class GoalEscalated(Event):
    topic: ClassVar[Topic] = Topic.GOALS_ESCALATIONS
    type: Literal["goalrail.goal.escalated"] = "goalrail.goal.escalated"
    reason: str
    error: TypedError | None = None
    trace_id: str | None = None


class ApprovalRequested(Event):
    """A step waits for a person: the router holds it until an ApprovalDecided arrives."""

    topic: ClassVar[Topic] = Topic.APPROVALS_REQUESTED
    type: Literal["goalrail.approval.requested"] = "goalrail.approval.requested"
    approval_id: str = Field(description="`<goal_id>:<step_id>:<attempt>:approval`, also the event id.")
    plan_id: str
    step: Step
    attempt: int = Field(1, ge=1)
    inputs: dict[str, Any] = Field(default_factory=dict, description="The step's resolved inputs, redacted.")
    reason: str = Field(description="Why a person must decide.")
    binding: Binding | None = None
    traceparent: str | None = Field(
        None, description="W3C trace context of the request, so a decision continues the goal's trace."
    )


class ApprovalDecided(Event):
    """A person's answer to an ApprovalRequested; id `<approval_id>:decided`, the first one wins."""

    topic: ClassVar[Topic] = Topic.APPROVALS_DECIDED
    type: Literal["goalrail.approval.decided"] = "goalrail.approval.decided"
    approval_id: str
    step_id: str
    attempt: int = Field(1, ge=1)
    decision: Literal["approved", "rejected"]
    decided_by: str = Field(min_length=1)
    comment: str = ""


class GoalActionRequested(Event):
    """An operator's action on a failed or escalated goal: retry its failed steps, or cancel it."""

    topic: ClassVar[Topic] = Topic.APPROVALS_DECIDED
    type: Literal["goalrail.goal.action"] = "goalrail.goal.action"
    action: Literal["retry", "cancel"]
    requested_by: str = Field(min_length=1)
    comment: str = ""


class EventRejected(Event):
    """A message a service could not accept; the original went to `<topic>.dlq`."""

    topic: ClassVar[Topic] = Topic.EVENTS_REJECTED
    type: Literal["goalrail.event.rejected"] = "goalrail.event.rejected"
    rejected_by: str
    source_topic: str
    partition: int
    offset: int
    rejected_type: str | None = None
    error: TypedError


AnyEvent = Annotated[
    Union[
        GoalSubmitted,
        PlanCreated,
        StepReady,
        StepDispatched,
        StepSucceeded,
        StepFailed,
        PlanFinished,
        GoalCompleted,
        GoalFailed,
        GoalEscalated,
        EventRejected,
        ApprovalRequested,
        ApprovalDecided,
        GoalActionRequested,
    ],
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__origin__.__args__  # type: ignore[attr-defined]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)
TOPIC_EVENTS: dict[Topic, list[type[Event]]] = {}
for _event_type in EVENT_TYPES:
    TOPIC_EVENTS.setdefault(_event_type.topic, []).append(_event_type)


def step_event_id(goal_id: str, step_id: str, attempt: int, kind: str) -> str:
    """The deterministic id of what happens to one attempt of one step (`ready`, `dispatched`,
    `approval`, `succeeded`, `failed`): a replayed handler derives the same id."""
    return f"{goal_id}:{step_id}:{attempt}:{kind}"


def approval_id_for(goal_id: str, step_id: str, attempt: int) -> str:
    return step_event_id(goal_id, step_id, attempt, "approval")


def parse_approval_id(approval_id: str, goal_id: str) -> tuple[str, int]:
    """(step id, attempt) of an approval id of `goal_id`; ValueError when it is not one."""
    prefix, suffix = f"{goal_id}:", ":approval"
    if not (approval_id.startswith(prefix) and approval_id.endswith(suffix)):
        raise ValueError(f"{approval_id!r} is not an approval id of goal {goal_id!r}")
    step_id, _, attempt = approval_id[len(prefix):-len(suffix)].rpartition(":")
    if not step_id or not attempt.isdigit():
        raise ValueError(f"{approval_id!r} is not an approval id (<goal_id>:<step_id>:<attempt>:approval)")
    return step_id, int(attempt)


def parse_event(raw: bytes | str) -> Event:
    """Parse wire JSON into the right event class; raises pydantic.ValidationError."""
    return EVENT_ADAPTER.validate_json(raw)


def to_wire(event: Event) -> bytes:
    return event.model_dump_json().encode()

