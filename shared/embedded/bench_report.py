"""What one `goalrail bench` run measured, phase by phase, and its rich tables. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table

from shared.embedded.bench_stats import RunStats, percentile, ratio
from shared.embedded.stack import SERVICES

TOOL_SLOT_SETTINGS = "GOALRAIL_TOOL_CONCURRENCY and GOALRAIL_TOOL_CONCURRENCY_PER_TOOL"
TABLE_WIDTH = 84  # at least: a caption wraps to its table's width


@dataclass(frozen=True)
class FastPathPhase:
    """Goals of the no-op chain at one concurrency, and as many messages relayed through the same
    number of hops by raw aiokafka at the same concurrency on the same broker (the floor)."""

    goals: int
    concurrency: int
    steps: int
    hops: int
    goalrail: RunStats
    floor: RunStats
    overhead_per_step_ms: tuple[float, ...] = ()
    stored_goals: int = 0  # goals already in the services' stores when the phase started
    # CPU seconds each process used while Goalrail's goals ran, and the broker's during the floor
    cpu_s: Mapping[str, float] = field(default_factory=dict)
    floor_broker_cpu_s: float | None = None

    def cpu_ms_per_goal(self, *processes: str) -> float | None:
        """CPU time the given processes spent per completed Goalrail goal."""
        if not self.goalrail.completed or not all(p in self.cpu_s for p in processes):
            return None
        return 1000 * sum(self.cpu_s[p] for p in processes) / self.goalrail.completed

    @property
    def services_cpu_ms_per_goal(self) -> float | None:
        return self.cpu_ms_per_goal(*SERVICES)

    @property
    def floor_broker_cpu_ms_per_goal(self) -> float | None:
        if self.floor_broker_cpu_s is None or not self.floor.completed:
            return None
        return 1000 * self.floor_broker_cpu_s / self.floor.completed

    @property
    def failures(self) -> int:
        return self.goalrail.failures + self.floor.failures

    @property
    def latency_ratio(self) -> float | None:
        """Goalrail p50 / floor p50: how many times slower than the bare hops."""
        return ratio(self.goalrail.p50_ms, self.floor.p50_ms)

    @property
    def throughput_ratio(self) -> float | None:
        """Goalrail goals/s / floor goals/s: the share of the bare hops' throughput kept."""
        return ratio(self.goalrail.goals_per_s, self.floor.goals_per_s)

    @property
    def overhead_p50_ms(self) -> float | None:
        return percentile(self.overhead_per_step_ms, 50) if self.overhead_per_step_ms else None

    @property
    def overhead_p99_ms(self) -> float | None:
        return percentile(self.overhead_per_step_ms, 99) if self.overhead_per_step_ms else None

    def table(self) -> Table:
        table = Table(
            title=f"fast path: {self.goals} goals × {self.steps} no-op steps, {self.concurrency} in flight, "
            f"{goal_count(self.stored_goals)} stored before",
            caption=f"floor: the same {self.hops} hops per goal, raw aiokafka, same broker, {self.concurrency} in flight\n"
            "overhead per step: (end-to-end − Σ step duration_ms) / steps",
            min_width=TABLE_WIDTH,
        )
        for header in ("", "Goalrail", "raw Kafka floor", "Goalrail / floor"):
            table.add_column(header, justify="right" if header else "left")
        rail, floor = self.goalrail, self.floor
        table.add_row("goals completed", str(rail.completed), str(floor.completed), "")
        table.add_row("goals failed/timed out", str(rail.failures), str(floor.failures), "")
        table.add_row("goals/s", f"{rail.goals_per_s:.1f}", f"{floor.goals_per_s:.1f}", times(self.throughput_ratio))
        table.add_row("end-to-end latency p50", ms(rail.p50_ms), ms(floor.p50_ms), times(self.latency_ratio))
        table.add_row("end-to-end latency p99", ms(rail.p99_ms), ms(floor.p99_ms), times(ratio(rail.p99_ms, floor.p99_ms)))
        table.add_row("latency per hop p50", ms(rail.p50_per_hop_ms(self.hops)), ms(floor.p50_per_hop_ms(self.hops)), "")
        table.add_row("overhead per step p50", ms(self.overhead_p50_ms), "", "")
        table.add_row("overhead per step p99", ms(self.overhead_p99_ms), "", "")
        if self.cpu_s:
            per_service = ", ".join(f"{name} {ms(self.cpu_ms_per_goal(name))}" for name in SERVICES if name in self.cpu_s)
            table.add_row("CPU per goal: 4 services", ms(self.services_cpu_ms_per_goal), "", "")
            table.add_row("  of which", per_service, "", "")
            broker = self.cpu_ms_per_goal("broker")
            table.add_row("CPU per goal: broker", ms(broker), ms(self.floor_broker_cpu_ms_per_goal),
                          times(ratio(broker, self.floor_broker_cpu_ms_per_goal)))
        return table


