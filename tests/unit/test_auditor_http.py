"""The auditor's HTTP API over a memory store: KPIs, goals, a goal's audit trail, verification."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.auditor.http import HttpServer, create_api
from shared.embedded.stack import free_port
from tests.factories import filled_audit_store, tamper  # noqa: F401 (a fixture)


async def test_kpis_goals_audit_and_verify(filled_audit_store):
    api = create_api(filled_audit_store, {"quarterly-sales-report": 480.0})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://auditor") as http:
        [row] = (await http.get("/kpis")).json()["processes"]
        assert row["process"] == "playbook:quarterly-sales-report"
        assert (row["goals"], row["success_rate"], row["manual_baseline_minutes"]) == (1, 1.0, 480.0)

        [goal] = (await http.get("/goals")).json()["goals"]
        assert (goal["goal_id"], goal["status"], goal["cycle_time_s"]) == ("goal-1", "completed", 1.5)

        audit = (await http.get("/goals/goal-1/audit")).json()
        assert [r["seq"] for r in audit["records"]] == [1, 2, 3, 4, 5]
        assert audit["timeline"][2]["error"] == "UPSTREAM_TIMEOUT: model slow"

        assert (await http.get("/goals/goal-1/verify")).json() == {
            "goal_id": "goal-1", "records": 5, "intact": True, "broken": None,
        }
        await asyncio.to_thread(tamper, "memory://", "goal-1:outcome", {"event.steps": 9})
        broken = (await http.get("/goals/goal-1/verify")).json()
        assert broken["intact"] is False and broken["broken"]["seq"] == 5

        assert (await http.get("/goals/nope/verify")).status_code == 404


async def test_server_runs_in_the_loop_and_stops(filled_audit_store):
    port = free_port()
    server = HttpServer(create_api(filled_audit_store, {}), port, "127.0.0.1")
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).json() == {"status": "ok"}
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_port_in_use_is_a_clear_error(filled_audit_store):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = HttpServer(create_api(filled_audit_store, {}), busy.getsockname()[1], "127.0.0.1")
        with pytest.raises(RuntimeError, match="GOALRAIL_AUDITOR_HTTP_PORT"):
            await server.start()
