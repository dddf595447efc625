"""The benchmark's arithmetic and its report, on synthetic numbers (no broker)."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from shared.embedded.bench import (
    BenchReport,
    RunStats,
    Sample,
    kafka_hops,
    overhead_per_step_ms,
    overheads,
    peak_rss_mb,
    percentile,
    run_bounded,
    run_stats,
)


def rendered(report: BenchReport) -> str:
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(report.render())
    return console.export_text()


def report(**changes) -> BenchReport:
    fields = dict(
        goals=4,
        concurrency=2,
        steps=5,
        hops=18,
        goalrail=RunStats(latencies_ms=(400.0, 500.0, 600.0), wall_s=2.0, failures=1),
        floor=RunStats(latencies_ms=(180.0, 200.0, 220.0, 240.0), wall_s=0.5),
        overhead_per_step_ms=(70.0, 80.0, 90.0),
        peak_rss_mb={"planner": 71.4, "executor": 273.0},
    )
    return BenchReport(**{**fields, **changes})


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


def test_report_ratios_compare_goalrail_with_the_floor():
    bench = report()
    assert bench.latency_ratio == pytest.approx(500 / 210)  # floor p50 of four values is 210
    assert bench.throughput_ratio == pytest.approx(1.5 / 8.0)
    assert bench.overhead_p50_ms == 80.0
    assert bench.failures == 1


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


def test_report_without_completed_goals_renders_dashes():
    text = rendered(report(goalrail=RunStats((), 1.0, failures=4), overhead_per_step_ms=(), peak_rss_mb={}))
    assert "—" in text and "peak RSS" not in text


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
