"""A goal no playbook covers: planned by the model path (the offline planner through litellm),
executed and completed across the four service processes, the demo business API and the broker."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.auditor.audit import first_broken_link
from services.auditor.store import AuditStore
from services.planner.planning import load_playbooks
from shared.client import GoalrailClient
from shared.events import Constraints, GoalCompleted, GoalFailed
from shared.settings import CONFIG_DIR
from shared.store import open_database

pytestmark = pytest.mark.e2e

GOAL = "Send the top 5 CRM accounts of Q2 to management"


def test_no_playbook_covers_the_goal():
    assert all(playbook.matches(GOAL) is None for playbook in load_playbooks(CONFIG_DIR / "playbooks").values())


async def test_a_goal_without_playbook_is_planned_by_the_model_executed_and_completed(shared_stack):
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(GOAL, requester="cro@acme.example", timeout=60)

    assert isinstance(outcome, GoalCompleted), outcome
    assert outcome.steps == 3 and outcome.retries == 0
    report, summary = outcome.outputs["report"], outcome.outputs["summary"]
    assert report["title"] == "Top 5 CRM accounts of Q2 to management"
    assert summary.startswith("## Send the top 5 CRM accounts of Q2 to management")
    assert outcome.usage.input_tokens > 0

    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        reports = (await http.get("/reports")).json()
    items = reports["reports"] if isinstance(reports, dict) else reports
    mine = [r for r in items if r["report_id"] == report["report_id"]]
    assert len(mine) == 1 and mine[0]["audience"] == "management"

    audit = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_auditor"))
    records = await audit.records(outcome.goal_id)
    created = next(r for r in records if r.event_type == "goalrail.plan.created")
    plan = created.event["plan"]
    assert plan["source"] == "model:goalrail/offline-planner"
    assert [s["tool"] for s in plan["steps"]] == ["crm.top_accounts", None, "reports.publish"]
    assert plan["steps"][0]["inputs"] == {"quarter": "Q2", "year": outcome.time.year, "limit": 5}
    succeeded = [r.event["step_id"] for r in records if r.event_type == "goalrail.step.succeeded"]
    assert sorted(succeeded) == ["fetch_top_accounts", "publish_report", "write_summary"]
    assert first_broken_link(records) is None


async def test_a_step_that_fails_for_good_is_replanned_around_and_the_goal_completes(shared_stack):
    """reports.get of a report that does not exist answers 404 (not retryable): the model revises
    the plan without that step, keeping the list of reports, and the goal completes."""
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait("Summarise report rpt-nope and the published reports",
                                               requester="cfo@acme.example", input={"report_id": "rpt-nope"},
                                               timeout=60)

    assert isinstance(outcome, GoalCompleted), outcome
    assert outcome.steps == 2 and "summary" in outcome.outputs
    audit = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_auditor"))
    records = await audit.records(outcome.goal_id)
    plans = [r.event["plan"] for r in records if r.event_type == "goalrail.plan.created"]
    assert [sorted(s["id"] for s in p["steps"]) for p in plans] == [
        ["fetch_report", "fetch_reports", "write_summary"], ["fetch_reports", "write_summary"]]
    failed = [r.event for r in records if r.event_type == "goalrail.step.failed"]
    assert [(f["step_id"], f["error"]["retryable"]) for f in failed] == [("fetch_report", False)]
    assert first_broken_link(records) is None


async def test_when_no_revision_helps_the_goal_is_escalated_with_the_failure_chain(shared_stack):
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(
            "Summarise report rpt-nope", requester="cfo@acme.example", input={"report_id": "rpt-nope"},
            constraints=Constraints(allowed_tools=["reports.get"]), timeout=60)

    assert isinstance(outcome, GoalFailed), outcome
    chain = outcome.error.details["failure_chain"]
    assert [c["step_id"] for c in chain] == ["fetch_report"]
    audit = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_auditor"))
    # the escalation travels on its own topic: the auditor may record it just after the outcome
    for _ in range(50):
        records = await audit.records(outcome.goal_id)
        if any(r.event_type == "goalrail.goal.escalated" for r in records):
            break
        await asyncio.sleep(0.1)
    (escalated,) = [r.event for r in records if r.event_type == "goalrail.goal.escalated"]
    assert "no revised plan was found" in escalated["reason"]
    assert escalated["error"]["details"]["failure_chain"] == chain


async def test_a_goal_past_its_deadline_fails_with_the_reason(shared_stack):
    from datetime import timedelta

    from shared.events import utcnow

    async with GoalrailClient(shared_stack.stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(GOAL, requester="cro@acme.example",
                                               deadline=utcnow() - timedelta(minutes=1), timeout=60)
    assert isinstance(outcome, GoalFailed)
    assert outcome.error.code == "DEADLINE_EXCEEDED" and "passed its deadline" in outcome.error.message
