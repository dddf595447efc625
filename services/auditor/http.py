"""The auditor's read-only HTTP API: KPIs, goals, a goal's audit trail and its verification.

Served by the auditor process next to its Kafka consumer (see app.py), on
`GOALRAIL_AUDITOR_HTTP_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.auditor.approvals import Publisher, approvals_router
from services.auditor.audit import timeline, verify_chain
from services.auditor.kpis import KPI_EVENT_TYPES, process_kpis, summarize_goals
from services.auditor.operator_page import goal_records_or_404, operator_router
from services.auditor.store import AuditStore

log = logging.getLogger("goalrail.auditor.http")


def create_api(store: AuditStore, baselines: Mapping[str, float], publish: Publisher | None = None) -> FastAPI:
    api = FastAPI(title="Goalrail auditor", description="Audit trail and process KPIs.", version="1")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/kpis")
    async def kpis() -> dict[str, Any]:
        goals = summarize_goals(await store.all_records(KPI_EVENT_TYPES))
        return {"processes": [k.model_dump(mode="json") for k in process_kpis(goals, baselines)]}

    @api.get("/goals")
    async def goals() -> dict[str, Any]:
        summaries = summarize_goals(await store.all_records(KPI_EVENT_TYPES))
        return {"goals": [g.model_dump(mode="json") for g in summaries]}

    @api.get("/goals/{goal_id}/audit")
    async def audit(goal_id: str) -> dict[str, Any]:
        records = await goal_records_or_404(store, goal_id)
        return {
            "goal_id": goal_id,
            "records": [r.model_dump(mode="json") for r in records],
            "timeline": [e.model_dump(mode="json") for e in timeline(records)],
            "policy_flags": [f.model_dump(mode="json") for f in await store.flags(goal_id)],
        }

    @api.get("/goals/{goal_id}/verify")
    async def verify(goal_id: str) -> dict[str, Any]:
        records = await goal_records_or_404(store, goal_id)
        broken = verify_chain(records)
        return {
            "goal_id": goal_id,
            "records": len(records),
            "intact": broken is None,
            "broken": broken.model_dump(mode="json") if broken else None,
        }

    api.include_router(approvals_router(store, publish))  # approvals and operator actions (approvals.py)
    api.include_router(operator_router(store, baselines))  # the operator page at / and /ui
    return api


class _QuietServer(uvicorn.Server):
    # The FastStream app owns SIGTERM/SIGINT; uvicorn must not take them over (it would swallow
    # them and re-raise them after its own shutdown).
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """A uvicorn server run as a task of the service's event loop."""

    def __init__(self, api: FastAPI, port: int, host: str = "127.0.0.1") -> None:
        # log_config=None: uvicorn's records go to the service's (JSON) root handler
        config = uvicorn.Config(
            api, host=host, port=port, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind
            raise RuntimeError(
                f"the auditor HTTP API cannot listen on {self.host}:{self.port} (see the log above); "
                "set GOALRAIL_AUDITOR_HTTP_PORT to a free port, or 0 to turn it off"
            ) from exc

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start (e.g. port in use)
                raise RuntimeError(f"auditor HTTP server on port {self.port} stopped at start")
            await asyncio.sleep(0.02)
        log.info("auditor HTTP API on port %s", self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._task, timeout=5)
