"""The benchmark's arithmetic: percentiles, the goals of one run, and the hops of one goal. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), interpolating linearly between the two nearest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def overhead_per_step_ms(e2e_ms: float, step_durations_ms: Iterable[float], steps: int) -> float:
    """What Goalrail adds per step: the goal's end-to-end time minus the time its steps worked."""
    return (e2e_ms - sum(step_durations_ms)) / steps


def kafka_hops(steps: int) -> int:
    """Produce→consume hops on the critical path of one goal whose steps run one after another:
    client → planner (goals.submitted), then per step planner → router (steps.ready),
    router → executor (steps.dispatched), executor → planner (steps.results), then
    planner → auditor (plans.events PlanFinished) and auditor → client (goals.outcomes).
    PlanCreated is published in parallel with the first StepReady, so it adds no hop."""
    return 1 + 3 * steps + 2


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is unknown or the denominator is zero."""
    return numerator / denominator if numerator is not None and denominator else None


class Sample(NamedTuple):
    goal_id: str
    latency_ms: float | None  # None: failed or timed out
    steps: int = 0


@dataclass(frozen=True)
class RunStats:
    """One measured run: the latency of each goal that finished, and the wall time of the run."""

    latencies_ms: tuple[float, ...]
    wall_s: float
    failures: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def goals_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latencies_ms, 50) if self.latencies_ms else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99) if self.latencies_ms else None

    def p50_per_hop_ms(self, hops: int) -> float | None:
        """The latency one hop adds to a typical goal."""
        return self.p50_ms / hops if self.p50_ms is not None and hops else None

    def wall_ms_per_hop(self, hops: int) -> float | None:
        """Wall time of the run per hop made: what one event costs the whole system at this
        load, queueing included (the inverse of events per second)."""
        events = self.completed * hops
        return self.wall_s * 1000 / events if events else None


def run_stats(samples: Iterable[Sample], wall_s: float) -> RunStats:
    samples = list(samples)
    latencies = tuple(s.latency_ms for s in samples if s.latency_ms is not None)
    return RunStats(latencies, wall_s, failures=len(samples) - len(latencies))


def overheads(samples: Iterable[Sample], durations: Mapping[str, Mapping[str, float]]) -> tuple[float, ...]:
    """Overhead per step of every completed goal whose step results were all seen."""
    return tuple(
        overhead_per_step_ms(s.latency_ms, durations[s.goal_id].values(), s.steps)
        for s in samples
        if s.latency_ms is not None and s.steps and len(durations.get(s.goal_id, {})) >= s.steps
    )


def steps_of(samples: Iterable[Sample]) -> int | None:
    """The step count the completed goals reported (they all ran the same playbook)."""
    return max((s.steps for s in samples if s.latency_ms is not None), default=None)
