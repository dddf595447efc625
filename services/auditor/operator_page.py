"""The operator page: goals and their status, one goal's plan as a graph of step states, pending
approvals to decide, and KPI charts — one self-contained HTML page served by the auditor.

The page works offline (no CDN: inline CSS and JS that fetch the auditor's JSON API). The
graphs are drawn here, server-side, as inline SVG: the plan graph from the goal's audit records
(`GET /goals/{id}/plan.svg`, JSON at `/goals/{id}/plan`) and the KPI bars from the process KPIs
(`GET /ui/kpis.svg`). The drawing and the step-state fold are pure; the router at the bottom
does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from services.auditor.audit import AuditRecord
from services.auditor.kpis import KPI_EVENT_TYPES, ProcessKpis, process_kpis, summarize_goals
from services.auditor.store import AuditStore

PAGE = Path(__file__).parent / "operator" / "page.html"
SVG_TYPE = "image/svg+xml"

STEP_STATES = ("pending", "ready", "awaiting_approval", "running", "succeeded", "failed", "rejected", "skipped")
"""pending: not released yet; ready: released by the planner, not yet routed; awaiting_approval:
held by the router for an operator; running: dispatched to the executor; rejected: an operator
said no; skipped: the plan ended without it on purpose."""

# How far along its attempt each event puts a step. The auditor reads every topic on its own,
# so a step's records need not arrive in causal order (a result can be stored before its
# dispatch): the state is the furthest one reached in the latest attempt, not the last record.
# A rejection outranks the step failure the router reports for it.
_RANK = {"ready": 1, "awaiting_approval": 2, "approved": 3, "running": 3, "succeeded": 4, "failed": 4, "rejected": 5}
_STEP_EVENT_STATE = {
    "goalrail.step.ready": "ready",
    "goalrail.step.dispatched": "running",
    "goalrail.step.succeeded": "succeeded",
    "goalrail.step.failed": "failed",
}
_APPROVAL_REQUESTED = "goalrail.approval.requested"
_APPROVAL_DECIDED = "goalrail.approval.decided"


# ---------------------------------------------------------------- step states (pure)


def _step_id(body: Mapping[str, Any]) -> str | None:
    return body.get("step_id") or (body.get("step") or {}).get("id")


def plan_view(records: Iterable[AuditRecord]) -> dict[str, Any]:
    """The goal's current plan (the last one made; a replan revises it) and each step's state."""
    plan: dict[str, Any] | None = None
    reached: dict[str, tuple[int, int, str]] = {}  # step -> (attempt, rank, state)
    bindings: dict[str, str] = {}
    finished: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r.seq):
        body, kind = record.event, record.event_type
        if kind == "goalrail.plan.created":
            plan = body.get("plan")
            continue
        if kind == "goalrail.plan.finished":
            finished = dict(body.get("step_states") or {})
            continue
        if kind == "goalrail.goal.action":  # an operator's retry: the plan runs again
            finished = {}
            continue
        if kind in _STEP_EVENT_STATE:
            state = _STEP_EVENT_STATE[kind]
        elif kind == _APPROVAL_REQUESTED:
            state = "awaiting_approval"
        elif kind == _APPROVAL_DECIDED:
            state = "rejected" if body.get("decision") == "rejected" else "approved"
        else:
            continue
        step = _step_id(body)
        if not step:
            continue
        current = reached.get(step, (1, 0, "pending"))
        attempt = int(body.get("attempt") or current[0])
        if (attempt, _RANK[state]) >= current[:2]:
            reached[step] = (attempt, _RANK[state], state)
        binding = body.get("binding") or {}
        if binding:
            bindings[step] = f"{binding.get('kind')} {binding.get('tool') or binding.get('model')}"
    steps = (plan or {}).get("steps") or []
    states: dict[str, str] = {}
    for step in steps:
        state = reached.get(step["id"], (1, 0, "pending"))[2]
        if state == "approved":  # approved, the router has not dispatched it yet
            state = "ready"
        # the planner's final word, except that it does not know a step was rejected
        if step["id"] in finished and state != "rejected":
            state = finished[step["id"]]
        states[step["id"]] = state if state in STEP_STATES else "pending"
    return {
        "plan": plan,
        "step_states": states,
        "attempts": {s["id"]: reached[s["id"]][0] for s in steps if s["id"] in reached},
        "bindings": {s["id"]: bindings[s["id"]] for s in steps if s["id"] in bindings},
    }


# ---------------------------------------------------------------- SVG drawing (pure)

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 58, 70, 22, 16
STATE_COLOURS = {
    "pending": ("#f1f3f5", "#adb5bd"),
    "ready": ("#e7f5ff", "#74c0fc"),
    "awaiting_approval": ("#fff3bf", "#f59f00"),
    "running": ("#d0ebff", "#1c7ed6"),
    "succeeded": ("#d3f9d8", "#2f9e44"),
    "failed": ("#ffe3e3", "#e03131"),
    "rejected": ("#ffe3e3", "#c92a2a"),
    "skipped": ("#f8f9fa", "#ced4da"),
}


def _clip(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def layers(steps: list[dict[str, Any]]) -> dict[str, int]:
    """Each step's column: the length of the longest dependency path that leads to it."""
    known = {s["id"] for s in steps}
    deps = {s["id"]: [d for d in s.get("depends_on") or [] if d in known] for s in steps}
    depth: dict[str, int] = {}

    def visit(step: str, seen: frozenset[str]) -> int:
        if step not in depth:
            # a cycle cannot pass the planner's validation; guard anyway instead of recursing forever
            depth[step] = 1 + max((visit(d, seen | {step}) for d in deps[step] if d not in seen), default=-1)
        return depth[step]

    for s in steps:
        visit(s["id"], frozenset())
    return depth


