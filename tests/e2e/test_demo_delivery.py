"""Issue 4's demo: the Q3 report goal pulls data from the sales system and the CRM, makes a
chart (matplotlib) and a spreadsheet (openpyxl), writes the summary, publishes it and, once an
operator approves, mails it. The proof is read back from the demo SMTP outbox."""

from __future__ import annotations

import asyncio
import contextlib
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook

from shared.client import GoalrailClient
from shared.embedded.demo import DEMO_MAIL_TO
from shared.embedded.demo_api import sales_figures
from shared.events import ApprovalRequested, GoalCompleted, Topic
from shared.tools.catalogue import build_catalogue
from shared.tools.registry import ToolContext

pytestmark = pytest.mark.e2e

DEMO_GOAL = "Prepare the Q3 sales report for the board"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _approve_requests(client: GoalrailClient, stream, goal_id: str, seen: list) -> None:
    async for received in stream:
        event = received.event
        if isinstance(event, ApprovalRequested) and event.goal_id == goal_id:
            seen.append(event)
            await client.decide(event.approval_id, goal_id, True, by="test operator")


async def run_demo_goal(bootstrap: str) -> tuple[GoalCompleted, list]:
    """The demo's goal with mail, approving whatever it asks (as `goalrail demo` does)."""
    async with GoalrailClient(bootstrap, tenant="acme") as client:
        approvals = client.follow([Topic.APPROVALS_REQUESTED.value])
        await approvals.start()
        await client.watch_outcomes()
        seen: list = []
        goal_id = f"goal-delivery-{id(seen):x}"
        approver = asyncio.create_task(_approve_requests(client, approvals, goal_id, seen))
        try:
            await client.submit(DEMO_GOAL, requester="cfo@acme.example", goal_id=goal_id,
                                input={"mail_to": [DEMO_MAIL_TO]})
            outcome = await client.wait_for_outcome(goal_id, timeout=60)
        finally:
            approver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approver
            await approvals.stop()
    assert isinstance(outcome, GoalCompleted), outcome
    return outcome, seen


async def test_demo_goal_mails_the_summary_with_chart_and_spreadsheet(shared_stack):
    stack = shared_stack.stack
    outcome, approvals = await run_demo_goal(stack.bootstrap)

    assert outcome.steps == 7
    # the router held the irreversible step until it was approved
    assert [a.step.id for a in approvals] == ["mail_report"]
    sent = outcome.outputs["mail"]
    summary = outcome.outputs["summary"]
    year = outcome.time.year
    figures = sales_figures("Q3", year)
    assert f"{figures.totals.revenue:,}" in summary

    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        outbox = (await http.get("/outbox/messages")).json()
        accounts = (await http.get("/crm/accounts/top", params={"quarter": "Q3", "year": year, "limit": 3})).json()
    (received,) = [m for m in outbox if m["message_id"] == sent["message_id"]]
    assert Path(received["path"]).parent == stack.outbox_dir

    # the message as the SMTP server received it
    mail = message_from_bytes(Path(received["path"]).read_bytes(), policy=default_policy)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == f"Q3 {year} sales report"
    assert mail["To"] == DEMO_MAIL_TO and mail["Message-ID"] == sent["message_id"]
    body = mail.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")  # SMTP lines end in CRLF
    assert body.strip() == summary.strip()
    for region in figures.regions:
        assert region.region in body and f"{region.revenue:,}" in body

    attachments = {part.get_content_type(): part for part in mail.iter_attachments()}
    assert sorted(attachments) == ["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "image/png"]
    png = attachments["image/png"].get_payload(decode=True)
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert attachments["image/png"].get_filename() == f"Q3-{year}-sales-by-region.png"
    assert png == Path(outcome.outputs["chart"]).read_bytes()

    xlsx = attachments["application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"]
    workbook = load_workbook(BytesIO(xlsx.get_payload(decode=True)))
    assert workbook.sheetnames == ["Regions", "Top accounts"]
    regions = [list(row) for row in workbook["Regions"].iter_rows(values_only=True)]
    assert regions[0] == ["region", "revenue", "target", "previous_quarter_revenue", "deals_closed"]
    assert regions[1:] == [[r.region, r.revenue, r.target, r.previous_quarter_revenue, r.deals_closed]
                           for r in figures.regions]
    top = [list(row) for row in workbook["Top accounts"].iter_rows(values_only=True)]
    assert top[1:] == [[a["customer_id"], a["name"], a["region"], a["revenue"], a["status"]]
                       for a in accounts["accounts"]]

    # delivering the step again (a redelivered dispatch) sends the same Message-ID: still one message
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{stack.demo_api_url}/outbox/deliveries")).json()
        again = await build_catalogue().call(
            "mail.deliver",
            {"to": [DEMO_MAIL_TO], "subject": mail["Subject"], "body": summary,
             "attachments": [{"path": outcome.outputs["chart"]}, {"path": outcome.outputs["spreadsheet"]}]},
            ToolContext(idempotency_key=f"{outcome.goal_id}:mail_report", call_id="again", http=http,
                        config={"smtp_url": stack.smtp_url, "artifacts_dir": str(stack.artifacts_dir)}),
        )
        after = (await http.get(f"{stack.demo_api_url}/outbox/deliveries")).json()
        outbox = (await http.get(f"{stack.demo_api_url}/outbox/messages")).json()
    assert again["message_id"] == sent["message_id"]
    assert after["deliveries"] == before["deliveries"] + 1 and after["messages"] == before["messages"]
    assert len([m for m in outbox if m["message_id"] == sent["message_id"]]) == 1


async def test_without_recipients_the_report_is_not_mailed(shared_stack):
    """The board pack (chart, spreadsheet, mail) is planned only for a goal that names recipients,
    so the plain goal needs no approval (`goalrail goal submit --wait` finishes on its own)."""
    stack = shared_stack.stack
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)
    assert isinstance(outcome, GoalCompleted) and outcome.steps == 4
    assert set(outcome.outputs) == {"report", "summary"}


async def test_crm_set_status_is_idempotent_over_http_and_as_a_tool(shared_stack):
    stack = shared_stack.stack
    async with httpx.AsyncClient(base_url=stack.demo_api_url) as http:
        customers = (await http.get("/crm/customers")).json()
        customer = next(c for c in customers if c["status"] != "at_risk")
        path = f"/crm/customers/{customer['customer_id']}/status"
        change = {"status": "at_risk", "reason": "renewal stalled"}
        first = await http.put(path, json=change, headers={"Idempotency-Key": "e2e:crm:1"})
        again = await http.put(path, json=change, headers={"Idempotency-Key": "e2e:crm:1"})
        assert first.status_code == 200 and again.json() == first.json()
        assert first.json()["history"] == [f"status: {customer['status']} -> at_risk (renewal stalled)"]
        reused = await http.put(path, json={"status": "active"}, headers={"Idempotency-Key": "e2e:crm:1"})
        assert reused.status_code == 409
        assert (await http.put(path, json=change)).status_code == 400  # a write needs its key

        tools = build_catalogue()
        ctx = ToolContext(idempotency_key="e2e:crm:2", call_id="c", http=http,
                          config={"demo_api_url": stack.demo_api_url})
        for _ in range(2):  # a repeated step, and the same status again: nothing new happens
            answer = await tools.call("crm.set_customer_status",
                                      {"customer_id": customer["customer_id"], **change}, ctx)
        assert answer["status"] == "at_risk" and len(answer["history"]) == 1
        current = (await http.get(f"/crm/customers/{customer['customer_id']}")).json()
        assert current == answer
