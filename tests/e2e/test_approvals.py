"""Approvals and escalations across the four service processes, the demo business API and the
broker: a payment step waits for a person; approved (over the auditor's HTTP API) it runs once,
rejected (through the Python client) it never runs and the goal fails; a goal that fails after
its replans is escalated with its failure chain, and an operator retries or cancels goals."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from services.auditor.store import AuditStore
from shared.client import GoalrailClient
from shared.events import Constraints, GoalCompleted, GoalFailed
from shared.store import open_database

pytestmark = pytest.mark.e2e


def payment_goal() -> tuple[str, str]:
    invoice = f"INV-{uuid.uuid4().hex[:8]}"
    return f"Pay vendor Northwind invoice {invoice}", invoice


async def pending_approval(auditor_url: str, goal_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=auditor_url) as http:
        while time.monotonic() < deadline:
            approvals = (await http.get("/approvals", params={"status": "pending"})).json()["approvals"]
            mine = [a for a in approvals if a["goal_id"] == goal_id]
            if mine:
                return mine[0]
            await asyncio.sleep(0.2)
    raise TimeoutError(f"no pending approval for {goal_id}")


async def payments(demo_api_url: str, invoice: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=demo_api_url) as http:
        issues = (await http.get("/tracker/issues")).json()
        calls = (await http.get("/_calls")).json()
    assert not [c for c in calls if c["path"] == "/tracker/issues" and c["idempotency_key"] is None]
    return [i for i in issues if invoice in i["title"]]


async def records(stack, goal_id: str, *needed: str, timeout: float = 10) -> list:
    """The goal's audit records once they hold every `needed` event type (the auditor reads
    each topic on its own, so an outcome can be out before the records that led to it are in)."""
    store = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_auditor"))
    deadline = time.monotonic() + timeout
    while True:
        trail = await store.records(goal_id)
        if set(needed) <= {r.event_type for r in trail} or time.monotonic() > deadline:
            return trail
        await asyncio.sleep(0.1)


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "250"})


async def test_an_approved_payment_runs_once_and_the_goal_completes_in_one_trace(shared_stack):
    stack = shared_stack.stack
    text, invoice = payment_goal()
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        submitted = await client.submit(text, requester="cfo@acme.example", input={"amount": 1200})
        goal_id = submitted.goal_id
        approval = await pending_approval(stack.auditor_url, goal_id)
        assert approval["approval_id"] == f"{goal_id}:request_payment:1:approval"
        assert (approval["tool"], approval["step_id"], approval["status"]) == (
            "tracker.create_issue", "request_payment", "pending")
        assert "needs_approval" in approval["reason"] and approval["tenant"] == "acme"
        assert approval["inputs"]["title"] == f"Pay Northwind invoice {invoice}: 1200 EUR"
        assert await payments(stack.demo_api_url, invoice) == []  # nothing happens before the approval

        listed = cli(stack, "approvals", "list", "--auditor-url", stack.auditor_url, "--status", "pending")
        assert listed.returncode == 0 and approval["approval_id"] in listed.stdout.replace("\n", ""), listed

        async with httpx.AsyncClient(base_url=stack.auditor_url) as http:
            answer = await http.post(f"/approvals/{approval['approval_id']}/approve",
                                     json={"by": "Dana Controller", "comment": "invoice checked"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["decision"] == "approved"
            again = await http.post(f"/approvals/{approval['approval_id']}/reject", json={"by": "someone"})
            assert again.status_code == 409
        outcome = await client.wait_for_outcome(goal_id, timeout=60)

    assert isinstance(outcome, GoalCompleted), outcome
    (issue,) = await payments(stack.demo_api_url, invoice)
    assert issue["assignee"] == "accounts-payable" and outcome.outputs["payment"]["issue_id"] == issue["issue_id"]
    trail = await records(stack, goal_id, "goalrail.approval.decided", "goalrail.step.dispatched")
    types = [r.event_type for r in trail]
    assert types.count("goalrail.approval.requested") == 1 and types.count("goalrail.approval.decided") == 1
    (dispatched,) = [r.event for r in trail if r.event_type == "goalrail.step.dispatched"]
    assert dispatched["approved_by"] == "Dana Controller"  # (an address would be redacted in the trail)
    (requested,) = [r.event for r in trail if r.event_type == "goalrail.approval.requested"]
    # the decision joined the goal's trace: the outcome's trace is the one the request was made in
    assert requested["traceparent"].split("-")[1] == outcome.trace_id
    async with httpx.AsyncClient(base_url=stack.auditor_url) as http:
        decided = [a for a in (await http.get("/approvals")).json()["approvals"] if a["goal_id"] == goal_id]
    assert [(a["status"], a["decided_by"]) for a in decided] == [("approved", "Dana Controller")]


async def test_a_rejected_payment_never_runs_and_the_goal_fails_without_replan(shared_stack):
    stack = shared_stack.stack
    text, invoice = payment_goal()
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        goal_id = (await client.submit(text, requester="cfo@acme.example", input={"amount": 90_000})).goal_id
        approval = await pending_approval(stack.auditor_url, goal_id)
        decision = await client.decide(approval["approval_id"], goal_id, approve=False, by="controller@acme.example",
                                       comment="duplicate invoice")
        assert decision.id == f"{approval['approval_id']}:decided"
        outcome = await client.wait_for_outcome(goal_id, timeout=60)

    assert isinstance(outcome, GoalFailed), outcome
    assert outcome.error.code == "POLICY_VIOLATION"
    assert outcome.error.message == "rejected by controller@acme.example: duplicate invoice"
    assert outcome.error.details["approval_id"] == approval["approval_id"]
    await asyncio.sleep(0.5)
    assert await payments(stack.demo_api_url, invoice) == []
    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        calls = (await http.get("/_calls")).json()
    assert not [c for c in calls if (c["idempotency_key"] or "").startswith(goal_id)]
    types = [r.event_type for r in await records(stack, goal_id, "goalrail.approval.decided", "goalrail.plan.finished")]
    assert "goalrail.step.dispatched" not in types and "goalrail.goal.escalated" not in types
    assert types.count("goalrail.plan.created") == 1  # no replan after a person said no


async def test_an_escalated_goal_carries_its_failure_chain_and_completes_when_retried(shared_stack):
    """reports.get of a report that does not exist yet fails for good; no revision is possible
    (only reports.get is allowed), so the goal is escalated. Once the report exists, the
    operator's retry runs the failed step again and the goal completes."""
    stack = shared_stack.stack
    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        report_id = f"rpt-{len((await http.get('/reports')).json()) + 1:04d}"
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        first = await client.submit_and_wait(
            f"Summarise report {report_id}", requester="cfo@acme.example", input={"report_id": report_id},
            constraints=Constraints(allowed_tools=["reports.get"]), timeout=60)
        assert isinstance(first, GoalFailed), first
        goal_id = first.goal_id
        trail = await records(stack, goal_id, "goalrail.goal.escalated")
        (escalated,) = [r.event for r in trail if r.event_type == "goalrail.goal.escalated"]
        chain = escalated["error"]["details"]["failure_chain"]
        assert [(c["step_id"], c["attempt"]) for c in chain] == [("fetch_report", 1)]
        assert escalated["trace_id"] and escalated["trace_id"] == first.trace_id

        async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
            created = await http.post("/reports", json={"title": "Q2 board pack", "body": "All good.",
                                                        "audience": "board"},
                                      headers={"Idempotency-Key": f"test-{uuid.uuid4().hex}"})
        assert created.json()["report_id"] == report_id
        async with httpx.AsyncClient(base_url=stack.auditor_url) as http:
            retried = await http.post(f"/goals/{goal_id}/retry", json={"by": "ops@acme.example",
                                                                       "comment": "report published"})
            assert retried.status_code == 202, retried.text
        second = await client.wait_for_outcome(goal_id, timeout=60)
        while second.id == first.id:  # a redelivered first outcome
            second = await client.wait_for_outcome(goal_id, timeout=60)

    assert isinstance(second, GoalCompleted), second
    assert second.id == f"{goal_id}:outcome:1"
    trail = await records(stack, goal_id, "goalrail.goal.completed")
    attempts = [r.event["attempt"] for r in trail if r.event_type == "goalrail.step.ready"
                and r.event["step"]["id"] == "fetch_report"]
    assert attempts == [1, 2]
    types = [r.event_type for r in trail]
    assert types.count("goalrail.goal.failed") == 1 and types.count("goalrail.goal.completed") == 1


