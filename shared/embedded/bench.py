"""`goalrail bench`: the embedded stack measured in one run, phase by phase.

- fast path: goals of the five no-op steps (no-op tools, the offline model) at 1, 8 and 64 in
  flight, each beside the floor: as many messages relayed through the same number of Kafka hops
  with plain aiokafka on the same broker at the same concurrency. The chain does no work, so this
  measures Goalrail itself: validation, stores, routing, the audit chain and the hops;
- slow steps: goals of five noop.sleep steps, all submitted at once: do waiting goals overlap?
- growth: the fast path at 8 in flight again after finished goals were written straight into
  every service's store: does an event cost more when the store is full?
- the peak RSS of every process after all phases.

The arithmetic and the tables are pure (bench_stats, bench_report, bench_targets); this module
only runs things.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from services.planner.planning import load_playbooks
from shared.bus import ensure_topics
from shared.client import EventStream, GoalrailClient
from shared.embedded.bench_goals import (
    FAST_CHAIN_PLAYBOOK,
    FAST_CHAIN_TEXT,
    REQUESTER,
    SLOW_CHAIN_PLAYBOOK,
    SLOW_CHAIN_TEXT,
    TENANT,
    goal_text,
    slow_goal_input,
)
from shared.embedded.bench_preload import preload
from shared.embedded.bench_report import BenchReport, FastPathPhase, GrowthPhase, SlowStepsPhase, goal_count
from shared.embedded.bench_stats import RunStats, Sample, kafka_hops, overheads, run_stats, steps_of
from shared.embedded.stack import EmbeddedStack, fresh_workdir
from shared.events import GoalCompleted, StepSucceeded, Topic
from shared.settings import Settings
from shared.store import embedded_store_url

Progress = Callable[[str], object]

FLOOR_TOPIC = "bench.floor"
FETCH_MAX_WAIT_MS = 20  # as the services: Tansu answers a fetch only when this wait expires
GOAL_TIMEOUT_S = 60.0
PROGRESS_EVERY = 10  # goals, at least; about ten lines per phase
STEP_RESULTS_GRACE_S = 5.0
GROWTH_CONCURRENCY = 8
MAX_TOOL_SLOTS = 1024  # the settings' upper bound


# --- what a run measures ----------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPlan:
    """The phases of one run; a goal count of 0 skips its phase."""

    fast_goals: Mapping[int, int] = field(default_factory=lambda: {1: 50, 8: 200, 64: 500})  # in flight → goals
    slow_goals: int = 64
    step_ms: int = 500
    preload: int = 10_000
    growth_goals: int = 200
    floor_hops: int | None = None  # default: derived from the chain's steps
    workdir: Path = Path(".goalrail/bench")

    @property
    def tool_slots(self) -> int:
        """Tool calls the executor must allow at once so the limiter never queues a benchmark
        step: one per slow goal, one per fast goal in flight."""
        default = Settings.model_fields["tool_concurrency"].default
        return min(MAX_TOOL_SLOTS, max(default, self.slow_goals, *self.fast_goals, GROWTH_CONCURRENCY))


def stack_env(tool_slots: int) -> dict[str, str]:
    """Settings for the bench's services: `tool_slots` tool calls at once, of one tool too (all
    slow steps call noop.sleep), and at least as many events in flight per service."""
    in_flight = max(Settings.model_fields["max_in_flight"].default, tool_slots)
    return {
        "GOALRAIL_TOOL_CONCURRENCY": str(tool_slots),
        "GOALRAIL_TOOL_CONCURRENCY_PER_TOOL": str(tool_slots),
        "GOALRAIL_MAX_IN_FLIGHT": str(in_flight),
    }


# --- running goals with bounded concurrency ---------------------------------------------------


async def run_bounded(
    label: str, goals: int, concurrency: int, run_one: Callable[[int], Awaitable[Sample]], progress: Progress
) -> tuple[list[Sample], float]:
    """Run goals 0..goals-1 with at most `concurrency` in flight; the samples and the wall time."""
    semaphore = asyncio.Semaphore(concurrency)
    every = max(PROGRESS_EVERY, goals // 10)
    done = 0

    async def bounded(index: int) -> Sample:
        nonlocal done
        async with semaphore:
            sample = await run_one(index)
        done += 1
        if done % every == 0 or done == goals:
            progress(f"  {label}: {done}/{goals} goals done")
        return sample

    started = time.perf_counter()
    samples = await asyncio.gather(*(bounded(index) for index in range(goals)))
    return list(samples), time.perf_counter() - started


# --- Goalrail ---------------------------------------------------------------------------------


async def goalrail_goal(
    client: GoalrailClient, goal_id: str, text: str = FAST_CHAIN_TEXT, goal_input: dict[str, Any] | None = None,
    timeout: float = GOAL_TIMEOUT_S,
) -> Sample:
    """Submit one goal and time it until its outcome arrives."""
    started = time.perf_counter()
    try:
        outcome = await client.submit_and_wait(
            goal_text(text, goal_id), requester=REQUESTER, goal_id=goal_id, input=goal_input, timeout=timeout
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


class GoalrailRun:
    """One client and one step-result listener for every phase of a run; counts the goals the
    services have stored so far."""

    def __init__(self, bootstrap: str, progress: Progress) -> None:
        self.progress = progress
        self.stored_goals = 0
        self.steps = 0  # of the no-op chain, as its warm-up goal reported
        self._client = GoalrailClient(bootstrap, tenant=TENANT)
        self._durations = StepDurations(bootstrap)

    async def __aenter__(self) -> GoalrailRun:
        await self._durations.start()
        try:
            await self._client.start()
            await self._client.watch_outcomes()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._client.stop()
        finally:
            await self._durations.stop()

    async def warm_up(self) -> None:
        """The first goal pays for consumer-group joins and lazy imports; it is not measured."""
        warmup = await goalrail_goal(self._client, "bench-warmup")
        self.stored_goals += 1
        if warmup.latency_ms is None:
            raise RuntimeError("the warm-up goal did not complete: see the service logs")
        self.steps = warmup.steps
        self.progress(f"  warm-up goal done in {warmup.latency_ms:.0f} ms ({warmup.steps} steps)")

    async def fast_path(self, goals: int, concurrency: int, label: str) -> tuple[RunStats, tuple[float, ...]]:
        """The no-op chain's run stats and the overhead per step of each goal."""
        samples, wall_s = await run_bounded(
            "goalrail", goals, concurrency, lambda i: goalrail_goal(self._client, f"bench-{label}-{i:05d}"),
            self.progress,
        )
        self.stored_goals += goals
        await self._durations.wait_for(samples, STEP_RESULTS_GRACE_S)
        return run_stats(samples, wall_s), overheads(samples, self._durations.by_goal)

    async def slow_steps(self, goals: int, step_ms: int, steps: int) -> tuple[RunStats, int]:
        """The slow chain's goals, all submitted at once; their run stats and step count."""
        timeout = GOAL_TIMEOUT_S + 4 * steps * step_ms / 1000
        samples, wall_s = await run_bounded(
            "slow", goals, goals,
            lambda i: goalrail_goal(self._client, f"bench-slow-{i:05d}", SLOW_CHAIN_TEXT, slow_goal_input(step_ms),
                                    timeout),
            self.progress,
        )
        self.stored_goals += goals
        return run_stats(samples, wall_s), steps_of(samples) or steps


