"""KPIs from a known synthetic audit trail: every number is computed by hand below."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.auditor.audit import AuditRecord, chain
from services.auditor.kpis import process_kpis, summarize_goals
from services.auditor.store import load_baselines
from shared.events import (
    Binding,
    Event,
    GoalCompleted,
    GoalEscalated,
    GoalFailed,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanCreated,
    Step,
    StepSucceeded,
    TypedError,
    Usage,
)
from shared.settings import CONFIG_DIR

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
SALES = "playbook:quarterly-sales-report"
BENCH = "playbook:benchmark-chain"
BASELINES = {"quarterly-sales-report": 480.0, "benchmark-chain": 1.0}


class Goal:
    """Builds one goal's audit records as the auditor would chain them."""

    def __init__(self, goal_id: str, start_s: float = 0.0) -> None:
        self.goal_id = goal_id
        self.start = T0 + timedelta(seconds=start_s)
        self.records: list[AuditRecord] = []
        self.add(GoalSubmitted, 0, goal=GoalSpec(text="Prepare the Q3 sales report", requester="cfo@acme.example"))

    def add(self, cls: type[Event], at_s: float, **fields) -> Goal:
        event = cls(id=f"{self.goal_id}:{len(self.records)}", goal_id=self.goal_id, tenant="acme",
                    time=self.start + timedelta(seconds=at_s), **fields)
        self.records.append(chain(event, self.records[-1] if self.records else None))
        return self

    def plan(self, source: str, steps: int) -> Goal:
        plan = Plan(plan_id=f"{self.goal_id}:plan", source=source,
                    steps=[Step(id=f"s{i}", task_type="extract", tool="noop.echo") for i in range(steps)])
        return self.add(PlanCreated, 0.1, plan=plan, goal_text="Prepare the Q3 sales report")

    def step(self, step_id: str, cost: float, attempt: int = 1) -> Goal:
        return self.add(StepSucceeded, 1, plan_id="p", step_id=step_id, attempt=attempt, output={},
                        binding=Binding(kind="tool", tool="noop.echo", reason="test"), usage=Usage(cost_usd=cost))

    def completed(self, cycle_s: float, steps: int, cost: float, retries: int = 0) -> Goal:
        return self.add(GoalCompleted, cycle_s, outputs={}, cycle_time_s=cycle_s, steps=steps, retries=retries,
                        usage=Usage(cost_usd=cost))

    def failed(self, at_s: float, cycle_s: float | None) -> Goal:
        error = TypedError(code="UPSTREAM_ERROR", message="CRM down")
        return self.add(GoalFailed, at_s, error=error, cycle_time_s=cycle_s)


def synthetic_records() -> list[AuditRecord]:
    goals = [
        Goal("g1").plan(SALES, 4).step("s0", 0.005).completed(60, 4, cost=0.02),
        Goal("g2", 10).plan(SALES, 4).completed(120, 4, cost=0.04, retries=1),
        Goal("g3", 20).plan(SALES, 4).step("s0", 0.01).step("s1", 0.0, attempt=2)
        .add(GoalEscalated, 25, reason="CRM down twice").failed(30, 30),
        Goal("g4", 30).plan(SALES, 4),  # still running
        Goal("g5", 40).plan(BENCH, 5).completed(30, 5, cost=0.0),
        Goal("g6", 50).failed(2.5, None),  # rejected before planning
    ]
    return [record for goal in goals for record in reversed(goal.records)]  # any order


def test_goal_summaries():
    goals = {g.goal_id: g for g in summarize_goals(synthetic_records())}
    assert list(goals) == ["g1", "g2", "g3", "g4", "g5", "g6"]
    g3 = goals["g3"]
    assert (g3.process, g3.status, g3.escalated, g3.retries, g3.cost_usd, g3.cycle_time_s) == (
        SALES, "failed", True, 1, 0.01, 30)
    assert g3.error == "UPSTREAM_ERROR: CRM down"
    assert (goals["g4"].status, goals["g4"].steps, goals["g4"].finished_at) == ("running", 4, None)
    assert (goals["g6"].process, goals["g6"].cycle_time_s) == ("unplanned", 2.5)
    assert goals["g1"].cost_usd == 0.02  # the outcome's total, not the sum of the steps seen


def test_process_kpis_from_known_goals():
    rows = {k.process: k for k in process_kpis(summarize_goals(synthetic_records()), BASELINES)}
    assert list(rows) == [BENCH, SALES, "unplanned"]

    sales = rows[SALES]
    assert (sales.goals, sales.finished, sales.completed, sales.failed, sales.escalated) == (4, 3, 2, 1, 1)
    assert sales.success_rate == pytest.approx(2 / 3)
    assert sales.escalation_rate == pytest.approx(1 / 3)
    assert sales.retry_rate == pytest.approx(2 / 3)  # g2 (outcome says 1 retry) and g3 (attempt 2 seen)
    assert (sales.mean_cycle_time_s, sales.median_cycle_time_s) == (90.0, 90.0)
    assert sales.cost_per_goal_usd == pytest.approx((0.02 + 0.04 + 0.01) / 3)
    assert sales.steps_per_goal == 4.0
    assert sales.manual_baseline_minutes == 480.0
    assert sales.reduction_pct == pytest.approx(99.6875)  # 1.5 min instead of 480

    bench = rows[BENCH]
    assert (bench.goals, bench.success_rate, bench.escalation_rate, bench.retry_rate) == (1, 1.0, 0.0, 0.0)
    assert (bench.mean_cycle_time_s, bench.steps_per_goal, bench.cost_per_goal_usd) == (30.0, 5.0, 0.0)
    assert bench.reduction_pct == pytest.approx(50.0)  # 0.5 min instead of 1

    unplanned = rows["unplanned"]
    assert (unplanned.goals, unplanned.failed, unplanned.success_rate) == (1, 1, 0.0)
    assert (unplanned.mean_cycle_time_s, unplanned.manual_baseline_minutes, unplanned.reduction_pct) == (None, None, None)


def test_no_finished_goals_means_no_rates():
    rows = process_kpis(summarize_goals(Goal("g").plan(SALES, 4).records), BASELINES)
    assert rows[0].goals == 1 and rows[0].success_rate is None and rows[0].cost_per_goal_usd is None


def test_baselines_come_from_the_playbooks():
    assert load_baselines(CONFIG_DIR / "playbooks").items() >= BASELINES.items()
