"""kill -9 the executor while a write step is in flight: the goal still completes and the
report is published exactly once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from shared.client import GoalrailClient
from shared.embedded.stack import EmbeddedStack, fresh_workdir
from shared.events import GoalCompleted

pytestmark = pytest.mark.e2e


async def test_executor_killed_mid_write_resumes_without_repeating_the_side_effect(tmp_path):
    # the demo API holds each report write for 3 s: long enough to kill the executor inside it
    stack = EmbeddedStack(fresh_workdir(tmp_path / "crash"), write_delay_s=3.0)
    await stack.start()
    try:
        async with GoalrailClient(stack.bootstrap, tenant="acme") as client, httpx.AsyncClient(
            base_url=stack.demo_api_url
        ) as http:
            await client.watch_outcomes()
            submitted = await client.submit("Prepare the Q3 sales report for the board", requester="cfo")
            await _wait_for_write_attempt(http, timeout=60)

            executor_pid = stack.processes["executor"].pid
            stack.kill_service("executor")  # SIGKILL: no drain, no commit, no goodbye
            await stack.start_service("executor")
            assert stack.processes["executor"].pid != executor_pid

            outcome = await client.wait_for_outcome(submitted.goal_id, timeout=90)
            calls = (await http.get("/_calls")).json()
            reports = (await http.get("/reports")).json()
    finally:
        await stack.stop()

    assert isinstance(outcome, GoalCompleted), outcome
    reports = reports["reports"] if isinstance(reports, dict) else reports
    calls = calls["calls"] if isinstance(calls, dict) else calls
    assert len(reports) == 1, reports
    assert reports[0]["report_id"] == outcome.outputs["report"]["report_id"]
    # the restarted executor ran the step again (its first run never stored a result), and both
    # calls carried the same key, so the upstream applied the write once
    assert len(calls) == 2, calls
    assert {c["idempotency_key"] for c in calls} == {f"{submitted.goal_id}:publish_report"}


async def _wait_for_write_attempt(http: httpx.AsyncClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = (await http.get("/_calls")).json()
        calls = calls["calls"] if isinstance(calls, dict) else calls
        if calls:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the executor never called the report writer")
