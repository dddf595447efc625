"""`goalrail bench`: N goals of the five-step benchmark chain through the embedded stack, and the
same number of Kafka hops relayed with plain aiokafka on the same broker as the floor.

The chain does no work (no-op tools, the offline model), so what it measures is Goalrail itself:
validation, stores, routing, the audit chain and the Kafka hops between the four services. The
floor shows how much of that the hops alone cost on this broker.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from rich.console import Group, RenderableType
from rich.table import Table

from shared.bus import ensure_topics
from shared.client import EventStream, GoalrailClient
from shared.embedded.stack import EmbeddedStack, fresh_workdir
from shared.events import GoalCompleted, StepSucceeded, Topic

Progress = Callable[[str], object]

GOAL_TEXT = "Run the benchmark chain"  # "benchmark" + "chain" selects playbooks/benchmark_chain.yaml
FLOOR_TOPIC = "bench.floor"
FETCH_MAX_WAIT_MS = 20  # as the services: Tansu answers a fetch only when this wait expires
GOAL_TIMEOUT_S = 60.0
PROGRESS_EVERY = 10
STEP_RESULTS_GRACE_S = 5.0


# --- statistics (pure) ------------------------------------------------------------------------


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


@dataclass(frozen=True)
class BenchReport:
    goals: int
    concurrency: int
    steps: int
    hops: int
    goalrail: RunStats
    floor: RunStats
    overhead_per_step_ms: tuple[float, ...]
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return self.goalrail.failures + self.floor.failures

    @property
    def latency_ratio(self) -> float | None:
        """Goalrail p50 / floor p50: how many times slower than the bare hops."""
        return _ratio(self.goalrail.p50_ms, self.floor.p50_ms)

    @property
    def throughput_ratio(self) -> float | None:
        """Goalrail goals/s / floor goals/s: the share of the bare hops' throughput kept."""
        return _ratio(self.goalrail.goals_per_s, self.floor.goals_per_s)

    @property
    def overhead_p50_ms(self) -> float | None:
        return percentile(self.overhead_per_step_ms, 50) if self.overhead_per_step_ms else None

    @property
    def overhead_p99_ms(self) -> float | None:
        return percentile(self.overhead_per_step_ms, 99) if self.overhead_per_step_ms else None

    def render(self) -> RenderableType:
        return Group(self._results_table(), self._memory_table()) if self.peak_rss_mb else self._results_table()

    def _results_table(self) -> Table:
        table = Table(
            title=f"goalrail bench: {self.goals} goals × {self.steps} steps, concurrency {self.concurrency}",
            caption=f"floor: the same {self.hops} hops per goal, raw aiokafka, same broker\n"
            "overhead per step: (end-to-end − Σ step duration_ms) / steps",
        )
        table.add_column("")
        table.add_column("Goalrail", justify="right")
        table.add_column("raw Kafka floor", justify="right")
        table.add_column("Goalrail / floor", justify="right")
        rail, floor = self.goalrail, self.floor
        table.add_row("goals completed", str(rail.completed), str(floor.completed), "")
        table.add_row("goals failed/timed out", str(rail.failures), str(floor.failures), "")
        table.add_row("goals/s", f"{rail.goals_per_s:.1f}", f"{floor.goals_per_s:.1f}", _times(self.throughput_ratio))
        table.add_row("end-to-end latency p50", _ms(rail.p50_ms), _ms(floor.p50_ms), _times(self.latency_ratio))
        table.add_row(
            "end-to-end latency p99", _ms(rail.p99_ms), _ms(floor.p99_ms), _times(_ratio(rail.p99_ms, floor.p99_ms))
        )
        table.add_row("latency per hop p50", _ms(_per(rail.p50_ms, self.hops)), _ms(_per(floor.p50_ms, self.hops)), "")
        table.add_row("overhead per step p50", _ms(self.overhead_p50_ms), "", "")
        table.add_row("overhead per step p99", _ms(self.overhead_p99_ms), "", "")
        return table

    def _memory_table(self) -> Table:
        table = Table(title="peak RSS per process (VmHWM)")
        table.add_column("process")
        table.add_column("peak RSS", justify="right")
        for name, megabytes in self.peak_rss_mb.items():
            table.add_row(name, f"{megabytes:.0f} MB")
        return table


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _per(value: float | None, count: int) -> float | None:
    return value / count if value is not None else None


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


# --- running goals with bounded concurrency ---------------------------------------------------


