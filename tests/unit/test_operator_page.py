"""The operator page's pure parts: step states from audit records (in any arrival order), the
plan graph and the KPI charts as SVG."""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree import ElementTree

import httpx

from services.auditor.audit import AuditRecord
from services.auditor.http import create_api
from services.auditor.kpis import ProcessKpis
from services.auditor.operator_page import kpi_svg, layers, plan_svg, plan_view
from tests.factories import filled_audit_store  # noqa: F401 (a fixture)

SVG = "{http://www.w3.org/2000/svg}"
PLAN = {
    "plan_id": "g:plan", "source": "playbook:pay-invoice",
    "steps": [
        {"id": "fetch", "task_type": "extract", "tool": "erp.invoice", "depends_on": []},
        {"id": "check", "task_type": "extract", "tool": "erp.vendor", "depends_on": []},
        {"id": "pay", "task_type": "act", "tool": "bank.pay", "depends_on": ["fetch", "check"],
         "needs_approval": True},
        {"id": "notify", "task_type": "act", "tool": "mail.send", "depends_on": ["pay"]},
    ],
}


def records(*events: tuple[str, dict]) -> list[AuditRecord]:
    out = []
    for seq, (kind, body) in enumerate(events, start=1):
        out.append(AuditRecord(
            event_id=f"e{seq}", goal_id="g", seq=seq, event_type=f"goalrail.{kind}", source="test",
            time=datetime(2026, 1, 1, tzinfo=UTC), event={"type": f"goalrail.{kind}", **body},
            prev_hash="0", hash="0",
        ))
    return out


def step(step_id: str, attempt: int = 1) -> dict:
    return {"step": {"id": step_id}, "attempt": attempt}


def result(step_id: str, attempt: int = 1) -> dict:
    return {"step_id": step_id, "attempt": attempt}


def test_states_follow_the_steps_and_an_approval():
    view = plan_view(records(
        ("plan.created", {"plan": PLAN}),
        ("step.ready", step("fetch")), ("step.ready", step("check")),
        ("step.dispatched", {**step("fetch"), "binding": {"kind": "tool", "tool": "erp.invoice"}}),
        ("step.succeeded", result("fetch")),
        ("step.dispatched", step("check")), ("step.succeeded", result("check")),
        ("step.ready", step("pay")), ("approval.requested", step("pay")),
    ))
    assert view["step_states"] == {"fetch": "succeeded", "check": "succeeded", "pay": "awaiting_approval",
                                   "notify": "pending"}
    assert view["bindings"] == {"fetch": "tool erp.invoice"}


def test_a_result_stored_before_its_dispatch_still_wins():
    # the auditor reads each topic on its own: records need not be in causal order
    view = plan_view(records(
        ("plan.created", {"plan": PLAN}),
        ("step.succeeded", result("fetch")), ("step.ready", step("fetch")), ("step.dispatched", step("fetch")),
        ("approval.decided", {**result("pay"), "decision": "approved"}), ("approval.requested", step("pay")),
    ))
    assert view["step_states"]["fetch"] == "succeeded"
    assert view["step_states"]["pay"] == "ready"  # approved, not dispatched yet


def test_a_retry_starts_the_step_over_and_a_rejection_sticks():
    view = plan_view(records(
        ("plan.created", {"plan": PLAN}),
        ("step.ready", step("fetch")), ("step.failed", result("fetch")), ("step.ready", step("fetch", 2)),
        ("approval.requested", step("pay")), ("approval.decided", {**result("pay"), "decision": "rejected"}),
        ("step.failed", result("pay")),  # the router fails a rejected step
        ("plan.finished", {"step_states": {"fetch": "running", "pay": "running", "check": "succeeded"}}),
    ))
    assert view["step_states"] == {"fetch": "running", "check": "succeeded", "pay": "rejected",
                                   "notify": "pending"}
    assert view["attempts"]["fetch"] == 2


