"""Router handlers: a ready step gets its binding and is dispatched (or refused, or held for a
person's approval); a decision releases or fails a held step; a step result teaches the router
the model's latency, errors and cost, and charges the goal's budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.router.approvals import approval_reason
from services.router.routing import BudgetState, ModelStats, Pricer, RoutingError, RoutingTable, choose, table_price
from services.router.store import RouterStore
from shared.bus import BINDING_KIND_HEADER
from shared.events import (
    ApprovalDecided,
    ApprovalRequested,
    Binding,
    ErrorCode,
    Event,
    PlanFinished,
    Step,
    StepDispatched,
    StepFailed,
    StepReady,
    StepSucceeded,
    Topic,
    TypedError,
    approval_id_for,
    step_event_id,
)
from shared.governance.pii import ALL_PII as PII
from shared.governance.pii import find_in_value, redact_value
from shared.outbox import handle_once
from shared.store import Collection

SOURCE = "goalrail/router"
log = logging.getLogger("goalrail.router")
# failures that say something about the model, not about the step's input or output
MODEL_FAULTS = {ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.UPSTREAM_ERROR, ErrorCode.MODEL_ERROR}


@dataclass(frozen=True)
class RouterDeps:
    decisions: Collection
    table: RoutingTable
    store: RouterStore | None = None
    price: Pricer = table_price
    clock: Callable[[], float] = field(default=time.time)
    tool_effects: Mapping[str, str] = field(default_factory=dict)  # tool name -> side-effect class
    approval_amount_usd: float | None = None


PLAN_FINISHED = PlanFinished.model_fields["type"].default


def wants(topic: str, headers: Mapping[str, str]) -> bool:
    """Whether a record can change anything here, judged from its headers before it is parsed:
    of the plan events only a finished plan closes holds, and of the step results only a model
    call's teaches (see `_observe`). Half of what the router reads is neither, and parsing it
    cost the router's hot path; a record without the headers is parsed as before. What is passed
    by here is still validated (and dead-lettered if bad) by the auditor, which reads it too."""
    kind = headers.get("ce_type")
    if kind is None:
        return True
    if topic == Topic.PLANS_EVENTS:
        return kind == PLAN_FINISHED
    if topic == Topic.STEPS_RESULTS:
        return headers.get(BINDING_KIND_HEADER) != "tool"
    return True


async def handle(event: Event, deps: RouterDeps) -> list[Event]:
    if isinstance(event, StepReady):
        return await handle_once(deps.decisions, event.id, lambda: _dispatch(event, deps), {"goal_id": event.goal_id})
    if isinstance(event, ApprovalDecided) and deps.store is not None:
        store = deps.store
        return await handle_once(deps.decisions, event.id, lambda: _decided(event, store), {"goal_id": event.goal_id})
    if isinstance(event, PlanFinished) and deps.store is not None:
        if closed := await deps.store.close_holds(event.goal_id, event.time):
            log.info("goal %s ended: %d step(s) waiting for approval will not run", event.goal_id, closed)
        return []
    if isinstance(event, (StepSucceeded, StepFailed)) and deps.store is not None:
        try:
            await _observe(event, deps.store, deps.clock())
        except Exception:  # noqa: BLE001 — learning is best effort: never dead-letter a valid result
            log.warning("could not learn from %s %s", event.type, event.id, exc_info=True)
    return []


async def _dispatch(event: StepReady, deps: RouterDeps) -> list[Event]:
    stats, budget = await _learned(event, deps)
    step, detected = _with_detected_pii(event, deps.table)
    try:
        binding = choose(step, deps.table, inputs=event.resolved_inputs, stats=stats, budget=budget,
                         price=deps.price, now=deps.clock())
    except RoutingError as exc:
        error = exc.error
        if detected:
            error = error.model_copy(update={"details": {**error.details, "pii_detected_at": detected}})
        failed_id = step_event_id(event.goal_id, event.step.id, event.attempt, "failed")
        return [event.derive(StepFailed, failed_id, SOURCE, plan_id=event.plan_id,
                             step_id=event.step.id, attempt=event.attempt, error=error)]
    if detected:
        binding = binding.model_copy(update={"reason": f"{binding.reason}; pii detected in inputs at {detected}"})
    reason = approval_reason(event.step, binding, event.resolved_inputs, deps.tool_effects, deps.approval_amount_usd)
    # without a store nothing could resume a held step; the executor still refuses unapproved
    # irreversible tools
    if reason is not None and deps.store is not None:
        return [await _hold(event, binding, reason, deps.store)]
    return [await _dispatched(event, binding, deps.store)]


async def _dispatched(
    event: StepReady, binding: Binding, store: RouterStore | None, decision: ApprovalDecided | None = None
) -> StepDispatched:
    if store is not None and binding.estimated_cost_usd:
        await store.reserve(event.goal_id, event.tenant, binding.estimated_cost_usd)
    dispatched = event.derive(
        StepDispatched,
        step_event_id(event.goal_id, event.step.id, event.attempt, "dispatched"),
        SOURCE,
        plan_id=event.plan_id,
        step=event.step,
        attempt=event.attempt,
        resolved_inputs=event.resolved_inputs,
        allowed_tools=event.allowed_tools,
        goal_type=event.goal_type,
        binding=binding,
        approval_id=decision.approval_id if decision else None,
        approved_by=decision.decided_by if decision else None,
    )
    return dispatched.model_copy(update={"causation_id": decision.id}) if decision else dispatched


async def _hold(event: StepReady, binding: Binding, reason: str, store: RouterStore) -> ApprovalRequested:
    """Keep the step until a person decides; the request shows its inputs redacted."""
    approval_id = approval_id_for(event.goal_id, event.step.id, event.attempt)
    await store.hold(approval_id, event, binding)
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return event.derive(
        ApprovalRequested,
        approval_id,
        SOURCE,
        approval_id=approval_id,
        plan_id=event.plan_id,
        step=event.step,
        attempt=event.attempt,
        inputs=redact_value(event.resolved_inputs, allowed_classes=[]),
        reason=reason,
        binding=binding,
        traceparent=carrier.get("traceparent"),
    )


async def _decided(event: ApprovalDecided, store: RouterStore) -> list[Event]:
    """Approved: the held step is dispatched with who approved it. Rejected: it fails for good
    (POLICY_VIOLATION), which ends the goal. The first decision wins."""
    held = await store.held(event.approval_id)
    if held is None or held["goal_id"] != event.goal_id:
        log.warning("decision %s names no step waiting for approval", event.id)
        return []
    if not await store.settle(event.approval_id, event.id, event.decision):
        log.warning("ignoring %s of %s by %s: the approval was %s already", event.decision, event.approval_id,
                    event.decided_by, held.get("status"))
        return []
    ready = StepReady.model_validate(held["ready"])
    if event.decision == "approved":
        return [await _dispatched(ready, Binding.model_validate(held["binding"]), store, event)]
    message = f"rejected by {event.decided_by}" + (f": {event.comment}" if event.comment else "")
    error = TypedError(code=ErrorCode.POLICY_VIOLATION, message=message, retryable=False,
                       details={"approval_id": event.approval_id, "decided_by": event.decided_by,
                                "comment": event.comment})
    # no binding: nothing was dispatched, so there is no reserved cost to release (see _observe)
    failed = ready.derive(StepFailed, step_event_id(ready.goal_id, ready.step.id, ready.attempt, "failed"), SOURCE,
                          plan_id=ready.plan_id, step_id=ready.step.id, attempt=ready.attempt, error=error)
    return [failed.model_copy(update={"causation_id": event.id})]


async def _learned(event: StepReady, deps: RouterDeps) -> tuple[dict[str, ModelStats], BudgetState]:
    """The statistics of the step's candidates and the budget state of its goal and tenant."""
    stats: dict[str, ModelStats] = {}
    goal_spent = tenant_spent = 0.0
    if deps.store is not None and event.step.tool is None:
        stats = await deps.store.stats(c.model for c in deps.table.route(event.step.task_type).candidates)
        goal_spent, tenant_spent = await deps.store.spent(event.goal_id, event.tenant)
    budget = BudgetState(
        goal_limit_usd=event.goal_budget_usd,
        goal_spent_usd=goal_spent,
        tenant_limit_usd=deps.table.budgets.tenant_limit(event.tenant),
        tenant_spent_usd=tenant_spent,
    )
    return stats, budget


