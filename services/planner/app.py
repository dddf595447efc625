"""Planner service: consumes goals, step results and operators' goal actions (retry, cancel),
publishes plans, ready steps, finished plans."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from faststream import FastStream

from services.planner.handlers import PlannerDeps, expire_overdue, handle
from services.planner.model_planning import ModelPlanner
from services.planner.planning import load_playbooks
from services.planner.store import PlanStore
from shared.events import Event, Topic, utcnow
from shared.governance.boundaries import PlanBoundary
from shared.models.client import ModelClient
from shared.models.routing_table import RoutingTable, load_routing_table
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy

NAME = "planner"
log = logging.getLogger("goalrail.planner")


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = PlanStore(open_database(settings.mongo_url, f"goalrail_{NAME}"))
    tools = build_catalogue(settings)
    table = load_routing_table(settings.routing_table)
    models = ModelClient(runtime.tracer, settings.model_timeout_s, settings.trace_content, table=table)
    model, *fallbacks = plan_models(table)
    policy = ToolPolicy.load(settings.tool_policy)
    deps = PlannerDeps(
        store=store,
        playbooks=load_playbooks(settings.playbooks_dir),
        tool_names=frozenset(tools.names()),
        clock=utcnow,
        planner=ModelPlanner(
            models=models,
            model=model,
            fallbacks=tuple(fallbacks),
            tools={spec.name: spec for spec in tools.catalogue()},
            policy=policy,
            repair_rounds=settings.planner_repair_rounds,
            max_tools=settings.planner_max_tools,
        ),
        max_replans=settings.planner_max_replans,
        boundaries=PlanBoundary(policy.goal_types, {spec.name: spec for spec in tools.catalogue()}),
    )

    async def send(events: list[Event]) -> None:
        await runtime.publisher.publish(events)

    async def sweep() -> None:
        """Goals past their deadline or time budget end even when no step result comes."""
        while True:
            await asyncio.sleep(settings.planner_sweep_interval_s)
            try:
                await expire_overdue(deps, send)
            except Exception:  # noqa: BLE001 — a failed sweep is retried by the next one
                log.exception("sweeping overdue goals failed")

    sweeps: set[asyncio.Task] = set()  # a reference keeps the task alive

    async def init() -> None:
        await store.init()
        await models.warm_up()  # a real model in the table: pay litellm's import at start, not in a goal
        sweeps.add(asyncio.get_running_loop().create_task(sweep(), name="planner-sweep"))

    topics = [Topic.GOALS_SUBMITTED, Topic.STEPS_RESULTS, Topic.APPROVALS_DECIDED]  # operators' retry/cancel
    return runtime.app(topics, partial(handle, deps=deps), on_startup=[init])


def plan_models(table: RoutingTable) -> list[str]:
    """The `plan` task type's candidates (first = the model, rest = its fallbacks)."""
    return [candidate.model for candidate in table.route("plan").candidates]
