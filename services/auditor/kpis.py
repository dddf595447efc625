"""Process KPIs from the audit trail. Pure: no I/O.

A goal's *process* is where its plan came from (`playbook:<name>`, `model:<model>`), or
`unplanned` when no plan was made. Rates are shares of finished goals (an outcome was published
or the goal was escalated); cycle times and steps come from completed goals; cost per goal is
over finished goals. The reduction compares the mean cycle time of completed goals with the
manual baseline configured on the playbook (`manual_baseline_minutes`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from services.auditor.audit import AuditRecord

UNPLANNED = "unplanned"
GoalStatus = Literal["running", "completed", "failed", "escalated"]
STEP_EVENTS = ("goalrail.step.dispatched", "goalrail.step.succeeded", "goalrail.step.failed")
KPI_EVENT_TYPES = (
    "goalrail.goal.submitted", "goalrail.plan.created", *STEP_EVENTS,
    "goalrail.goal.completed", "goalrail.goal.failed", "goalrail.goal.escalated",
)
"""The record types the KPIs read (the others need not be loaded)."""


class GoalSummary(BaseModel):
    goal_id: str
    tenant: str
    process: str
    status: GoalStatus
    escalated: bool = False
    submitted_at: datetime
    finished_at: datetime | None = None
    cycle_time_s: float | None = None
    steps: int | None = None
    retries: int = 0
    cost_usd: float = 0.0
    error: str | None = None


class ProcessKpis(BaseModel):
    process: str
    goals: int
    finished: int
    completed: int
    failed: int
    escalated: int
    success_rate: float | None
    escalation_rate: float | None
    retry_rate: float | None
    mean_cycle_time_s: float | None
    median_cycle_time_s: float | None
    cost_per_goal_usd: float | None
    steps_per_goal: float | None
    manual_baseline_minutes: float | None
    reduction_pct: float | None


def summarize_goal(records: list[AuditRecord]) -> GoalSummary:
    """One goal's state from its audit records (any order)."""
    records = sorted(records, key=lambda r: r.seq)
    first = records[0]
    summary = GoalSummary(
        goal_id=first.goal_id, tenant=str(first.event.get("tenant", "")), process=UNPLANNED,
        status="running", submitted_at=first.time,
    )
    attempts: set[tuple[str, int]] = set()
    step_cost = 0.0
    outcome_retries: int | None = None
    for record in records:
        body, kind = record.event, record.event_type
        if kind == "goalrail.goal.submitted":
            summary.submitted_at = record.time
        elif kind == "goalrail.plan.created":
            plan = body.get("plan") or {}
            summary.process = plan.get("source") or UNPLANNED
            summary.steps = len(plan.get("steps") or [])
        elif kind in STEP_EVENTS:
            step = body.get("step_id") or (body.get("step") or {}).get("id")
            attempt = int(body.get("attempt") or 1)
            if attempt > 1 and step:
                attempts.add((step, attempt))
            if kind == "goalrail.step.succeeded":
                step_cost += float((body.get("usage") or {}).get("cost_usd") or 0.0)
        elif kind == "goalrail.goal.completed":
            summary.status = "completed"
            summary.finished_at = record.time
            summary.cycle_time_s = body.get("cycle_time_s")
            summary.steps = body.get("steps", summary.steps)
            outcome_retries = body.get("retries")
            summary.cost_usd = float((body.get("usage") or {}).get("cost_usd") or step_cost)
        elif kind == "goalrail.goal.failed":
            summary.status = "failed"
            summary.finished_at = record.time
            summary.cycle_time_s = body.get("cycle_time_s")
            error = body.get("error") or {}
            summary.error = f"{error.get('code')}: {error.get('message')}"
        elif kind == "goalrail.goal.escalated":
            summary.escalated = True
            if summary.status == "running":
                summary.status = "escalated"
                summary.finished_at = record.time
    if summary.status != "completed":
        summary.cost_usd = step_cost
    summary.retries = outcome_retries if outcome_retries is not None else len(attempts)
    if summary.cycle_time_s is None and summary.finished_at is not None:
        summary.cycle_time_s = (summary.finished_at - summary.submitted_at).total_seconds()
    return summary


def summarize_goals(records: Iterable[AuditRecord]) -> list[GoalSummary]:
    """One summary per goal, oldest goal first."""
    by_goal: dict[str, list[AuditRecord]] = defaultdict(list)
    for record in records:
        by_goal[record.goal_id].append(record)
    return sorted((summarize_goal(r) for r in by_goal.values()), key=lambda g: (g.submitted_at, g.goal_id))


def baseline_for(process: str, baselines: Mapping[str, float]) -> float | None:
    """The manual baseline (minutes) of a process: playbook processes by playbook name."""
    if process in baselines:
        return baselines[process]
    name = process.removeprefix("playbook:")
    return baselines.get(name) if process.startswith("playbook:") else None


def process_kpis(goals: Iterable[GoalSummary], baselines: Mapping[str, float] = {}) -> list[ProcessKpis]:
    """KPIs per process, sorted by process name."""
    by_process: dict[str, list[GoalSummary]] = defaultdict(list)
    for goal in goals:
        by_process[goal.process].append(goal)
    return [_kpis(process, by_process[process], baseline_for(process, baselines)) for process in sorted(by_process)]


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _kpis(process: str, goals: list[GoalSummary], baseline_minutes: float | None) -> ProcessKpis:
    finished = [g for g in goals if g.status != "running"]
    completed = [g for g in finished if g.status == "completed"]
    cycle_times = [g.cycle_time_s for g in completed if g.cycle_time_s is not None]
    mean_cycle = _mean(cycle_times)
    reduction = None
    if baseline_minutes and mean_cycle is not None:
        reduction = (1 - (mean_cycle / 60) / baseline_minutes) * 100
    return ProcessKpis(
        process=process,
        goals=len(goals),
        finished=len(finished),
        completed=len(completed),
        failed=sum(g.status == "failed" for g in finished),
        escalated=sum(g.escalated for g in finished),
        success_rate=_share(len(completed), len(finished)),
        escalation_rate=_share(sum(g.escalated for g in finished), len(finished)),
        retry_rate=_share(sum(g.retries > 0 for g in finished), len(finished)),
        mean_cycle_time_s=mean_cycle,
        median_cycle_time_s=statistics.median(cycle_times) if cycle_times else None,
        cost_per_goal_usd=_mean([g.cost_usd for g in finished]),
        steps_per_goal=_mean([float(g.steps) for g in completed if g.steps is not None]),
        manual_baseline_minutes=baseline_minutes,
        reduction_pct=reduction,
    )
