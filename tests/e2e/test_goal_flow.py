"""The demo goal across four service processes, the demo business API and the real broker."""

from __future__ import annotations

import httpx
import pytest

from services.auditor.audit import first_broken_link
from services.auditor.store import AuditStore
from shared.client import GoalrailClient
from shared.events import GoalCompleted
from shared.store import open_database
from shared.telemetry.tracing import setup_tracing

pytestmark = pytest.mark.e2e

DEMO_GOAL = "Prepare the Q3 sales report for the board"


async def test_demo_goal_completes_with_one_report_and_an_intact_audit_chain(shared_stack):
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)

    assert isinstance(outcome, GoalCompleted), outcome
    assert outcome.steps == 4 and outcome.retries == 0
    report = outcome.outputs["report"]
    assert report["title"] == f"Q3 {outcome.time.year} sales report"
    summary = outcome.outputs["summary"]
    assert "Highest revenue" in summary and "EMEA" in summary

    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        reports = (await http.get("/reports")).json()
    mine = [r for r in _items(reports) if r["report_id"] == report["report_id"]]
    assert len(mine) == 1

    audit = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_auditor"))
    records = await audit.records(outcome.goal_id)
    types = [r.event_type for r in records]
    # each event once; the auditor reads every topic on its own, so the order across topics may vary
    assert types.count("goalrail.goal.submitted") == 1
    assert types.count("goalrail.step.succeeded") == 4
    assert "goalrail.plan.finished" in types
    assert first_broken_link(records) is None


async def test_one_goal_is_one_trace_across_all_services(shared_stack):
    stack, collector = shared_stack
    provider = setup_tracing("client", collector.endpoint, make_global=False)
    async with GoalrailClient(stack.bootstrap, tenant="acme", tracer_provider=provider) as client:
        outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)
    provider.force_flush()
    assert isinstance(outcome, GoalCompleted)
    assert outcome.trace_id

    def complete(spans):
        ids = {x.span_id for x in spans}
        return (
            {"client", "planner", "router", "executor", "auditor"} <= {x.service for x in spans}
            and any(x.name.startswith("goals.outcomes") for x in spans)
            and all(x.parent_span_id in ids for x in spans if x.parent_span_id)
        )

    # spans arrive in export batches, parents often after their children: wait for a closed tree
    spans = collector.wait_for(complete, timeout=15, trace_id=outcome.trace_id)
    roots = [s for s in spans if s.parent_span_id is None]
    assert [r.name for r in roots] == ["submit goal"]
    assert {s.trace_id for s in spans} == {outcome.trace_id}

    chat = [s for s in spans if s.name == "chat goalrail/offline-writer"]
    assert len(chat) == 1 and chat[0].service == "executor"
    assert chat[0].attributes["gen_ai.operation.name"] == "chat"
    assert chat[0].attributes["gen_ai.request.model"] == "goalrail/offline-writer"
    assert chat[0].attributes["gen_ai.usage.output_tokens"] > 0
    tools = {s.attributes["gen_ai.tool.name"] for s in spans if s.name.startswith("execute_tool ")}
    assert tools == {"sales.get_figures", "crm.top_accounts", "reports.publish"}
    # a service's event is consumed under the span that published it: the hop reads as one link
    by_id = {s.span_id: s for s in spans}
    hops = [s for s in spans if s.kind == "CONSUMER" and s.service in {"router", "executor"}]
    assert hops and all(by_id[s.parent_span_id].kind == "PRODUCER" for s in hops)
    assert all(by_id[s.parent_span_id].name == s.name.replace(" process", " publish") for s in hops)
    assert {by_id[s.parent_span_id].service for s in hops} == {"planner", "router", "executor"}
    consumers = {(s.service, s.name) for s in spans if s.kind == "CONSUMER"}
    assert ("planner", "goals.submitted process") in consumers or any(
        svc == "planner" and "goals.submitted" in name for svc, name in consumers
    )


def _items(payload):
    return payload["reports"] if isinstance(payload, dict) else payload