# --- the raw-Kafka floor ----------------------------------------------------------------------


class KafkaFloor:
    """Relays a small JSON message `hops` times through one topic with plain aiokafka: a message
    with hop counter k < hops is re-produced as k + 1; consuming hop `hops` ends the goal. Each
    produce→consume is one hop, as between two Goalrail services, with the same fetch wait and
    acks=all. A fetched batch is forwarded concurrently: this is the floor, not a model of a
    service, so nothing is serialised that Kafka does not serialise.

    Each floor needs a topic of its own: its consumer reads from the earliest offset, so on a
    used topic it would relay an earlier run's messages again."""

    def __init__(self, bootstrap: str, hops: int, partitions: int, topic: str = FLOOR_TOPIC) -> None:
        self.bootstrap = bootstrap
        self.hops = hops
        self.partitions = partitions
        self.topic = topic
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        # group-less and from the earliest offset of a topic created just now: nothing is missed
        # while the consumer positions itself
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        self._arrivals: dict[str, asyncio.Future[None]] = {}
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.partitions, [self.topic])
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
            await self._producer.send_and_wait(self.topic, json.dumps(message).encode(), key=record.key)
            return
        arrival = self._arrivals.pop(message["goal_id"], None)
        if arrival and not arrival.done():
            arrival.set_result(None)

    async def goal(self, goal_id: str) -> Sample:
        arrival = self._arrivals[goal_id] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        body = json.dumps({"goal_id": goal_id, "hop": 1, "payload": {"n": 1}}).encode()
        await self._producer.send_and_wait(self.topic, body, key=goal_id.encode())
        try:
            await asyncio.wait_for(arrival, GOAL_TIMEOUT_S)
        except TimeoutError:
            self._arrivals.pop(goal_id, None)
            return Sample(goal_id, None)
        return Sample(goal_id, (time.perf_counter() - started) * 1000, 1)


async def measure_floor(
    bootstrap: str, hops: int, partitions: int, goals: int, concurrency: int, progress: Progress,
    topic: str = FLOOR_TOPIC,
) -> RunStats:
    floor = KafkaFloor(bootstrap, hops, partitions, topic)
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


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process used so far (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def per_process(stack: EmbeddedStack, read: Callable[[int], float | None]) -> dict[str, float]:
    """`read(pid)` of the broker and each running service, by name, where it gave a figure."""
    processes = {"broker": stack.broker.process, **stack.processes}
    figures = {name: read(p.pid) for name, p in processes.items() if p is not None and p.poll() is None}
    return {name: figure for name, figure in figures.items() if figure is not None}


def stack_cpu_s(stack: EmbeddedStack) -> dict[str, float]:
    """CPU seconds used so far by the broker and each service, by name."""
    return per_process(stack, cpu_seconds)


def cpu_used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before.keys() & after.keys()}