def _with_detected_pii(event: StepReady, table: RoutingTable) -> tuple[Step, list[str]]:
    """The step as routed: carrying `pii` when its inputs hold personal data it does not declare
    (the dispatched step itself is left as the planner made it)."""
    step = event.step
    if step.tool is not None or not table.detect_pii or PII in step.data_classes:
        return step, []
    found = sorted({path for path, _ in find_in_value(event.resolved_inputs)})
    if not found:
        return step, []
    return step.model_copy(update={"data_classes": [*step.data_classes, PII]}), found[:5]


async def _observe(event: StepSucceeded | StepFailed, store: RouterStore, now: float) -> None:
    """Learn from a model call's result, once per result."""
    binding = event.binding
    if binding is None or binding.kind != "model" or binding.model is None:
        return  # only model calls teach the router something: a tool's result needs no dedupe record
    bound = binding.model
    await handle_once(store.observed, event.id, lambda: _learn(event, binding, bound, store, now))


async def _learn(event: StepSucceeded | StepFailed, binding: Binding, bound: str, store: RouterStore,
                 now: float) -> list[Event]:
    chain = [bound, *binding.fallbacks]
    stats = await store.stats(chain)
    if isinstance(event, StepSucceeded):
        served = _served_model(event, chain)
        # litellm only moves down the chain when a model fails: everything before `served` did
        for model in chain[: chain.index(served)]:
            await store.save_stats(model, stats.get(model, ModelStats()).failed(now))
        learned = stats.get(served, ModelStats()).succeeded(event.duration_ms, event.usage.cost_usd)
        await store.save_stats(served, learned)
        await store.charge(event.goal_id, event.tenant, event.usage.cost_usd, binding.estimated_cost_usd or 0.0)
        return []
    if event.error.code in MODEL_FAULTS:
        for model in chain:
            await store.save_stats(model, stats.get(model, ModelStats()).failed(now))
    await store.charge(event.goal_id, event.tenant, 0.0, binding.estimated_cost_usd or 0.0)
    return []


def _served_model(event: StepSucceeded, chain: list[str]) -> str:
    served = event.output.get("model") if isinstance(event.output, dict) else None
    return served if served in chain else chain[0]

