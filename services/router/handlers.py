"""Router handlers: a ready step gets its binding and is dispatched (or refused); a step result
teaches the router the model's latency, errors and cost, and charges the goal's budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.router.routing import BudgetState, ModelStats, Pricer, RoutingError, RoutingTable, choose, table_price
from services.router.store import RouterStore
from shared.events import ErrorCode, Event, Step, StepDispatched, StepFailed, StepReady, StepSucceeded
from shared.governance.pii import ALL_PII as PII
from shared.governance.pii import find_in_value
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


async def handle(event: Event, deps: RouterDeps) -> list[Event]:
    if isinstance(event, StepReady):
        return await handle_once(deps.decisions, event.id, lambda: _dispatch(event, deps), {"goal_id": event.goal_id})
    if isinstance(event, (StepSucceeded, StepFailed)) and deps.store is not None:
        store = deps.store
        try:
            await handle_once(store.observed, event.id, lambda: _observe(event, store, deps.clock()))
        except Exception:  # noqa: BLE001 — learning is best effort: never dead-letter a valid result
            log.warning("could not learn from %s %s", event.type, event.id, exc_info=True)
    return []


async def _dispatch(event: StepReady, deps: RouterDeps) -> list[Event]:
    prefix = f"{event.goal_id}:{event.step.id}:{event.attempt}"
    stats, budget = await _learned(event, deps)
    step, detected = _with_detected_pii(event, deps.table)
    try:
        binding = choose(step, deps.table, inputs=event.resolved_inputs, stats=stats, budget=budget,
                         price=deps.price, now=deps.clock())
    except RoutingError as exc:
        error = exc.error
        if detected:
            error = error.model_copy(update={"details": {**error.details, "pii_detected_at": detected}})
        return [event.derive(StepFailed, f"{prefix}:failed", SOURCE, plan_id=event.plan_id,
                             step_id=event.step.id, attempt=event.attempt, error=error)]
    if detected:
        binding = binding.model_copy(update={"reason": f"{binding.reason}; pii detected in inputs at {detected}"})
    if deps.store is not None and binding.estimated_cost_usd:
        await deps.store.reserve(event.goal_id, event.tenant, binding.estimated_cost_usd)
    return [
        event.derive(
            StepDispatched,
            f"{prefix}:dispatched",
            SOURCE,
            plan_id=event.plan_id,
            step=event.step,
            attempt=event.attempt,
            resolved_inputs=event.resolved_inputs,
            allowed_tools=event.allowed_tools,
            binding=binding,
        )
    ]


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


async def _observe(event: StepSucceeded | StepFailed, store: RouterStore, now: float) -> list[Event]:
    binding = event.binding
    if binding is None or binding.kind != "model" or binding.model is None:
        return []
    chain = [binding.model, *binding.fallbacks]
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

