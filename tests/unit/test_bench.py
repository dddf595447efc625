"""The benchmark's arithmetic and its fast-path report, on synthetic numbers (no broker)."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from shared.embedded.bench import BenchPlan, cpu_seconds, cpu_used, peak_rss_mb, run_bounded, stack_env
from shared.embedded.bench_report import BenchReport, FastPathPhase
from shared.embedded.bench_stats import (
    RunStats,
    Sample,
    kafka_hops,
    overhead_per_step_ms,
    overheads,
    percentile,
    ratio,
    run_stats,
    steps_of,
)


def rendered(report: BenchReport) -> str:
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(report.render())
    return console.export_text()


def phase(**changes) -> FastPathPhase:
    fields = dict(
        goals=4,
        concurrency=2,
        steps=5,
        hops=18,
        goalrail=RunStats(latencies_ms=(400.0, 500.0, 600.0), wall_s=2.0, failures=1),
        floor=RunStats(latencies_ms=(180.0, 200.0, 220.0, 240.0), wall_s=0.5),
        overhead_per_step_ms=(70.0, 80.0, 90.0),
    )
    return FastPathPhase(**{**fields, **changes})


def report(peak_rss_mb: dict | None = None, **changes) -> BenchReport:
    memory = {"planner": 71.4, "executor": 273.0} if peak_rss_mb is None else peak_rss_mb
    return BenchReport(fast=(phase(**changes),), peak_rss_mb=memory)


def test_percentile_interpolates_between_the_nearest_ranks():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 99) == pytest.approx(49.6)
    assert percentile([40.0, 10.0, 30.0, 20.0], 50) == 25.0  # unsorted input, even count
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_overhead_per_step_is_what_the_steps_did_not_spend_working():
    assert overhead_per_step_ms(500.0, [10.0, 20.0, 30.0, 25.0, 15.0], 5) == 80.0


def test_overheads_skip_failed_goals_and_goals_with_missing_step_results():
    samples = [
        Sample("a", 300.0, 3),
        Sample("b", None),
        Sample("c", 600.0, 3),  # only two of its three step results were seen
    ]
    durations = {"a": {"s1": 10.0, "s2": 20.0, "s3": 30.0}, "c": {"s1": 1.0, "s2": 1.0}}
    assert overheads(samples, durations) == (80.0,)


def test_a_chain_of_five_steps_is_eighteen_kafka_hops():
    assert kafka_hops(5) == 18
    assert kafka_hops(1) == 6


def test_run_stats_count_failures_and_goals_per_second():
    stats = run_stats([Sample("a", 100.0, 5), Sample("b", None), Sample("c", 300.0, 5)], wall_s=4.0)
    assert stats.latencies_ms == (100.0, 300.0)
    assert stats.failures == 1
    assert stats.goals_per_s == 0.5
    assert stats.p50_ms == 200.0
    assert stats.p99_ms == pytest.approx(298.0)


def test_run_stats_without_completed_goals_have_no_percentiles():
    stats = RunStats(latencies_ms=(), wall_s=1.0, failures=3)
    assert stats.p50_ms is None and stats.p99_ms is None and stats.goals_per_s == 0.0


def test_run_stats_per_hop_and_per_event():
    stats = RunStats(latencies_ms=(180.0, 360.0), wall_s=3.6)
    assert stats.p50_per_hop_ms(18) == 15.0
    assert stats.wall_ms_per_hop(18) == 100.0  # 3600 ms for 2 goals × 18 hops
    assert RunStats((), 1.0).p50_per_hop_ms(18) is None and RunStats((), 1.0).wall_ms_per_hop(18) is None


def test_ratio_of_unknowns_is_unknown():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(3.0, None) is None and ratio(3.0, 0.0) is None


def test_steps_of_reads_the_completed_goals():
    assert steps_of([Sample("a", None), Sample("b", 10.0, 5)]) == 5
    assert steps_of([Sample("a", None)]) is None


def test_report_ratios_compare_goalrail_with_the_floor():
    bench = phase()
    assert bench.latency_ratio == pytest.approx(500 / 210)  # floor p50 of four values is 210
    assert bench.throughput_ratio == pytest.approx(1.5 / 8.0)
    assert bench.overhead_p50_ms == 80.0
    assert bench.failures == 1
    assert report().failures == 1


def test_report_renders_the_numbers():
    text = rendered(report())
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert "1.5" in rows["goals/s"] and "8.0" in rows["goals/s"] and "0.19×" in rows["goals/s"]
    assert "500.0 ms" in rows["end-to-end latency p50"] and "210.0 ms" in rows["end-to-end latency p50"]
    assert "2.38×" in rows["end-to-end latency p50"]  # floor p50 of four values is 210
    assert "27.8 ms" in rows["latency per hop p50"]  # 500 / 18
    assert "80.0 ms" in rows["overhead per step p50"]
    assert "1" in rows["goals failed/timed out"]
    assert "273 MB" in text and "executor" in text
    assert "18 hops" in text
    assert "2 in flight" in text


def test_report_without_completed_goals_renders_dashes():
    text = rendered(report(goalrail=RunStats((), 1.0, failures=4), overhead_per_step_ms=(), peak_rss_mb={}))
    assert "—" in text and "peak RSS" not in text


def test_the_report_finds_the_fast_path_phase_at_a_concurrency():
    at_8 = phase(concurrency=8)
    bench = BenchReport(fast=(phase(concurrency=1), at_8))
    assert bench.fast_at(8) is at_8 and bench.fast_at(64) is None


def test_run_bounded_keeps_at_most_concurrency_goals_in_flight_and_reports_progress():
    in_flight = peak = 0
    lines: list[str] = []

    async def one(index: int) -> Sample:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return Sample(f"g{index}", float(index), 1)

    samples, _ = asyncio.run(run_bounded("x", 25, 3, one, lines.append))
    assert [s.goal_id for s in samples] == [f"g{i}" for i in range(25)]
    assert peak == 3
    assert lines == ["  x: 10/25 goals done", "  x: 20/25 goals done", "  x: 25/25 goals done"]


def test_peak_rss_of_this_process_is_read_from_proc():
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is in Linux /proc")
    assert peak_rss_mb(os.getpid()) > 1


def test_the_stack_allows_every_slow_goal_a_tool_call_at_once():
    plan = BenchPlan(fast_goals={1: 5, 8: 5, 64: 5}, slow_goals=300)
    assert plan.tool_slots == 300
    env = stack_env(plan.tool_slots)
    assert env["GOALRAIL_TOOL_CONCURRENCY"] == env["GOALRAIL_TOOL_CONCURRENCY_PER_TOOL"] == "300"
    assert env["GOALRAIL_MAX_IN_FLIGHT"] == "300"  # above the default of 256


def test_the_stack_allows_at_least_the_fast_path_concurrency_and_at_most_the_settings_bound():
    assert BenchPlan(fast_goals={1: 5, 64: 5}, slow_goals=0).tool_slots == 64
    assert BenchPlan(slow_goals=5000).tool_slots == 1024
    assert stack_env(64)["GOALRAIL_MAX_IN_FLIGHT"] == "256"  # never below the default


def test_cpu_seconds_of_a_process_grow_while_it_works_and_are_none_when_it_is_gone():
    import os
    import time

    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.03
    assert cpu_seconds(2**22 + 12345) is None  # above Linux's pid limit: no such process
    assert cpu_used({"planner": 1.0, "broker": 2.0}, {"planner": 1.5, "router": 9.0}) == {"planner": 0.5}