@dataclass(frozen=True)
class SlowStepsPhase:
    """Goals whose steps each wait `step_ms` on a tool, all submitted at once: they should wait
    side by side, so the run takes about as long as one goal's steps in a row."""

    goals: int
    steps: int
    step_ms: int
    tool_slots: int  # tool calls the stack's executor allows at once
    run: RunStats

    @property
    def failures(self) -> int:
        return self.run.failures

    @property
    def ideal_wall_s(self) -> float:
        return self.steps * self.step_ms / 1000

    @property
    def ideal_ratio(self) -> float | None:
        """Ideal / actual wall time: 1.0 when Goalrail adds nothing to the waiting."""
        return ratio(self.ideal_wall_s, self.run.wall_s) if self.run.completed else None

    def table(self) -> Table:
        table = Table(
            title=f"slow steps: {self.goals} goals × {self.steps} steps × {self.step_ms} ms, all submitted at once",
            caption=f"each step is one noop.sleep call of {self.step_ms} ms; ideal wall time: steps × step time\n"
            f"the stack allows {self.tool_slots} tool calls at once ({TOOL_SLOT_SETTINGS})",
            min_width=TABLE_WIDTH,
        )
        table.add_column("")
        table.add_column("Goalrail", justify="right")
        run = self.run
        table.add_row("goals completed", str(run.completed))
        table.add_row("goals failed/timed out", str(run.failures))
        table.add_row("ideal wall time", seconds(self.ideal_wall_s))
        table.add_row("actual wall time", seconds(run.wall_s))
        table.add_row("ideal / actual", f"{self.ideal_ratio:.2f}" if self.ideal_ratio is not None else "—")
        table.add_row("end-to-end latency p50", ms(run.p50_ms))
        table.add_row("end-to-end latency p99", ms(run.p99_ms))
        return table