def test_no_plan_yet():
    view = plan_view(records(("goal.submitted", {"goal": {"text": "x"}})))
    assert view == {"plan": None, "step_states": {}, "attempts": {}, "bindings": {}}
    assert 'data-testid="plan-svg"' in plan_svg(view) and "no plan yet" in plan_svg(view)


def test_layers_are_longest_dependency_paths():
    assert layers(PLAN["steps"]) == {"fetch": 0, "check": 0, "pay": 1, "notify": 2}


def test_plan_svg_has_a_box_per_step_and_an_arrow_per_dependency():
    view = {"plan": PLAN, "step_states": {"fetch": "succeeded", "check": "failed", "pay": "awaiting_approval"}}
    root = ElementTree.fromstring(plan_svg(view))
    boxes = {g.get("data-step"): g.get("class") for g in root.iter(f"{SVG}g")}
    assert boxes == {"fetch": "step state-succeeded", "check": "step state-failed",
                     "pay": "step state-awaiting_approval", "notify": "step state-pending"}
    edges = {(p.get("data-from"), p.get("data-to")) for p in root.iter(f"{SVG}path") if p.get("class") == "edge"}
    assert edges == {("fetch", "pay"), ("check", "pay"), ("pay", "notify")}


def test_plan_svg_escapes_what_it_shows():
    plan = {**PLAN, "source": "model:<script>", "steps": [{"id": "a", "task_type": "act", "tool": "x&<y>"}]}
    svg = plan_svg({"plan": plan, "step_states": {}})
    ElementTree.fromstring(svg)  # well-formed
    assert "<script>" not in svg and "x&amp;&lt;y&gt;" in svg


def kpis(process: str, **fields) -> ProcessKpis:
    base = dict(goals=2, finished=2, completed=2, failed=0, escalated=0, success_rate=1.0, escalation_rate=0.0,
                retry_rate=0.0, mean_cycle_time_s=1.5, median_cycle_time_s=1.5, cost_per_goal_usd=0.0,
                steps_per_goal=4.0, manual_baseline_minutes=None, reduction_pct=None)
    return ProcessKpis(process=process, **{**base, **fields})


def test_kpi_charts_compare_old_and_new_cycle_times_and_show_rates():
    svg = kpi_svg([kpis("playbook:sales", manual_baseline_minutes=480.0, reduction_pct=99.9),
                   kpis("model:x", success_rate=0.5, escalation_rate=0.5)])
    root = ElementTree.fromstring(f"<div>{svg}</div>")
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    cycle = {(b.get("data-process"), b.get("data-series")): float(b.get("width")) for b in bars
             if "Goalrail" in b.get("data-series") or "manual" in b.get("data-series")}
    assert cycle[("playbook:sales", "old (manual)")] == 360.0
    assert 0 < cycle[("playbook:sales", "new (Goalrail)")] < 5  # tiny next to 8 hours, still visible
    assert ("model:x", "old (manual)") not in cycle  # no baseline, no old bar
    rates = {(b.get("data-process"), b.get("data-series")): float(b.get("width")) for b in bars
             if b.get("data-series") in ("success", "escalation")}
    assert rates[("model:x", "success")] == rates[("model:x", "escalation")] == 180.0


def test_no_kpis_yet():
    assert "no goals yet" in kpi_svg([])


async def test_page_and_graph_routes_on_the_auditor_api(filled_audit_store):
    api = create_api(filled_audit_store, {"quarterly-sales-report": 480.0})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://auditor") as http:
        for path in ("/", "/ui"):
            page = await http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'data-testid="goals-table"' in page.text and "<script src" not in page.text
        view = (await http.get("/goals/goal-1/plan")).json()
        assert view["goal_id"] == "goal-1" and set(view["step_states"]) == {s["id"] for s in view["plan"]["steps"]}
        graph = await http.get("/goals/goal-1/plan.svg")
        assert graph.headers["content-type"].startswith("image/svg+xml")
        ElementTree.fromstring(graph.text)
        assert (await http.get("/goals/nope/plan.svg")).status_code == 404
        charts = await http.get("/ui/kpis.svg")
        assert 'data-testid="kpi-cycle-time"' in charts.text and 'class="bar"' in charts.text
