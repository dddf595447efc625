"""`goalrail demo` and `goalrail up`: the embedded stack for people to watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from rich.console import Console

from shared.client import EventStream, GoalrailClient
from shared.embedded.stack import SERVICES, EmbeddedStack, fresh_workdir
from shared.events import (
    Event,
    EventRejected,
    GoalCompleted,
    GoalFailed,
    PlanCreated,
    PlanFinished,
    StepDispatched,
    StepFailed,
    StepSucceeded,
    Topic,
)
from shared.telemetry.collector import SpanCollector
from shared.telemetry.tracing import setup_tracing
from shared.telemetry.tree import render_tree

PROGRESS_TOPICS = [
    Topic.PLANS_EVENTS.value,
    Topic.STEPS_DISPATCHED.value,
    Topic.STEPS_RESULTS.value,
    Topic.EVENTS_REJECTED.value,
]
TRACE_SERVICES = {"client", *SERVICES}


def describe(event: Event) -> str | None:
    """One progress line for a person watching a goal."""
    if isinstance(event, PlanCreated):
        steps = ", ".join(s.id for s in event.plan.steps)
        return f"planner   plan from {event.plan.source}: {len(event.plan.steps)} steps ({steps})"
    if isinstance(event, StepDispatched):
        target = event.binding.tool or event.binding.model
        return f"router    {event.step.id} → {event.binding.kind} {target}"
    if isinstance(event, StepSucceeded):
        return f"executor  {event.step_id} succeeded in {event.duration_ms:.0f} ms"
    if isinstance(event, StepFailed):
        return f"executor  {event.step_id} failed: {event.error.code} {event.error.message}"
    if isinstance(event, PlanFinished):
        return f"planner   plan {event.status}"
    if isinstance(event, EventRejected):
        return f"rejected  {event.source_topic}: {event.error.message}"
    return None


async def _show_progress(stream: EventStream, goal_ids: set[str], console: Console, started: float) -> None:
    async for received in stream:
        event = received.event
        if event is None or event.goal_id not in goal_ids:
            continue
        line = describe(event)
        if line:
            console.print(f"[dim]{time.perf_counter() - started:6.2f}s[/]  {line}")


async def run_demo(goal: str, timeout: float, workdir: Path, console: Console) -> bool:
    console.rule("[bold]Goalrail demo")
    workdir = fresh_workdir(workdir)
    collector = SpanCollector(sink_path=workdir / "spans.jsonl")
    collector.start()
    stack = EmbeddedStack(workdir, otlp_endpoint=collector.endpoint)
    try:
        with console.status("starting the broker, the demo business API and four services…"):
            started = time.perf_counter()
            await stack.start()
        console.print(
            f"embedded stack up in {time.perf_counter() - started:.1f}s: broker {stack.bootstrap}, "
            f"demo API {stack.demo_api_url}, services {', '.join(SERVICES)} (logs in {workdir / 'logs'})"
        )
        tracer_provider = setup_tracing("client", collector.endpoint)
        outcome = await _submit_and_watch(stack.bootstrap, goal, timeout, tracer_provider, console)
        tracer_provider.force_flush()
        console.rule("[bold]Outcome")
        console.print_json(outcome.model_dump_json())
        if isinstance(outcome, GoalCompleted) and isinstance(outcome.outputs.get("summary"), str):
            console.rule("[bold]Report summary")
            console.print(outcome.outputs["summary"])
        _print_trace(collector, outcome.trace_id, console)
        console.print(
            f"audit trail: goalrail audit show {outcome.goal_id} --workdir {workdir}  ·  "
            f"KPIs: goalrail kpis --workdir {workdir}",
            highlight=False,
        )
        return isinstance(outcome, GoalCompleted)
    finally:
        with console.status("stopping…"):
            await stack.stop()
            collector.stop()


async def _submit_and_watch(
    bootstrap: str, goal: str, timeout: float, tracer_provider: object, console: Console
) -> GoalCompleted | GoalFailed:
    async with GoalrailClient(bootstrap, tenant="acme", tracer_provider=tracer_provider) as client:  # type: ignore[arg-type]
        progress = client.follow(PROGRESS_TOPICS)
        await progress.start()
        await client.watch_outcomes()
        goal_ids: set[str] = set()
        started = time.perf_counter()
        watcher = asyncio.create_task(_show_progress(progress, goal_ids, console, started))
        try:
            submitted = await client.submit(goal, requester="demo@acme.example")
            goal_ids.add(submitted.goal_id)
            console.print(f"[dim]{0:6.2f}s[/]  client    submitted goal {submitted.goal_id}: {goal!r}")
            outcome = await client.wait_for_outcome(submitted.goal_id, timeout)
            await asyncio.sleep(0.3)  # let the last progress lines print before the outcome
            console.print(f"[dim]{time.perf_counter() - started:6.2f}s[/]  auditor   {outcome.type}")
            return outcome
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await progress.stop()


def _print_trace(collector: SpanCollector, trace_id: str | None, console: Console) -> None:
    console.rule(f"[bold]Trace {trace_id}")
    if not trace_id:
        console.print("[red]the outcome carries no trace id[/]")
        return
    try:
        spans = collector.wait_for(
            lambda s: TRACE_SERVICES <= {span.service for span in s}
            and any(span.name.startswith("goals.outcomes") for span in s),
            timeout=10,
            trace_id=trace_id,
        )
    except TimeoutError as exc:
        console.print(f"[yellow]{exc}[/]")
        spans = collector.spans(trace_id)
    console.print(render_tree(spans), highlight=False, markup=False, soft_wrap=True)
    services = sorted({span.service for span in spans})
    console.print(f"{len(spans)} spans from {', '.join(services)}; all spans in {collector.sink_path}")


async def run_until_interrupted(workdir: Path, console: Console) -> None:
    workdir = fresh_workdir(workdir)
    async with EmbeddedStack(workdir) as stack:
        console.print(f"Goalrail is up. Broker: [bold]{stack.bootstrap}[/]  demo API: {stack.demo_api_url}")
        console.print(f"Auditor API (KPIs, audit trail): {stack.auditor_url}/kpis")
        console.print(f'Try: goalrail goal submit "Prepare the Q2 sales report" --wait -b {stack.bootstrap}')
        console.print("Ctrl-C stops everything.")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