@dataclass(frozen=True)
class GrowthPhase:
    """The fast path at the same concurrency before and after `preloaded_goals` finished goals
    were written into every service's store: does an event cost more when the store is full?"""

    preloaded_goals: int
    preload_s: float
    empty: FastPathPhase
    preloaded: FastPathPhase

    @property
    def failures(self) -> int:
        return self.preloaded.failures  # the empty phase is counted where it was measured

    @property
    def per_hop_ratio(self) -> float | None:
        """Latency per hop p50, preloaded / empty."""
        return ratio(self.preloaded.goalrail.p50_per_hop_ms(self.preloaded.hops),
                     self.empty.goalrail.p50_per_hop_ms(self.empty.hops))

    @property
    def services_cpu_ratio(self) -> float | None:
        """The four services' CPU per goal, after / before the preload (idle polling counts too:
        a slower run polls more per goal)."""
        return ratio(self.preloaded.services_cpu_ms_per_goal, self.empty.services_cpu_ms_per_goal)

    @property
    def per_event_ratio(self) -> float | None:
        """Wall time per event, preloaded / empty."""
        return ratio(self.preloaded.goalrail.wall_ms_per_hop(self.preloaded.hops),
                     self.empty.goalrail.wall_ms_per_hop(self.empty.hops))

    def table(self) -> Table:
        rate = self.preloaded_goals / self.preload_s if self.preload_s > 0 else 0.0
        table = Table(
            title=f"growth: the fast path at {self.preloaded.concurrency} in flight, "
            f"before and after preloading {self.preloaded_goals:,} goals",
            caption=f"preload: {self.preloaded_goals:,} finished goals into every service's store, "
            f"{self.preload_s:.0f}s ({rate:.0f} goals/s)\n"
            "wall time per event: the run's wall time / (goals completed × hops)\n"
            "the two runs back to back: the broker, which keeps the run's messages in memory, is alike",
            min_width=TABLE_WIDTH,
        )
        table.add_column("")
        table.add_column("before preload", justify="right")
        table.add_column("preloaded", justify="right")
        table.add_column("after / before", justify="right")
        before, after = self.empty, self.preloaded
        table.add_row("goals stored before", f"{before.stored_goals:,}", f"{after.stored_goals:,}", "")
        table.add_row("goals/s", f"{before.goalrail.goals_per_s:.1f}", f"{after.goalrail.goals_per_s:.1f}",
                      times(ratio(after.goalrail.goals_per_s, before.goalrail.goals_per_s)))
        table.add_row("end-to-end latency p50", ms(before.goalrail.p50_ms), ms(after.goalrail.p50_ms),
                      times(ratio(after.goalrail.p50_ms, before.goalrail.p50_ms)))
        table.add_row("latency per hop p50", ms(before.goalrail.p50_per_hop_ms(before.hops)),
                      ms(after.goalrail.p50_per_hop_ms(after.hops)), times(self.per_hop_ratio))
        table.add_row("wall time per event", ms(before.goalrail.wall_ms_per_hop(before.hops)),
                      ms(after.goalrail.wall_ms_per_hop(after.hops)), times(self.per_event_ratio))
        table.add_row("overhead per step p50", ms(before.overhead_p50_ms), ms(after.overhead_p50_ms),
                      times(ratio(after.overhead_p50_ms, before.overhead_p50_ms)))
        if before.cpu_s and after.cpu_s:
            table.add_row("CPU per goal: 4 services", ms(before.services_cpu_ms_per_goal),
                          ms(after.services_cpu_ms_per_goal), times(self.services_cpu_ratio))
            table.add_row("CPU per goal: broker", ms(before.cpu_ms_per_goal("broker")),
                          ms(after.cpu_ms_per_goal("broker")),
                          times(ratio(after.cpu_ms_per_goal("broker"), before.cpu_ms_per_goal("broker"))))
        return table


@dataclass(frozen=True)
class BenchReport:
    fast: tuple[FastPathPhase, ...] = ()
    slow: SlowStepsPhase | None = None
    growth: GrowthPhase | None = None
    peak_rss_mb: Mapping[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        phases = [*self.fast, *(p for p in (self.slow, self.growth) if p is not None)]
        return sum(phase.failures for phase in phases)

    def fast_at(self, concurrency: int) -> FastPathPhase | None:
        return next((phase for phase in self.fast if phase.concurrency == concurrency), None)

    def render(self) -> RenderableType:
        tables: list[RenderableType] = [phase.table() for phase in self.fast]
        tables += [phase.table() for phase in (self.slow, self.growth) if phase is not None]
        if self.peak_rss_mb:
            tables.append(memory_table(self.peak_rss_mb))
        return Group(*tables)


def memory_table(peak_rss_mb: Mapping[str, float]) -> Table:
    table = Table(title="peak RSS (VmHWM) after all phases", min_width=TABLE_WIDTH // 2)
    table.add_column("process")
    table.add_column("peak RSS", justify="right")
    for name, megabytes in peak_rss_mb.items():
        table.add_row(name, f"{megabytes:.0f} MB")
    return table


def goal_count(count: int) -> str:
    return f"{count:,} goal" if count == 1 else f"{count:,} goals"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"