class Sample(NamedTuple):
    goal_id: str
    latency_ms: float | None  # None: failed or timed out
    steps: int = 0


async def run_bounded(
    label: str, goals: int, concurrency: int, run_one: Callable[[int], Awaitable[Sample]], progress: Progress
) -> tuple[list[Sample], float]:
    """Run goals 0..goals-1 with at most `concurrency` in flight; the samples and the wall time."""
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def bounded(index: int) -> Sample:
        nonlocal done
        async with semaphore:
            sample = await run_one(index)
        done += 1
        if done % PROGRESS_EVERY == 0 or done == goals:
            progress(f"  {label}: {done}/{goals} goals done")
        return sample

    started = time.perf_counter()
    samples = await asyncio.gather(*(bounded(index) for index in range(goals)))
    return list(samples), time.perf_counter() - started


def run_stats(samples: Iterable[Sample], wall_s: float) -> RunStats:
    samples = list(samples)
    latencies = tuple(s.latency_ms for s in samples if s.latency_ms is not None)
    return RunStats(latencies, wall_s, failures=len(samples) - len(latencies))


def overheads(samples: Iterable[Sample], durations: dict[str, dict[str, float]]) -> tuple[float, ...]:
    """Overhead per step of every completed goal whose step results were all seen."""
    return tuple(
        overhead_per_step_ms(s.latency_ms, durations[s.goal_id].values(), s.steps)
        for s in samples
        if s.latency_ms is not None and s.steps and len(durations.get(s.goal_id, {})) >= s.steps
    )


# --- Goalrail ---------------------------------------------------------------------------------


async def goalrail_goal(client: GoalrailClient, goal_id: str) -> Sample:
    """Submit one benchmark-chain goal and time it until its outcome arrives."""
    started = time.perf_counter()
    try:
        outcome = await client.submit_and_wait(
            f"{GOAL_TEXT} ({goal_id})", requester="bench", goal_id=goal_id, timeout=GOAL_TIMEOUT_S
        )
    except TimeoutError:
        return Sample(goal_id, None)
    if not isinstance(outcome, GoalCompleted):
        return Sample(goal_id, None)
    return Sample(goal_id, (time.perf_counter() - started) * 1000, outcome.steps)


