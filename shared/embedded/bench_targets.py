"""The targets a `goalrail bench` run is held to (set for the 2-core development machine), each
checked to PASS, FAIL or not measured (its phase was skipped). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.table import Table

from shared.embedded.bench_report import BenchReport
from shared.embedded.stack import SERVICES


@dataclass(frozen=True)
class Targets:
    slow_ideal_ratio: float = 0.8  # ideal / actual wall time of the slow goals, at least
    throughput_share_at_8: float = 0.5  # of the floor's goals/s at 8 in flight, at least
    latency_multiple_at_8: float = 2.0  # of the floor's p50 at 8 in flight, at most
    goals_per_s_at_64: float = 100.0  # at least
    # preloaded / empty per-hop latency, at most: run-to-run noise on a shared 2-core machine is
    # about ±15 %, so 1.25 flags growth, not noise
    growth_tolerance: float = 1.25
    service_peak_rss_mb: float = 150.0  # per service process, below


@dataclass(frozen=True)
class TargetResult:
    name: str
    required: str
    measured: str
    passed: bool | None  # None: the phase that measures it did not run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "not measured"}[self.passed]


Format = Callable[[float], str]


def at_least(name: str, measured: float | None, limit: float, show: Format, ran: bool = True) -> TargetResult:
    return _checked(name, f"≥ {show(limit)}", measured, ran, show, lambda value: value >= limit)


def at_most(name: str, measured: float | None, limit: float, show: Format, ran: bool = True) -> TargetResult:
    return _checked(name, f"≤ {show(limit)}", measured, ran, show, lambda value: value <= limit)


def below(name: str, measured: float | None, limit: float, show: Format, ran: bool = True) -> TargetResult:
    return _checked(name, f"< {show(limit)}", measured, ran, show, lambda value: value < limit)


def _checked(
    name: str, required: str, measured: float | None, ran: bool, show: Format, holds: Callable[[float], bool]
) -> TargetResult:
    if not ran:
        return TargetResult(name, required, "—", None)
    if measured is None:  # the phase ran, but nothing it measures completed
        return TargetResult(name, required, "—", False)
    return TargetResult(name, required, show(measured), holds(measured))


def _plain(value: float) -> str:
    return f"{value:.2f}"


def _times(value: float) -> str:
    return f"{value:.2f}×"


def _rate(value: float) -> str:
    return f"{value:.0f} goals/s" if value >= 10 else f"{value:.1f} goals/s"


def _megabytes(value: float) -> str:
    return f"{value:.0f} MB"


def check_targets(report: BenchReport, targets: Targets = Targets()) -> list[TargetResult]:
    return [
        *_slow_targets(report, targets),
        *_fast_targets(report, targets),
        _growth_target(report, targets),
        *_memory_targets(report, targets),
    ]


def _slow_targets(report: BenchReport, targets: Targets) -> list[TargetResult]:
    slow = report.slow
    name = "slow steps: ideal / actual wall time"
    if slow is not None:
        name = f"slow steps ({slow.goals} goals × {slow.steps} × {slow.step_ms} ms): ideal / actual wall time"
    return [at_least(name, slow.ideal_ratio if slow else None, targets.slow_ideal_ratio, _plain, slow is not None)]


def _fast_targets(report: BenchReport, targets: Targets) -> list[TargetResult]:
    at_8, at_64 = report.fast_at(8), report.fast_at(64)
    return [
        at_least("fast path at 8 in flight: goals/s ÷ floor's", at_8.throughput_ratio if at_8 else None,
                 targets.throughput_share_at_8, _times, at_8 is not None),
        at_most("fast path at 8 in flight: p50 ÷ floor's p50", at_8.latency_ratio if at_8 else None,
                targets.latency_multiple_at_8, _times, at_8 is not None),
        at_least("fast path at 64 in flight: goals/s",
                 at_64.goalrail.goals_per_s if at_64 and at_64.goalrail.completed else None,
                 targets.goals_per_s_at_64, _rate, at_64 is not None),
    ]


def _growth_target(report: BenchReport, targets: Targets) -> TargetResult:
    growth = report.growth
    name = "growth: latency per hop p50, preloaded ÷ empty"
    if growth is not None:
        name = f"growth: latency per hop p50, {growth.preloaded_goals:,} goals preloaded ÷ empty"
    return at_most(name, growth.per_hop_ratio if growth else None, targets.growth_tolerance, _times, growth is not None)


def _memory_targets(report: BenchReport, targets: Targets) -> list[TargetResult]:
    measured = bool(report.peak_rss_mb)
    return [
        below(f"peak RSS of the {service}", report.peak_rss_mb.get(service), targets.service_peak_rss_mb,
              _megabytes, measured)
        for service in SERVICES
    ]


def missed(results: Sequence[TargetResult]) -> list[TargetResult]:
    return [result for result in results if result.passed is False]


def targets_table(results: Sequence[TargetResult]) -> Table:
    failed = len(missed(results))
    table = Table(
        title="targets (2-core development machine)",
        caption=f"{failed} target(s) missed" if failed else "every measured target met",
    )
    for header in ("target", "required", "measured", ""):
        table.add_column(header, justify="right" if header in ("required", "measured") else "left")
    for result in results:
        style = {True: "green", False: "bold red", None: "dim"}[result.passed]
        table.add_row(result.name, result.required, result.measured, f"[{style}]{result.verdict}[/]")
    return table


def exit_code(report: BenchReport, results: Sequence[TargetResult], check: bool) -> int:
    """1 when the run itself broke (a goal failed or timed out), or with `check` when a target
    was missed; else 0."""
    if report.failures:
        return 1
    return 1 if check and missed(results) else 0
