"""Planner service: consumes goals and step results, publishes plans, ready steps, finished plans."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.planner.handlers import PlannerDeps, handle
from services.planner.planning import load_playbooks
from services.planner.store import PlanStore
from shared.events import Topic, utcnow
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database
from shared.tools.catalogue import build_catalogue

NAME = "planner"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = PlanStore(open_database(settings.mongo_url, f"goalrail_{NAME}"))
    deps = PlannerDeps(
        store=store,
        playbooks=load_playbooks(settings.playbooks_dir),
        tool_names=frozenset(build_catalogue().names()),
        clock=utcnow,
    )

    return runtime.app([Topic.GOALS_SUBMITTED, Topic.STEPS_RESULTS], partial(handle, deps=deps), on_startup=[store.init])