class StepDurations:
    """duration_ms of every StepSucceeded on steps.results, by goal id and step id (a redelivered
    result overwrites, so a step counts once)."""

    def __init__(self, bootstrap: str) -> None:
        self._stream = EventStream(bootstrap, [Topic.STEPS_RESULTS.value], fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        self.by_goal: dict[str, dict[str, float]] = defaultdict(dict)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._stream.start()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for received in self._stream:
            if isinstance(received.event, StepSucceeded):
                self.by_goal[received.event.goal_id][received.event.step_id] = received.event.duration_ms

    async def wait_for(self, samples: Iterable[Sample], timeout: float) -> None:
        """The outcome can overtake this separate consumer: give it a moment to catch up."""
        expected = {s.goal_id: s.steps for s in samples if s.latency_ms is not None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(self.by_goal.get(goal, {})) >= steps for goal, steps in expected.items()):
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.stop()


async def measure_goalrail(
    bootstrap: str, goals: int, concurrency: int, progress: Progress
) -> tuple[RunStats, tuple[float, ...], int]:
    """Goalrail's run stats, overhead per step of each goal, and the chain's step count."""
    durations = StepDurations(bootstrap)
    await durations.start()
    try:
        async with GoalrailClient(bootstrap, tenant="bench") as client:
            await client.watch_outcomes()
            # the first goal pays for consumer-group joins and lazy imports; it is not measured
            warmup = await goalrail_goal(client, "bench-warmup")
            if warmup.latency_ms is None:
                raise RuntimeError("the warm-up goal did not complete: see the service logs")
            progress(f"  warm-up goal done in {warmup.latency_ms:.0f} ms ({warmup.steps} steps)")
            samples, wall_s = await run_bounded(
                "goalrail", goals, concurrency, lambda i: goalrail_goal(client, f"bench-goal-{i:05d}"), progress
            )
        await durations.wait_for(samples, STEP_RESULTS_GRACE_S)
        return run_stats(samples, wall_s), overheads(samples, durations.by_goal), warmup.steps
    finally:
        await durations.stop()


# --- the raw-Kafka floor ----------------------------------------------------------------------


class KafkaFloor:
    """Relays a small JSON message `hops` times through one topic with plain aiokafka: a message
    with hop counter k < hops is re-produced as k + 1; consuming hop `hops` ends the goal. Each
    produce→consume is one hop, as between two Goalrail services, with the same fetch wait and
    acks=all. A fetched batch is forwarded concurrently: this is the floor, not a model of a
    service, so nothing is serialised that Kafka does not serialise."""

    def __init__(self, bootstrap: str, hops: int, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.hops = hops
        self.partitions = partitions
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        # group-less and from the earliest offset of a topic created just now: nothing is missed
        # while the consumer positions itself
        self._consumer = AIOKafkaConsumer(
            FLOOR_TOPIC,
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        self._arrivals: dict[str, asyncio.Future[None]] = {}
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.partitions, [FLOOR_TOPIC])
        await self._producer.start()
        await self._consumer.start()
        self._relay_task = asyncio.create_task(self._relay())

    async def stop(self) -> None:
        if self._relay_task:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        await self._consumer.stop()
        await self._producer.stop()

    async def _relay(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            await asyncio.gather(*(self._forward(record) for records in batches.values() for record in records))

    async def _forward(self, record: ConsumerRecord) -> None:
        message = json.loads(record.value)
        if message["hop"] < self.hops:
            message["hop"] += 1
            await self._producer.send_and_wait(FLOOR_TOPIC, json.dumps(message).encode(), key=record.key)
            return
        arrival = self._arrivals.pop(message["goal_id"], None)
        if arrival and not arrival.done():
            arrival.set_result(None)

    async def goal(self, goal_id: str) -> Sample:
        arrival = self._arrivals[goal_id] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        body = json.dumps({"goal_id": goal_id, "hop": 1, "payload": {"n": 1}}).encode()
        await self._producer.send_and_wait(FLOOR_TOPIC, body, key=goal_id.encode())
        try:
            await asyncio.wait_for(arrival, GOAL_TIMEOUT_S)
        except TimeoutError:
            self._arrivals.pop(goal_id, None)
            return Sample(goal_id, None)
        return Sample(goal_id, (time.perf_counter() - started) * 1000, 1)


async def measure_floor(
    bootstrap: str, hops: int, partitions: int, goals: int, concurrency: int, progress: Progress
) -> RunStats:
    floor = KafkaFloor(bootstrap, hops, partitions)
    await floor.start()
    try:
        warmup = await floor.goal("floor-warmup")
        if warmup.latency_ms is None:
            raise RuntimeError("the floor's warm-up message did not come back")
        samples, wall_s = await run_bounded(
            "floor", goals, concurrency, lambda i: floor.goal(f"floor-goal-{i:05d}"), progress
        )
        return run_stats(samples, wall_s)
    finally:
        await floor.stop()


# --- memory -----------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water mark of resident memory (Linux /proc; psutil has no peak on
    Linux). None where /proc is unavailable or the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # reported in kB
    return None


def stack_peak_rss_mb(stack: EmbeddedStack) -> dict[str, float]:
    processes = {"broker": stack.broker.process, **stack.processes}
    peaks = {name: peak_rss_mb(p.pid) for name, p in processes.items() if p is not None and p.poll() is None}
    return {name: peak for name, peak in peaks.items() if peak is not None}


# --- the whole benchmark ----------------------------------------------------------------------


async def run_bench(
    goals: int = 50,
    concurrency: int = 8,
    progress: Progress = print,
    workdir: Path = Path(".goalrail/bench"),
    floor_hops: int | None = None,
) -> BenchReport:
    """Start the embedded stack, run Goalrail then the floor on its broker, stop the stack."""
    # noop.echo and the offline model need no business API
    stack = EmbeddedStack(fresh_workdir(workdir), with_demo_api=False)
    try:
        progress("starting the embedded broker and the four services…")
        started = time.perf_counter()
        await stack.start()
        progress(f"stack up in {time.perf_counter() - started:.1f}s on {stack.bootstrap} (logs in {workdir / 'logs'})")
        progress(f"Goalrail: {goals} goals, {concurrency} in flight")
        goalrail, overhead, steps = await measure_goalrail(stack.bootstrap, goals, concurrency, progress)
        memory = stack_peak_rss_mb(stack)
        hops = floor_hops or kafka_hops(steps)
        progress(f"floor: {goals} messages relayed through {hops} Kafka hops each, {concurrency} in flight")
        floor = await measure_floor(stack.bootstrap, hops, stack.partitions, goals, concurrency, progress)
    finally:
        await stack.stop()
    return BenchReport(goals, concurrency, steps, hops, goalrail, floor, overhead, memory)