def stack_peak_rss_mb(stack: EmbeddedStack) -> dict[str, float]:
    return per_process(stack, peak_rss_mb)


# --- the phases -------------------------------------------------------------------------------


@dataclass
class Phases:
    """The phases of one run against one running stack."""

    plan: BenchPlan
    stack: EmbeddedStack
    run: GoalrailRun
    progress: Progress

    @property
    def hops(self) -> int:
        return self.plan.floor_hops or kafka_hops(self.run.steps)

    async def fast_path(self, goals: int, concurrency: int, label: str) -> FastPathPhase:
        stored = self.run.stored_goals
        self.progress(f"fast path: {goals} goals, {concurrency} in flight, {goal_count(stored)} stored")
        before = stack_cpu_s(self.stack)
        goalrail, overhead = await self.run.fast_path(goals, concurrency, label)
        between = stack_cpu_s(self.stack)
        self.progress(f"floor: {goals} messages relayed through {self.hops} Kafka hops each, {concurrency} in flight")
        floor = await measure_floor(self.stack.bootstrap, self.hops, self.stack.partitions, goals, concurrency,
                                    self.progress, topic=f"{FLOOR_TOPIC}.{label}")
        floor_cpu = cpu_used(between, stack_cpu_s(self.stack))
        return FastPathPhase(goals, concurrency, self.run.steps, self.hops, goalrail, floor, overhead, stored,
                             cpu_s=cpu_used(before, between), floor_broker_cpu_s=floor_cpu.get("broker"))

    async def slow_steps(self) -> SlowStepsPhase:
        plan = self.plan
        steps = len(load_playbooks(Settings().playbooks_dir)[SLOW_CHAIN_PLAYBOOK].steps)
        self.progress(f"slow steps: {plan.slow_goals} goals × {steps} steps × {plan.step_ms} ms, all at once "
                      f"(ideal {steps * plan.step_ms / 1000:.1f}s; {plan.tool_slots} tool calls allowed at once)")
        stats, steps = await self.run.slow_steps(plan.slow_goals, plan.step_ms, steps)
        return SlowStepsPhase(plan.slow_goals, steps, plan.step_ms, plan.tool_slots, stats)

    async def growth(self, empty: FastPathPhase) -> GrowthPhase:
        goals = self.plan.preload
        self.progress(f"preload: {goals:,} finished goals straight into every service's store…")
        playbook = load_playbooks(Settings().playbooks_dir)[FAST_CHAIN_PLAYBOOK]
        preload_s = await preload(embedded_store_url(self.stack.workdir), goals, playbook, self.progress)
        self.run.stored_goals += goals
        preloaded = await self.fast_path(self.plan.growth_goals, empty.concurrency, f"c{empty.concurrency}-preloaded")
        return GrowthPhase(goals, preload_s, empty, preloaded)


async def run_phases(phases: Phases) -> BenchReport:
    plan = phases.plan
    fast = [await phases.fast_path(goals, concurrency, f"c{concurrency}")
            for concurrency, goals in sorted(plan.fast_goals.items()) if goals]
    report = BenchReport(fast=tuple(fast))
    if plan.slow_goals:
        report = replace(report, slow=await phases.slow_steps())
    if plan.preload:
        # its own baseline, right before the preload: the broker keeps every message of the run in
        # memory and costs more as it fills, so a baseline from the start of the run would make
        # the broker's growth look like the store's
        empty = await phases.fast_path(plan.growth_goals, GROWTH_CONCURRENCY, f"c{GROWTH_CONCURRENCY}-before-preload")
        report = replace(report, growth=await phases.growth(empty))
    return report


async def run_bench(plan: BenchPlan = BenchPlan(), progress: Progress = print) -> BenchReport:
    """Start the embedded stack, run every phase of `plan` on it, read the processes' peak
    memory, stop the stack."""
    # noop tools and the offline model need no business API
    stack = EmbeddedStack(fresh_workdir(plan.workdir), with_demo_api=False, extra_env=stack_env(plan.tool_slots))
    try:
        progress("starting the embedded broker and the four services…")
        started = time.perf_counter()
        await stack.start()
        progress(f"stack up in {time.perf_counter() - started:.1f}s on {stack.bootstrap} "
                 f"(logs in {plan.workdir / 'logs'}; {plan.tool_slots} tool calls allowed at once)")
        async with GoalrailRun(stack.bootstrap, progress) as run:
            await run.warm_up()
            report = await run_phases(Phases(plan, stack, run, progress))
        return replace(report, peak_rss_mb=stack_peak_rss_mb(stack))
    finally:
        await stack.stop()