def plan_svg(view: Mapping[str, Any]) -> str:
    """The plan as a left-to-right DAG: one box per step coloured by its state, an arrow per
    dependency."""
    plan = view.get("plan")
    if not plan or not plan.get("steps"):
        return _message_svg("no plan yet", testid="plan-svg")
    steps: list[dict[str, Any]] = plan["steps"]
    states, bindings = view.get("step_states") or {}, view.get("bindings") or {}
    column = layers(steps)
    rows: dict[int, int] = {}
    where: dict[str, tuple[int, int]] = {}
    for step in steps:
        col = column[step["id"]]
        row = rows.get(col, 0)
        rows[col] = row + 1
        where[step["id"]] = (PAD + col * (BOX_W + GAP_X), PAD + 24 + row * (BOX_H + GAP_Y))
    width = PAD * 2 + (max(column.values()) + 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + 24 + max(rows.values()) * (BOX_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" data-testid="plan-svg" class="plan" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="plan">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#868e96"/></marker></defs>',
        f'<text x="{PAD}" y="{PAD + 8}" class="caption" font-size="12" fill="#495057">'
        f'{escape(str(plan.get("source", "")))} · {len(steps)} steps</text>',
    ]
    for step in steps:
        x2, y2 = where[step["id"]]
        for dep in step.get("depends_on") or []:
            if dep not in where:
                continue
            x1, y1 = where[dep]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            mid = (sx + ex) / 2
            parts.append(
                f'<path class="edge" data-testid="edge" data-from="{escape(dep)}" data-to="{escape(step["id"])}" '
                f'd="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}" fill="none" stroke="#868e96" '
                f'stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    for step in steps:
        x, y = where[step["id"]]
        state = states.get(step["id"], "pending")
        fill, stroke = STATE_COLOURS.get(state, STATE_COLOURS["pending"])
        used = bindings.get(step["id"]) or (f"tool {step['tool']}" if step.get("tool") else step.get("task_type", ""))
        approval = " · needs approval" if step.get("needs_approval") and state != "awaiting_approval" else ""
        parts.append(
            f'<g class="step state-{state}" data-testid="step-{escape(step["id"])}" data-step="{escape(step["id"])}" '
            f'data-state="{state}"><title>{escape(step["id"])}: {state}{approval}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="2"/>'
            f'<text x="{x + 10}" y="{y + 19}" font-size="13" font-weight="600" fill="#212529">'
            f'{escape(_clip(step["id"]))}</text>'
            f'<text x="{x + 10}" y="{y + 35}" font-size="11" fill="#495057">{escape(_clip(str(used), 30))}</text>'
            f'<text x="{x + 10}" y="{y + 50}" font-size="11" fill="{stroke}" class="state-label">'
            f'{state.replace("_", " ")}{escape(approval)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _message_svg(message: str, testid: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" data-testid="{testid}" width="320" height="40" '
        f'viewBox="0 0 320 40"><text x="8" y="24" font-size="13" fill="#868e96">{escape(message)}</text></svg>'
    )


def _bar_chart(title: str, testid: str, rows: list[tuple[str, list[tuple[str, float | None, str, str]]]],
               scale_max: float) -> str:
    """Horizontal grouped bars: rows of (label, [(series, value, shown text, colour)])."""
    label_w, bar_w, bar_h, group_gap = 230, 360, 14, 12
    height = 34 + sum(len(series) * (bar_h + 3) + group_gap for _, series in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" data-testid="{testid}" class="chart" width="{label_w + bar_w + 240}" '
        f'height="{height}" viewBox="0 0 {label_w + bar_w + 240} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="16" font-size="13" font-weight="600" fill="#212529">{escape(title)}</text>',
    ]
    y = 30
    for label, series in rows:
        parts.append(f'<text x="4" y="{y + bar_h - 2}" font-size="12" fill="#343a40">{escape(_clip(label, 32))}</text>')
        for name, value, shown, colour in series:
            # a measured value always gets a visible sliver, however small next to the scale
            w = 0.0 if value is None else max(2.0, bar_w * min(value / scale_max, 1.0)) if scale_max else 2.0
            parts.append(
                f'<rect class="bar" data-testid="kpi-bar" data-series="{escape(name)}" data-process="{escape(label)}" '
                f'data-value="{"" if value is None else round(value, 6)}" x="{label_w}" y="{y}" width="{w:.1f}" '
                f'height="{bar_h}" rx="2" fill="{colour}"><title>{escape(label)} · {escape(name)}: {escape(shown)}'
                f'</title></rect>'
                f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 3}" font-size="11" fill="#495057">'
                f'{escape(name)}: {escape(shown)}</text>'
            )
            y += bar_h + 3
        y += group_gap
    parts.append("</svg>")
    return "".join(parts)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


def kpi_svg(kpis: list[ProcessKpis]) -> str:
    """Two charts: cycle time, manual baseline (old) against Goalrail (new), per process; and
    success and escalation rates per process."""
    if not kpis:
        return _message_svg("no goals yet", testid="kpi-empty")
    cycle_rows = []
    for k in kpis:
        old = k.manual_baseline_minutes * 60 if k.manual_baseline_minutes else None
        series = []
        if old is not None:
            series.append(("old (manual)", old, _minutes(old), "#adb5bd"))
        reduction = ""
        if k.reduction_pct is not None:  # seconds against hours rounds to 100%: say so honestly
            reduction = " (>99.9% less)" if k.reduction_pct > 99.9 else f" ({k.reduction_pct:.1f}% less)"
        series.append(("new (Goalrail)", k.mean_cycle_time_s, _minutes(k.mean_cycle_time_s) + reduction, "#1c7ed6"))
        cycle_rows.append((k.process, series))
    scale = max((v for _, s in cycle_rows for _, v, _, _ in s if v is not None), default=0.0)
    rate_rows = [
        (k.process, [("success", k.success_rate, _pct(k.success_rate), "#2f9e44"),
                     ("escalation", k.escalation_rate, _pct(k.escalation_rate), "#f59f00")])
        for k in kpis
    ]
    return (
        _bar_chart("Cycle time per process: old vs new", "kpi-cycle-time", cycle_rows, scale)
        + _bar_chart("Success and escalation rates", "kpi-rates", rate_rows, 1.0)
    )


# ---------------------------------------------------------------- HTTP (I/O)


def operator_router(store: AuditStore, baselines: Mapping[str, float]) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    @router.get("/ui", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        # read per request: small, and an edited page shows on reload
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @router.get("/goals/{goal_id}/plan")
    async def plan(goal_id: str) -> dict[str, Any]:
        return {"goal_id": goal_id, **plan_view(await goal_records_or_404(store, goal_id))}

    @router.get("/goals/{goal_id}/plan.svg")
    async def plan_graph(goal_id: str) -> Response:
        view = plan_view(await goal_records_or_404(store, goal_id))
        return Response(plan_svg(view), media_type=SVG_TYPE, headers={"Cache-Control": "no-store"})

    @router.get("/ui/kpis.svg")
    async def kpi_charts() -> Response:
        goals = summarize_goals(await store.all_records(KPI_EVENT_TYPES))
        return Response(kpi_svg(process_kpis(goals, baselines)), media_type=SVG_TYPE,
                        headers={"Cache-Control": "no-store"})

    return router


async def goal_records_or_404(store: AuditStore, goal_id: str) -> list[AuditRecord]:
    """A goal's audit records; 404 when there are none (shared with the API in http.py)."""
    records = await store.records(goal_id)
    if not records:
        raise HTTPException(status_code=404, detail=f"no audit records for goal {goal_id!r}")
    return records
