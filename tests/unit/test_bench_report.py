"""The bench report's slow-step, growth and memory tables, on synthetic numbers (no broker)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console

from shared.embedded.bench_report import BenchReport, FastPathPhase, GrowthPhase, SlowStepsPhase
from shared.embedded.bench_stats import RunStats

FLOOR = RunStats(latencies_ms=(180.0, 200.0, 220.0), wall_s=0.5)


def rendered(report: BenchReport) -> str:
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(report.render())
    return console.export_text()


def rows(text: str, marker: str) -> dict[str, str]:
    """The table rows after the line holding `marker`, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    found: dict[str, str] = {}
    for line in lines[start + 1:]:
        if line.count("│") >= 3:
            found.setdefault(line.split("│")[1].strip(), line)
        elif found and line.startswith("└"):
            break
    return found


def fast(concurrency: int = 8, latencies: tuple[float, ...] = (360.0, 400.0), wall_s: float = 2.0,
         stored: int = 51) -> FastPathPhase:
    return FastPathPhase(goals=len(latencies), concurrency=concurrency, steps=5, hops=18,
                         goalrail=RunStats(latencies, wall_s), floor=FLOOR, overhead_per_step_ms=(50.0,),
                         stored_goals=stored)


def slow(wall_s: float = 3.125, failures: int = 0) -> SlowStepsPhase:
    return SlowStepsPhase(goals=64, steps=5, step_ms=500, tool_slots=64,
                          run=RunStats(latencies_ms=(2600.0, 2700.0, 3000.0), wall_s=wall_s, failures=failures))


def growth(preloaded_latencies: tuple[float, ...] = (450.0, 450.0), preloaded_wall_s: float = 2.5) -> GrowthPhase:
    return GrowthPhase(preloaded_goals=10_000, preload_s=125.0, empty=fast(latencies=(360.0, 360.0)),
                       preloaded=fast(latencies=preloaded_latencies, wall_s=preloaded_wall_s, stored=10_815))


def test_slow_steps_compare_the_wall_time_with_the_steps_in_a_row():
    phase = slow(wall_s=3.125)
    assert phase.ideal_wall_s == 2.5
    assert phase.ideal_ratio == pytest.approx(0.8)


def test_slow_steps_without_a_completed_goal_have_no_ratio():
    phase = SlowStepsPhase(goals=4, steps=5, step_ms=500, tool_slots=64, run=RunStats((), 60.0, failures=4))
    assert phase.ideal_ratio is None and phase.failures == 4


def test_slow_steps_table_shows_the_ideal_the_actual_and_the_tool_slots():
    text = rendered(BenchReport(slow=slow(wall_s=3.125, failures=1)))
    found = rows(text, "slow steps")
    assert "2.50 s" in found["ideal wall time"]
    assert "3.12 s" in found["actual wall time"] or "3.13 s" in found["actual wall time"]
    assert "0.80" in found["ideal / actual"]
    assert "2700.0 ms" in found["end-to-end latency p50"]
    assert "1" in found["goals failed/timed out"]
    assert "64 goals × 5 steps × 500 ms" in text
    assert "64 tool calls at once" in text and "GOALRAIL_TOOL_CONCURRENCY_PER_TOOL" in text


def test_growth_compares_the_cost_of_an_event_before_and_after_the_preload():
    phase = growth(preloaded_latencies=(450.0, 450.0), preloaded_wall_s=2.5)
    assert phase.per_hop_ratio == pytest.approx(1.25)  # 25 ms per hop against 20
    assert phase.per_event_ratio == pytest.approx(1.25)  # 2.5 s against 2.0 s for as many events


def test_growth_table_shows_both_stores_and_the_ratios():
    text = rendered(BenchReport(growth=growth()))
    found = rows(text, "growth")
    assert "51" in found["goals stored before"] and "10,815" in found["goals stored before"]
    assert "20.0 ms" in found["latency per hop p50"] and "25.0 ms" in found["latency per hop p50"]
    assert "1.25×" in found["latency per hop p50"]
    assert "55.6 ms" in found["wall time per event"]  # 2000 ms / (2 goals × 18 hops)
    assert "69.4 ms" in found["wall time per event"] and "1.25×" in found["wall time per event"]
    assert "10,000 finished goals" in text and "125s (80 goals/s)" in text


def test_the_whole_report_has_every_phase_and_the_memory_last():
    report = BenchReport(fast=(fast(1), fast(8), fast(64)), slow=slow(), growth=growth(),
                         peak_rss_mb={"broker": 21.0, "planner": 88.4, "auditor": 97.0})
    text = rendered(report)
    for title in ("1 in flight", "8 in flight", "64 in flight", "slow steps", "growth", "peak RSS"):
        assert title in text
    assert text.index("peak RSS") > text.index("growth") > text.index("slow steps") > text.index("64 in flight")
    assert "88 MB" in text and "97 MB" in text
    assert "51 goals stored before" in text


def test_failures_add_up_over_the_phases_without_counting_the_growth_baseline_twice():
    failing = FastPathPhase(goals=3, concurrency=1, steps=5, hops=18, goalrail=RunStats((1.0,), 1.0, failures=2),
                            floor=RunStats((1.0,), 1.0, failures=1))
    report = BenchReport(fast=(failing, fast()), slow=slow(failures=4), growth=growth())
    assert report.failures == 7


def test_cpu_per_goal_is_shown_per_service_and_for_the_broker_beside_the_floors():
    cpu = {"planner": 0.13, "router": 0.09, "executor": 0.09, "auditor": 0.16, "broker": 0.09}
    phase = replace(fast(latencies=(300.0,) * 20), cpu_s=cpu, floor_broker_cpu_s=0.003)
    assert phase.services_cpu_ms_per_goal == pytest.approx(23.5)  # 0.47 s over 20 goals
    assert phase.cpu_ms_per_goal("broker") == pytest.approx(4.5)
    assert phase.floor_broker_cpu_ms_per_goal == pytest.approx(1.0)  # 3 ms over the floor's 3 goals
    found = rows(rendered(BenchReport(fast=(phase,))), "fast path")
    assert "23.5 ms" in found["CPU per goal: 4 services"]
    assert "planner 6.5 ms" in found["of which"] and "auditor 8.0 ms" in found["of which"]
    assert "4.5 ms" in found["CPU per goal: broker"] and "1.0 ms" in found["CPU per goal: broker"]


def test_growth_compares_the_services_cpu_per_goal_and_shows_the_brokers_apart():
    empty = replace(fast(latencies=(300.0,) * 20), cpu_s={"planner": 0.1, "router": 0.1, "executor": 0.1,
                                                           "auditor": 0.1, "broker": 0.1})
    later = replace(empty, stored_goals=10_815, cpu_s={**empty.cpu_s, "auditor": 0.15, "broker": 0.2})
    phase = GrowthPhase(preloaded_goals=10_000, preload_s=125.0, empty=empty, preloaded=later)
    assert phase.services_cpu_ratio == pytest.approx(1.125)
    found = rows(rendered(BenchReport(growth=phase)), "growth")
    assert "1.12×" in found["CPU per goal: 4 services"] or "1.13×" in found["CPU per goal: 4 services"]
    assert "2.00×" in found["CPU per goal: broker"]
