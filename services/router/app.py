"""Router service: consumes ready steps and publishes them dispatched with their binding (or
refused); consumes step results to learn model statistics and charge budgets."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.router.handlers import RouterDeps, handle
from services.router.prices import litellm_price
from services.router.routing import load_routing_table
from services.router.store import RouterStore
from shared.events import Topic
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database

NAME = "router"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = RouterStore(open_database(settings.mongo_url, f"goalrail_{NAME}"))
    deps = RouterDeps(
        decisions=store.decisions, table=load_routing_table(settings.routing_table), store=store, price=litellm_price
    )
    return runtime.app([Topic.STEPS_READY, Topic.STEPS_RESULTS], partial(handle, deps=deps), on_startup=[store.init])
