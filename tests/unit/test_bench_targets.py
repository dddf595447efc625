"""The bench's targets: each PASSes, FAILs, or is not measured when its phase was skipped."""

from __future__ import annotations

import io

from rich.console import Console

from shared.embedded.bench_report import BenchReport, FastPathPhase, GrowthPhase, SlowStepsPhase
from shared.embedded.bench_stats import RunStats
from shared.embedded.bench_targets import Targets, check_targets, exit_code, missed, targets_table

FLOOR_AT_8 = RunStats(latencies_ms=(200.0,) * 20, wall_s=1.0)  # 20 goals/s, p50 200 ms
MEMORY_OK = {"broker": 300.0, "planner": 120.0, "router": 80.0, "executor": 149.0, "auditor": 100.0}


def fast(concurrency: int, latency_ms: float, goals_per_s: float, stored: int = 51) -> FastPathPhase:
    goals = 20
    return FastPathPhase(goals=goals, concurrency=concurrency, steps=5, hops=18,
                         goalrail=RunStats((latency_ms,) * goals, wall_s=goals / goals_per_s), floor=FLOOR_AT_8,
                         stored_goals=stored)


def slow(wall_s: float) -> SlowStepsPhase:
    return SlowStepsPhase(goals=64, steps=5, step_ms=500, tool_slots=64, run=RunStats((2600.0,) * 64, wall_s))


def passing(**changes) -> BenchReport:
    at_8 = fast(8, latency_ms=400.0, goals_per_s=10.0)  # 2× the floor's p50, half its goals/s: just in
    fields = dict(
        fast=(fast(1, 250.0, 4.0), at_8, fast(64, 600.0, 100.0)),
        slow=slow(wall_s=3.125),  # 2.5 s ideal: 0.8
        growth=GrowthPhase(10_000, 120.0, at_8, fast(8, latency_ms=500.0, goals_per_s=9.0, stored=10_800)),
        peak_rss_mb=MEMORY_OK,
    )
    return BenchReport(**{**fields, **changes})


def by_start(report: BenchReport, start: str) -> str:
    (verdict,) = [result.verdict for result in check_targets(report) if result.name.startswith(start)]
    return verdict


def test_a_run_on_every_limit_passes_every_target():
    results = check_targets(passing())
    assert [result.verdict for result in results] == ["PASS"] * len(results)
    assert len(results) == 9  # slow, 8 in flight ×2, 64 in flight, growth, four services
    assert missed(results) == []


def test_slow_steps_fail_below_the_ratio():
    assert by_start(passing(slow=slow(wall_s=3.2)), "slow steps") == "FAIL"


def test_the_fast_path_at_8_fails_on_throughput_or_on_latency():
    slow_rail = fast(8, latency_ms=400.0, goals_per_s=9.9)
    assert by_start(passing(fast=(slow_rail,)), "fast path at 8 in flight: goals/s") == "FAIL"
    assert by_start(passing(fast=(slow_rail,)), "fast path at 8 in flight: p50") == "PASS"
    late_rail = fast(8, latency_ms=401.0, goals_per_s=10.0)
    assert by_start(passing(fast=(late_rail,)), "fast path at 8 in flight: p50") == "FAIL"


def test_the_fast_path_at_64_needs_a_hundred_goals_a_second():
    assert by_start(passing(fast=(fast(64, 600.0, 99.0),)), "fast path at 64") == "FAIL"


def test_growth_beyond_the_tolerance_fails():
    at_8 = fast(8, latency_ms=400.0, goals_per_s=10.0)
    grown = GrowthPhase(10_000, 120.0, at_8, fast(8, latency_ms=501.0, goals_per_s=9.0, stored=10_800))
    assert by_start(passing(growth=grown), "growth") == "FAIL"
    assert by_start(passing(), "growth") == "PASS"  # 500 / 400 is the tolerance itself


def test_each_service_must_stay_below_its_memory_limit_but_the_broker_is_not_held_to_it():
    results = check_targets(passing(peak_rss_mb={**MEMORY_OK, "auditor": 150.0}))
    failed = [result.name for result in missed(results)]
    assert failed == ["peak RSS of the auditor"]
    assert not any("broker" in result.name for result in results)


def test_a_phase_that_ran_but_completed_nothing_fails_its_target():
    broken = SlowStepsPhase(goals=64, steps=5, step_ms=500, tool_slots=64, run=RunStats((), 60.0, failures=64))
    assert by_start(passing(slow=broken), "slow steps") == "FAIL"
    broken_64 = FastPathPhase(goals=5, concurrency=64, steps=5, hops=18, goalrail=RunStats((), 1.0, failures=5),
                              floor=FLOOR_AT_8)
    assert by_start(passing(fast=(broken_64,)), "fast path at 64") == "FAIL"


def test_skipped_phases_are_not_measured_and_do_not_fail():
    results = check_targets(BenchReport(fast=(fast(1, 250.0, 4.0),)))
    assert {result.verdict for result in results} == {"not measured"}
    assert missed(results) == []


def test_targets_can_be_set_otherwise():
    results = check_targets(passing(), Targets(goals_per_s_at_64=150.0))
    assert [result.name for result in missed(results)] == ["fast path at 64 in flight: goals/s"]


def test_the_table_shows_each_target_its_limit_the_measure_and_the_verdict():
    console = Console(file=io.StringIO(), width=160, record=True)
    report = passing(fast=(fast(8, 400.0, 10.0), fast(64, 600.0, 42.0)))
    console.print(targets_table(check_targets(report)))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "64 in flight" in line)
    assert "≥ 100 goals/s" in line and "42 goals/s" in line and "FAIL" in line
    line = next(line for line in text.splitlines() if "slow steps" in line)
    assert "64 goals × 5 × 500 ms" in line and "≥ 0.80" in line and "PASS" in line
    assert "1 target(s) missed" in text


def test_only_a_broken_run_exits_1_unless_targets_are_checked():
    missing = passing(fast=(fast(8, 400.0, 10.0), fast(64, 600.0, 42.0)))
    results = check_targets(missing)
    assert exit_code(missing, results, check=False) == 0
    assert exit_code(missing, results, check=True) == 1
    good = passing()
    assert exit_code(good, check_targets(good), check=True) == 0
    broken = passing(slow=SlowStepsPhase(64, 5, 500, 64, RunStats((2600.0,), 3.0, failures=1)))
    assert exit_code(broken, check_targets(broken), check=False) == 1
