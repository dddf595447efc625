"""Router service: consumes ready steps and publishes them dispatched with their binding (or
refused, or held for approval); consumes approval decisions to release or fail held steps,
finished plans to drop what still waits, and step results to learn model statistics and charge
budgets."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.router.handlers import RouterDeps, handle, wants
from services.router.prices import litellm_price
from services.router.routing import load_routing_table
from services.router.store import RouterStore
from shared.events import Topic
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database
from shared.tools.catalogue import build_catalogue

NAME = "router"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = RouterStore(open_database(settings.mongo_url, f"goalrail_{NAME}"))
    # the catalogue's side-effect classes: an irreversible tool waits for a person whatever the plan says
    effects = {spec.name: spec.side_effect for spec in build_catalogue(settings).catalogue()}
    deps = RouterDeps(
        decisions=store.decisions, table=load_routing_table(settings.routing_table), store=store, price=litellm_price,
        tool_effects=effects, approval_amount_usd=settings.approval_amount_usd,
    )
    topics = [Topic.STEPS_READY, Topic.STEPS_RESULTS, Topic.APPROVALS_DECIDED, Topic.PLANS_EVENTS]
    return runtime.app(topics, partial(handle, deps=deps), on_startup=[store.init], wants=wants)
