"""Auditor service: consumes every topic, keeps the audit chain, publishes official outcomes,
and serves KPIs and the audit trail over HTTP."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.auditor.audit import PolicyContext
from services.auditor.handlers import AuditorDeps, handle
from services.auditor.http import HttpServer, create_api
from services.auditor.store import AuditStore, load_baselines
from shared.client import publish_traced
from shared.events import Topic, utcnow
from shared.governance.boundaries import model_clearances
from shared.models.routing_table import load_routing_table
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database
from shared.tools.catalogue import build_catalogue
from shared.tools.policy import ToolPolicy

NAME = "auditor"
DATABASE = f"goalrail_{NAME}"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = AuditStore(open_database(settings.mongo_url, DATABASE))
    policy = PolicyContext(
        policy=ToolPolicy.load(settings.tool_policy),
        tools={spec.name: spec for spec in build_catalogue(settings).catalogue()},
        clearances=model_clearances(load_routing_table(settings.routing_table)),
    )
    deps = AuditorDeps(store=store, clock=utcnow, policy=policy)
    on_startup = [store.init]
    http = None
    if settings.auditor_http_port:
        api = create_api(store, load_baselines(settings.playbooks_dir),
                         partial(publish_traced, runtime.broker, runtime.tracer))
        http = HttpServer(api, settings.auditor_http_port, settings.auditor_http_host)
        on_startup.append(http.start)

    app = runtime.app(list(Topic), partial(handle, deps=deps), on_startup=on_startup)
    if http is not None:
        app.on_shutdown(http.stop)
    return app
