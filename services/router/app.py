"""Router service: consumes ready steps, publishes dispatched steps with their binding."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.router.handlers import RouterDeps, handle
from services.router.routing import load_routing_table
from shared.events import Topic
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database

NAME = "router"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    decisions = open_database(settings.mongo_url, f"goalrail_{NAME}")["decisions"]
    deps = RouterDeps(decisions=decisions, table=load_routing_table(settings.routing_table))

    async def init() -> None:
        await decisions.create_index("goal_id")

    return runtime.app([Topic.STEPS_READY], partial(handle, deps=deps), on_startup=[init])
