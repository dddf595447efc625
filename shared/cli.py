"""`goalrail` — run the embedded stack and the demo, submit goals, follow outcomes, export the
event contract, run a service or the benchmark."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from shared.settings import Settings

app = typer.Typer(help="Goalrail: agentic process automation over Kafka.", no_args_is_help=True)
goal_app = typer.Typer(help="Submit goals.", no_args_is_help=True)
schema_app = typer.Typer(help="The published event contract.", no_args_is_help=True)
service_app = typer.Typer(help="Run one Goalrail service in this process.", no_args_is_help=True)
app.add_typer(goal_app, name="goal")
app.add_typer(schema_app, name="schema")
app.add_typer(service_app, name="service")
from shared.cli_tools import tools_app  # noqa: E402

app.add_typer(tools_app, name="tools")

console = Console()
DEMO_GOAL = "Prepare the Q3 sales report for the board"
Bootstrap = Annotated[
    Optional[str],
    typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers (default: GOALRAIL_KAFKA_BOOTSTRAP)."),
]


def _bootstrap(value: str | None) -> str:
    return value or Settings().kafka_bootstrap


@app.command()
def demo(
    goal: Annotated[str, typer.Option(help="The goal text to submit.")] = DEMO_GOAL,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 60.0,
    workdir: Annotated[Path, typer.Option(help="Where the embedded store, logs and spans go.")] = Path(
        ".goalrail/demo"
    ),
    mail_to: Annotated[str, typer.Option(help="Who gets the report by mail (approved by the demo); '' = no mail.")] = (
        "board@acme.example"
    ),
) -> None:
    """Start the embedded stack, submit a real goal, print its outcome and its trace, stop."""
    from shared.embedded.demo import run_demo

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    ok = asyncio.run(run_demo(goal, timeout, workdir, console, mail_to=mail_to or None))
    raise typer.Exit(0 if ok else 1)


@app.command()
def up(
    workdir: Annotated[Path, typer.Option(help="Where the embedded store and logs go.")] = Path(".goalrail/up"),
) -> None:
    """Run the embedded stack (broker, demo API, four services) until Ctrl-C."""
    from shared.embedded.demo import run_until_interrupted

    asyncio.run(run_until_interrupted(workdir, console))


@goal_app.command("submit")
def goal_submit(
    text: Annotated[str, typer.Argument(help="What should be achieved, in plain words.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the outcome and print it.")] = False,
    bootstrap: Bootstrap = None,
    tenant: Annotated[str, typer.Option(help="Tenant the goal belongs to.")] = "default",
    requester: Annotated[str, typer.Option(help="Who asks.")] = "cli",
    input_json: Annotated[Optional[str], typer.Option("--input", help="Goal input data as JSON.")] = None,
    playbook: Annotated[Optional[str], typer.Option(help="Force a playbook by name.")] = None,
    adapt_playbook: Annotated[
        bool, typer.Option("--adapt-playbook", help="Let the planning model adapt the playbook to the goal.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
) -> None:
    """Publish a GoalSubmitted event (and optionally wait for its outcome)."""
    from shared.client import GoalrailClient

    try:
        data = json.loads(input_json) if input_json else {}
    except ValueError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from exc

    async def submit() -> int:
        async with GoalrailClient(_bootstrap(bootstrap), tenant=tenant) as client:
            if not wait:
                event = await client.submit(
                    text, requester=requester, input=data, playbook=playbook, adapt_playbook=adapt_playbook
                )
                console.print(f"submitted goal [bold]{event.goal_id}[/]")
                return 0
            outcome = await client.submit_and_wait(
                text, requester=requester, input=data, playbook=playbook, timeout=timeout,
                adapt_playbook=adapt_playbook,
            )
            console.print_json(outcome.model_dump_json())
            return 0 if outcome.type == "goalrail.goal.completed" else 1

    raise typer.Exit(asyncio.run(submit()))


@app.command()
def outcomes(
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep printing new outcomes.")] = True,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest outcome.")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Print outcome events (GoalCompleted / GoalFailed) as JSON lines."""
    from shared.client import EventStream
    from shared.events import Topic

    async def stream() -> None:
        events = EventStream(_bootstrap(bootstrap), [Topic.GOALS_OUTCOMES.value], from_beginning)
        await events.start()
        try:
            iterator = events.__aiter__()
            while True:
                try:
                    received = await asyncio.wait_for(iterator.__anext__(), None if follow else 2.0)
                except TimeoutError:
                    return
                print(received.raw.decode(), flush=True)
        finally:
            await events.stop()

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        pass


