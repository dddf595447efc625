"""`goalrail demo` and `goalrail up`: the embedded stack for people to watch."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from shared.client import EventStream, GoalrailClient
from shared.embedded.stack import SERVICES, EmbeddedStack, fresh_workdir
from shared.events import (
    ApprovalDecided,
    ApprovalRequested,
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
    Topic.APPROVALS_REQUESTED.value,
    Topic.APPROVALS_DECIDED.value,
    Topic.EVENTS_REJECTED.value,
]
TRACE_SERVICES = {"client", *SERVICES}
DEMO_MAIL_TO = "board@acme.example"
DEMO_OPERATOR = "demo operator"


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
    if isinstance(event, ApprovalRequested):
        return f"router    {event.step.id} ({event.step.tool}) waits for approval: {event.reason}"
    if isinstance(event, ApprovalDecided):
        return f"operator  {event.step_id} {event.decision} by {event.decided_by}"
    return None


async def _show_progress(
    stream: EventStream, goal_ids: set[str], console: Console, started: float, client: GoalrailClient
) -> None:
    async for received in stream:
        event = received.event
        if event is None or event.goal_id not in goal_ids:
            continue
        line = describe(event)
        if line:
            console.print(f"[dim]{time.perf_counter() - started:6.2f}s[/]  {line}")
        if isinstance(event, ApprovalRequested):
            # the demo plays the operator; a person decides in the operator page or the CLI
            try:
                await client.decide(event.approval_id, event.goal_id, True, by=DEMO_OPERATOR,
                                    comment="approved by the demo", traceparent=event.traceparent)
            except Exception as exc:  # the goal then waits: say why instead of hanging silently
                console.print(f"[red]could not approve {event.approval_id}: {exc}[/]")


async def run_demo(
    goal: str, timeout: float, workdir: Path, console: Console, mail_to: str | None = DEMO_MAIL_TO
) -> bool:
    """With `mail_to`, the report also goes out by mail (chart and spreadsheet attached) once
    the demo's operator approves it."""
    console.rule("[bold]Goalrail demo")
    _cancel_on_sigterm()
    workdir = fresh_workdir(workdir)
    collector = SpanCollector(sink_path=workdir / "spans.jsonl")
    collector.start()
    stack = EmbeddedStack(workdir, otlp_endpoint=collector.endpoint)
    try:
        with console.status("starting the broker, the demo business API and four services…"):
            started = time.perf_counter()
            try:
                await stack.start()
            except (TimeoutError, RuntimeError) as exc:
                console.print(f"[red]the embedded stack did not start: {exc}[/] (logs in {workdir / 'logs'})")
                return False
        console.print(
            f"embedded stack up in {time.perf_counter() - started:.1f}s: broker {stack.bootstrap}, "
            f"demo API {stack.demo_api_url}, mail outbox {stack.smtp_url}, services {', '.join(SERVICES)} "
            f"(logs in {workdir / 'logs'})"
        )
        tracer_provider = setup_tracing("client", collector.endpoint)
        goal_input = {"mail_to": [mail_to]} if mail_to else {}
        outcome = await _submit_and_watch(stack.bootstrap, goal, timeout, tracer_provider, console, goal_input)
        tracer_provider.force_flush()
        console.rule("[bold]Outcome")
        console.print_json(outcome.model_dump_json())
        if isinstance(outcome, GoalCompleted) and isinstance(outcome.outputs.get("summary"), str):
            console.rule("[bold]Report summary")
            console.print(outcome.outputs["summary"])
        if mail_to:
            await _print_mail(stack, console)
        _print_trace(collector, outcome.trace_id, console)
        console.print(
            f"audit trail: goalrail audit show {outcome.goal_id} --workdir {workdir}  ·  "
            f"KPIs: goalrail kpis --workdir {workdir}",
            highlight=False,
        )
        return isinstance(outcome, GoalCompleted)
    except asyncio.CancelledError:  # SIGTERM (see _cancel_on_sigterm): stop cleanly, report failure
        console.print("[yellow]interrupted: stopping the stack[/]")
        return False
    finally:
        with console.status("stopping…"):
            await stack.stop()
            collector.stop()


async def _submit_and_watch(
    bootstrap: str, goal: str, timeout: float, tracer_provider: object, console: Console,
    goal_input: dict[str, Any] | None = None,
) -> GoalCompleted | GoalFailed:
    async with GoalrailClient(bootstrap, tenant="acme", tracer_provider=tracer_provider) as client:  # type: ignore[arg-type]
        progress = client.follow(PROGRESS_TOPICS)
        await progress.start()
        await client.watch_outcomes()
        goal_ids: set[str] = set()
        started = time.perf_counter()
        watcher = asyncio.create_task(_show_progress(progress, goal_ids, console, started, client))
        try:
            submitted = await client.submit(goal, requester="demo@acme.example", input=goal_input)
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


async def _print_mail(stack: EmbeddedStack, console: Console) -> None:
    """What the demo mail system received: the proof the report went out."""
    console.rule("[bold]Mail outbox")
    async with httpx.AsyncClient() as http:
        messages = (await http.get(f"{stack.demo_api_url}/outbox/messages")).json()
    if not messages:
        console.print(f"[yellow]the SMTP outbox {stack.smtp_url} received no mail[/]")
        return
    for message in messages:
        files = ", ".join(f"{a['filename']} ({a['content_type']}, {a['bytes']:,} bytes)" for a in message["attachments"])
        console.print(
            f"to {', '.join(message['recipients'])}: {message['subject']!r}, {len(message['body'])} characters, "
            f"attached: {files or 'nothing'}\n  message {message['message_id']} in {message['path']}",
            highlight=False,
        )
    console.print(f"chart and spreadsheet as written: {stack.artifacts_dir}", highlight=False)


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


def _cancel_on_sigterm() -> None:
    """SIGTERM (a `timeout`, a supervisor) cancels the run like Ctrl-C does, so the stack's
    processes, which live in sessions of their own, are stopped rather than orphaned."""
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def run_until_interrupted(workdir: Path, console: Console) -> None:
    _cancel_on_sigterm()
    workdir = fresh_workdir(workdir)
    async with EmbeddedStack(workdir) as stack:
        console.print(f"Goalrail is up. Broker: [bold]{stack.bootstrap}[/]  demo API: {stack.demo_api_url}")
        console.print(f"Mail outbox (SMTP): {stack.smtp_url}, messages in {stack.outbox_dir}")
        console.print(f"Auditor API (KPIs, audit trail): {stack.auditor_url}/kpis")
        console.print(f"Operator page (goals, plans, approvals, KPIs): {stack.auditor_url}/")
        console.print(f'Try: goalrail goal submit "Prepare the Q2 sales report" --wait -b {stack.bootstrap}')
        console.print("Ctrl-C stops everything.")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
