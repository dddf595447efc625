"""Auditor service: consumes every topic, keeps the audit chain, publishes official outcomes."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.auditor.handlers import AuditorDeps, handle
from services.auditor.store import AuditStore
from shared.events import Topic, utcnow
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database

NAME = "auditor"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = AuditStore(open_database(settings.mongo_url, f"goalrail_{NAME}"))
    deps = AuditorDeps(store=store, clock=utcnow)

    return runtime.app(list(Topic), partial(handle, deps=deps), on_startup=[store.init])