async def test_an_operator_cancels_a_goal_waiting_for_approval(shared_stack):
    stack = shared_stack.stack
    text, invoice = payment_goal()
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        goal_id = (await client.submit(text, requester="cfo@acme.example")).goal_id
        approval = await pending_approval(stack.auditor_url, goal_id)
        result = await asyncio.to_thread(cli, stack, "goals", "cancel", goal_id, "--by", "ops@acme.example",
                                         "--comment", "vendor under review", "--auditor-url", stack.auditor_url)
        assert result.returncode == 0, result.stderr
        outcome = await client.wait_for_outcome(goal_id, timeout=60)

    assert isinstance(outcome, GoalFailed), outcome
    assert outcome.error.code == "CANCELLED"
    assert outcome.error.message == "cancelled by ops@acme.example: vendor under review"
    async with httpx.AsyncClient(base_url=stack.auditor_url) as http:
        for _ in range(50):  # the auditor stores the end of the plan on its own time
            pending = (await http.get("/approvals", params={"status": "pending"})).json()["approvals"]
            if not [a for a in pending if a["goal_id"] == goal_id]:
                break
            await asyncio.sleep(0.1)
        late = await http.post(f"/approvals/{approval['approval_id']}/approve", json={"by": "someone"})
        assert late.status_code in (404, 409)
        assert (await http.post(f"/goals/{goal_id}/retry", json={"by": "ops"})).status_code == 409
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:  # even past the API, on Kafka
        await client.decide(approval["approval_id"], goal_id, approve=True, by="someone")
    await asyncio.sleep(1.5)
    assert await payments(stack.demo_api_url, invoice) == []
