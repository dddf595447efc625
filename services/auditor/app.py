"""Auditor service: consumes every topic, keeps the audit chain, publishes official outcomes,
and serves KPIs and the audit trail over HTTP."""

from __future__ import annotations

from functools import partial

from faststream import FastStream

from services.auditor.handlers import AuditorDeps, handle
from services.auditor.http import HttpServer, create_api
from services.auditor.store import AuditStore, load_baselines
from shared.events import Topic, utcnow
from shared.service import ServiceRuntime
from shared.settings import Settings
from shared.store import open_database

NAME = "auditor"
DATABASE = f"goalrail_{NAME}"


def create_app(settings: Settings) -> FastStream:
    runtime = ServiceRuntime(NAME, settings)
    store = AuditStore(open_database(settings.mongo_url, DATABASE))
    deps = AuditorDeps(store=store, clock=utcnow)
    on_startup = [store.init]
    http = None
    if settings.auditor_http_port:
        api = create_api(store, load_baselines(settings.playbooks_dir))
        http = HttpServer(api, settings.auditor_http_port, settings.auditor_http_host)
        on_startup.append(http.start)

    app = runtime.app(list(Topic), partial(handle, deps=deps), on_startup=on_startup)
    if http is not None:
        app.on_shutdown(http.stop)
    return app
