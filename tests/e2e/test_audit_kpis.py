"""After a demo goal completes on the embedded stack, the auditor's HTTP API counts it in the
KPIs and `goalrail audit verify` on the stack's store finds its chain intact."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from typer.testing import CliRunner

from shared.cli import app
from shared.client import GoalrailClient
from shared.events import GoalCompleted

pytestmark = pytest.mark.e2e

DEMO_GOAL = "Prepare the Q3 sales report for the board"
PROCESS = "playbook:quarterly-sales-report"


async def _audited(http: httpx.AsyncClient, goal_id: str, timeout: float = 10) -> dict:
    """The goal's summary once the auditor has stored its outcome (it publishes the outcome
    after storing it, so this is normally immediate)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        goals = {g["goal_id"]: g for g in (await http.get("/goals")).json()["goals"]}
        if goals.get(goal_id, {}).get("status") == "completed" or asyncio.get_running_loop().time() > deadline:
            return goals.get(goal_id, {})
        await asyncio.sleep(0.1)


async def test_completed_goal_is_counted_in_kpis_and_its_chain_verifies(shared_stack):
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)
    assert isinstance(outcome, GoalCompleted), outcome

    async with httpx.AsyncClient(base_url=stack.auditor_url, timeout=10) as http:
        goal = await _audited(http, outcome.goal_id)
        assert goal["status"] == "completed" and goal["process"] == PROCESS and goal["steps"] == 4

        rows = {r["process"]: r for r in (await http.get("/kpis")).json()["processes"]}
        sales = rows[PROCESS]
        assert sales["completed"] >= 1 and sales["manual_baseline_minutes"] == 480.0
        assert sales["mean_cycle_time_s"] > 0 and 0 < sales["reduction_pct"] < 100

        verify = (await http.get(f"/goals/{outcome.goal_id}/verify")).json()
        assert verify["intact"] is True and verify["records"] >= 11

        audit = (await http.get(f"/goals/{outcome.goal_id}/audit")).json()
        # the auditor reads each topic on its own, so the goal's first record need not be its submission
        submitted = next(r["event"] for r in audit["records"] if r["event_type"] == "goalrail.goal.submitted")
        assert submitted["goal"]["requester"] == "[REDACTED:email]"  # stored redacted

    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["audit", "verify", outcome.goal_id, "--workdir", str(stack.workdir)]
    )
    assert result.exit_code == 0, result.output
    assert f"audit chain of {outcome.goal_id} intact" in result.output