@schema_app.command("export")
def schema_export(
    out: Annotated[Path, typer.Option(help="Folder for asyncapi.json and the event JSON Schemas.")] = Path(
        "docs/schema"
    ),
) -> None:
    """Write the AsyncAPI 3.0 document (FastStream's generator) and one JSON Schema per event."""
    from shared.asyncapi import export

    for path in export(out):
        console.print(f"wrote {path}")


@service_app.command("run")
def service_run(
    name: Annotated[str, typer.Argument(help="planner, router, executor or auditor.")],
) -> None:
    """Run one service with settings from GOALRAIL_* environment variables."""
    import importlib

    if name not in {"planner", "router", "executor", "auditor"}:
        raise typer.BadParameter(f"unknown service {name!r}")
    module = importlib.import_module(f"services.{name}.app")
    from shared.service import run

    run(module.create_app, name)


@app.command()
def bench(
    goals_at_1: Annotated[
        int, typer.Option(min=0, help="Fast path: goals of the 5 no-op steps run one at a time (0 = skip).")
    ] = 50,
    goals_at_8: Annotated[
        int, typer.Option(min=0, help="Fast path: goals run 8 in flight (0 = skip).")
    ] = 200,
    goals_at_64: Annotated[int, typer.Option(min=0, help="Fast path: goals run 64 in flight (0 = skip).")] = 500,
    slow_goals: Annotated[
        int, typer.Option(min=0, max=1024, help="Slow steps: goals of 5 noop.sleep steps submitted at once (0 = skip).")
    ] = 64,
    step_ms: Annotated[int, typer.Option(min=1, max=60_000, help="Slow steps: how long each step sleeps, in ms.")] = 500,
    preload: Annotated[
        int,
        typer.Option(min=0, help="Growth: finished goals written straight into every service's store before the "
                     "fast path runs again at 8 in flight (0 = skip)."),
    ] = 10_000,
    growth_goals: Annotated[int, typer.Option(min=1, help="Growth: goals run 8 in flight right before and again after the preload.")] = 200,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a target is missed (by default only a broken run exits 1).")
    ] = False,
    workdir: Annotated[Path, typer.Option(help="Where the embedded store and logs go (emptied first).")] = Path(
        ".goalrail/bench"
    ),
    floor_hops: Annotated[
        Optional[int], typer.Option(min=1, help="Kafka hops per floor message (default: derived from the steps).")
    ] = None,
) -> None:
    """Benchmark the embedded stack in one run: the fast path (5 no-op steps) at 1, 8 and 64 goals
    in flight beside a raw-aiokafka floor at the same concurrency, slow steps submitted at once,
    the cost of an event with a preloaded store, and each process's peak memory. Prints PASS or
    FAIL per target; exits 1 when a goal failed or timed out (or, with --check, a target was
    missed)."""
    from shared.embedded.bench import BenchPlan, run_bench
    from shared.embedded.bench_targets import check_targets, exit_code, targets_table

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    plan = BenchPlan(
        fast_goals={1: goals_at_1, 8: goals_at_8, 64: goals_at_64}, slow_goals=slow_goals, step_ms=step_ms,
        preload=preload, growth_goals=growth_goals, floor_hops=floor_hops, workdir=workdir,
    )
    report = asyncio.run(run_bench(plan, progress=console.print))
    results = check_targets(report)
    console.print(report.render())
    console.print(targets_table(results))
    raise typer.Exit(exit_code(report, results, check))


from shared.cli_audit import audit_app, kpis  # noqa: E402

app.add_typer(audit_app, name="audit")
from shared.cli_routes import routes_app  # noqa: E402

app.add_typer(routes_app, name="routes")
from shared.cli_approvals import approvals_app, goals_app  # noqa: E402

app.add_typer(approvals_app, name="approvals")
app.add_typer(goals_app, name="goals")
app.command()(kpis)

if __name__ == "__main__":
    app()
