"""The operator page in a real headless browser (Debian's chromium driven by playwright; `make
browser` installs both): goals with their status, a goal's plan graph with step states, KPI
charts, and approving (or rejecting) a held step from the page until its goal ends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.client import GoalrailClient
from shared.events import GoalCompleted

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # the browser fixture fails and says how to install it
    async_playwright = expect = None

pytestmark = pytest.mark.e2e
if expect is not None:
    expect.set_options(timeout=15_000)  # the page refreshes every 1.5 s; a loaded machine is slower

CHROMIUM = Path("/usr/bin/chromium")
DEMO_GOAL = "Prepare the Q3 sales report for the board"
DEMO_STEPS = {"fetch_figures", "fetch_accounts", "write_summary", "publish_report"}
PLAYBOOKS = Path(__file__).resolve().parents[2] / "shared" / "config" / "playbooks"
# a vendor payment waits for a person before the payment request is raised (tests/e2e/test_approvals.py)
PAYMENT_PLAYBOOK = PLAYBOOKS / "vendor_payment.yaml"
OPERATOR = "operator (web)"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    # Fail, never skip: a missing browser must not look like a passing suite.
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install -y chromium)")
    if async_playwright is None:
        pytest.fail("the playwright package is missing: run `make install` (it is a dev extra)")
    async with async_playwright() as playwright:
        # --no-sandbox: chromium refuses to start as root with its sandbox on
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


class Page:
    """A page of the operator UI, with the script errors it raised."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def testid(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def approval_of(self, goal_id: str) -> Any:
        return self.page.locator(f'[data-testid^="approval-"][data-goal="{goal_id}"]')

    def step(self, step_id: str) -> Any:
        return self.testid("plan-graph").get_by_test_id(f"step-{step_id}")


@pytest.fixture
async def operator_page(browser, shared_stack) -> AsyncIterator[Page]:
    page = Page(await browser.new_page())
    await page.page.goto(f"{shared_stack.stack.auditor_url}/")
    try:
        yield page
    finally:
        await page.page.close()
    assert page.errors == [], page.errors  # the page's script must not throw


def playbook_steps() -> list[dict]:
    return (yaml.safe_load(PAYMENT_PLAYBOOK.read_text()) or {}).get("steps") or []


def held_step() -> str:
    held = [s["id"] for s in playbook_steps() if s.get("needs_approval")]
    assert held, f"{PAYMENT_PLAYBOOK} has no step with needs_approval: nothing to approve on the page"
    return held[0]


async def submit_payment(client: GoalrailClient, amount: int) -> str:
    invoice = f"INV-{uuid.uuid4().hex[:8]}"
    submitted = await client.submit(f"Pay vendor Northwind invoice {invoice}", requester="cfo@acme.example",
                                    input={"amount": amount})
    return submitted.goal_id


