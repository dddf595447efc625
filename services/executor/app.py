"""Executor service: consumes dispatched steps, runs tools and model tasks, publishes results."""

from __future__ import annotations

import httpx
from functools import partial

from faststream import FastStream

from services.executor.execution import StepRunner, ToolLimiter
from services.executor.handlers import ExecutorDeps, handle
from shared.events import Topic
from shared.governance.boundaries import model_clearances
from shared.models.client import ModelClient
from shared.models.routing_table import load_routing_table
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database
from shared.tools.catalogue import build_catalogue, tool_config
from shared.tools.policy import ToolPolicy

NAME = "executor"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    executions = open_database(settings.mongo_url, f"goalrail_{NAME}")["executions"]
    table = load_routing_table(settings.routing_table)
    models = ModelClient(runtime.tracer, settings.model_timeout_s, settings.trace_content, table=table)
    http = httpx.AsyncClient(timeout=settings.tool_timeout_s)
    runner = StepRunner(
        tools=build_catalogue(settings),
        models=models,
        http=http,
        tracer=runtime.tracer,
        tool_config=tool_config(settings),
        policy=ToolPolicy.load(settings.tool_policy),
        limiter=ToolLimiter(settings.tool_concurrency, settings.tool_concurrency_per_tool),
        clearances=model_clearances(table),
    )
    deps = ExecutorDeps(executions=executions, runner=runner)

    async def init() -> None:
        await executions.create_index("goal_id")
        await models.warm_up()  # a real model in the table: pay litellm's import before the first step

    return runtime.app([Topic.STEPS_DISPATCHED], partial(handle, deps=deps), on_startup=[init])