async def _until(check, timeout: float = 15, every: float = 0.1):
    """The first truthy result of `check()` within `timeout` seconds (else the last one)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(every)


async def test_goals_table_plan_graph_and_kpi_charts(shared_stack, operator_page):
    stack, page = shared_stack.stack, operator_page
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)
    assert isinstance(outcome, GoalCompleted), outcome
    goal_id = outcome.goal_id

    async with httpx.AsyncClient(base_url=stack.auditor_url, timeout=10) as http:
        async def plan_done() -> dict | None:
            view = (await http.get(f"/goals/{goal_id}/plan")).json()
            return view if set(view["step_states"].values()) == {"succeeded"} else None

        view = await _until(plan_done)
        assert view, (await http.get(f"/goals/{goal_id}/plan")).json()
        assert set(view["step_states"]) == DEMO_STEPS
        assert view["plan"]["source"] == "playbook:quarterly-sales-report"
        svg = await http.get(f"/goals/{goal_id}/plan.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert (await http.get("/goals/no-such-goal/plan")).status_code == 404

    # the goals table refreshes itself: the goal appears without a reload
    await expect(page.testid(f"goal-status-{goal_id}")).to_have_attribute("data-status", "completed")
    row = page.testid(f"goal-row-{goal_id}")
    await expect(row).to_contain_text("playbook:quarterly-sales-report")

    await row.click()  # the plan graph of the clicked goal
    assert f"#goal={goal_id}" in page.page.url
    boxes = page.testid("plan-graph").locator("g.step")
    await expect(boxes).to_have_count(len(DEMO_STEPS))
    for step in DEMO_STEPS:
        await expect(page.step(step)).to_have_class("step state-succeeded")
    # write_summary depends on both fetches, publish_report on write_summary
    edges = {(await e.get_attribute("data-from"), await e.get_attribute("data-to"))
             for e in await page.testid("plan-graph").locator("path.edge").all()}
    assert edges == {("fetch_figures", "write_summary"), ("fetch_accounts", "write_summary"),
                     ("write_summary", "publish_report")}

    cycle = page.testid("kpi-cycle-time").locator('rect.bar[data-process="playbook:quarterly-sales-report"]')
    await expect(cycle).to_have_count(2)
    bars = {await b.get_attribute("data-series"): float(await b.get_attribute("width")) for b in await cycle.all()}
    assert set(bars) == {"old (manual)", "new (Goalrail)"} and all(w > 0 for w in bars.values())
    assert bars["old (manual)"] > bars["new (Goalrail)"]
    rates = page.testid("kpi-rates").locator('rect.bar[data-process="playbook:quarterly-sales-report"]')
    await expect(rates).to_have_count(2)


async def test_approving_a_held_step_on_the_page_completes_the_goal(shared_stack, operator_page):
    stack, page, step = shared_stack.stack, operator_page, held_step()
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        goal_id = await submit_payment(client, 1200)

        # the held step shows up on the page, waiting for a decision
        approval = page.approval_of(goal_id)
        await expect(approval).to_have_count(1, timeout=30_000)
        await expect(approval).to_have_attribute("data-step", step)
        status = page.testid(f"goal-status-{goal_id}")
        await expect(status).to_have_text("awaiting approval")
        await approval.locator(".what").click()  # shows the goal's plan
        await expect(page.step(step)).to_have_attribute("data-state", "awaiting_approval")

        approval_id = (await approval.get_attribute("data-testid")).removeprefix("approval-")
        await page.testid(f"approval-comment-{approval_id}").fill("checked on the page")
        await page.testid(f"approve-{approval_id}").click()

        # the page sees the goal complete, and the client gets the outcome
        await expect(status).not_to_have_attribute("data-status", "running", timeout=60_000)
        outcome = await client.wait_for_outcome(goal_id, timeout=30)
    assert isinstance(outcome, GoalCompleted), outcome
    await expect(status).to_have_attribute("data-status", "completed")
    await expect(page.step(step)).to_have_attribute("data-state", "succeeded")
    await expect(page.testid("plan-graph").locator("g.step")).to_have_count(len(playbook_steps()))
    await expect(approval).to_have_count(0)
    assert outcome.outputs["payment"]["issue_id"]  # the payment request was raised

    async with httpx.AsyncClient(base_url=stack.auditor_url, timeout=10) as http:
        approved = (await http.get("/approvals", params={"status": "approved"})).json()["approvals"]
    [mine] = [a for a in approved if a["approval_id"] == approval_id]
    assert (mine["decided_by"], mine["comment"]) == (OPERATOR, "checked on the page")


async def test_rejecting_a_held_step_on_the_page_fails_the_goal(shared_stack, operator_page):
    stack, page, step = shared_stack.stack, operator_page, held_step()
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        goal_id = await submit_payment(client, 90_000)
        await page.page.goto(f"{stack.auditor_url}/ui#goal={goal_id}")  # the plan shown from the start

        approval = page.approval_of(goal_id)
        await expect(approval).to_have_count(1, timeout=30_000)
        approval_id = (await approval.get_attribute("data-testid")).removeprefix("approval-")
        await page.testid(f"reject-{approval_id}").click()

        await expect(page.testid(f"goal-status-{goal_id}")).to_have_attribute("data-status", "failed", timeout=60_000)
        outcome = await client.wait_for_outcome(goal_id, timeout=30)
    assert not isinstance(outcome, GoalCompleted), outcome
    await expect(page.step(step)).to_have_attribute("data-state", "rejected")
    await expect(approval).to_have_count(0)

    async with httpx.AsyncClient(base_url=stack.auditor_url, timeout=10) as http:
        rejected = (await http.get("/approvals", params={"status": "rejected"})).json()["approvals"]
    assert [a["decided_by"] for a in rejected if a["approval_id"] == approval_id] == [OPERATOR]
