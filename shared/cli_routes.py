"""`goalrail routes …`: the routing table, its validation, and what the router has learned."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shared.cli_audit import store_url
from shared.events import Step
from shared.models.routing_table import TASK_TYPES, RoutingTable, load_routing_table
from shared.settings import Settings

if TYPE_CHECKING:
    from services.router.routing import ModelStats

routes_app = typer.Typer(help="Model routing: the routing table and the router's statistics.", no_args_is_help=True)
console = Console()

TablePath = Annotated[
    Optional[Path], typer.Option("--table", help="Routing table YAML (default: GOALRAIL_ROUTING_TABLE).")
]
MongoUrl = Annotated[
    Optional[str],
    typer.Option("--mongo-url", help="Router store for learned statistics (e.g. embedded://.goalrail/demo/store)."),
]
Workdir = Annotated[
    Optional[Path], typer.Option(help="Workdir of an embedded stack (e.g. .goalrail/demo): use its store.")
]


def _load(path: Path | None) -> RoutingTable:
    path = path or Settings().routing_table
    try:
        return load_routing_table(path)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(2) from exc


async def _stats(url: str, models: list[str]) -> dict[str, ModelStats]:
    from services.router.store import RouterStore
    from shared.store import open_database

    return await asyncio.wait_for(RouterStore(open_database(url, "goalrail_router")).stats(models), timeout=5)


def _store_url(mongo_url: str | None, workdir: Path | None) -> str | None:
    """Statistics only come from a store named on the command line."""
    return store_url(mongo_url, workdir) if mongo_url or workdir is not None else None


@routes_app.command("check")
def check(table: TablePath = None) -> None:
    """Validate the routing table; exit 2 with the errors when it is invalid."""
    loaded = _load(table)
    models = loaded.candidates()
    console.print(f"routing table valid: {len(loaded.task_types)} task types, {len(models)} models", highlight=False)


@routes_app.command("explain")
def explain(
    task_type: Annotated[str, typer.Argument(help=f"One of: {', '.join(TASK_TYPES)}.")],
    data_class: Annotated[
        Optional[list[str]], typer.Option("--data-class", "-d", help="Data classes the step carries (repeatable).")
    ] = None,
    table: TablePath = None,
    mongo_url: MongoUrl = None,
    workdir: Workdir = None,
) -> None:
    """Print a task type's candidates, their limits and data classes, the learned statistics
    (with --mongo-url/--workdir) and the choice the router would make now."""
    from services.router.prices import litellm_price
    from services.router.routing import ModelStats, RoutingError, choose

    if task_type not in TASK_TYPES:
        console.print(f"[red]unknown task type {task_type!r}[/]; known: {', '.join(TASK_TYPES)}", highlight=False)
        raise typer.Exit(2)
    loaded = _load(table)
    route = loaded.route(task_type)
    models = [c.model for c in route.candidates]
    stats: dict[str, ModelStats] = {}
    url = _store_url(mongo_url, workdir)
    note = "no store given (--mongo-url or --workdir): table only"
    have_store = False
    if url is not None and url.startswith("embedded://") and not Path(url.removeprefix("embedded://")).is_dir():
        note = f"no embedded store at {url}: table only"
    elif url is not None:
        try:
            stats = asyncio.run(_stats(url, models))
            note, have_store = f"statistics from {url}", True
        except Exception as exc:  # noqa: BLE001 — an unreachable store still leaves the table to show
            note = f"store {url} not reachable ({type(exc).__name__}): table only"

    source = "its own route" if task_type in loaded.task_types else "the default route"
    limits = Table(title=f"{task_type}: candidates in table order ({source})", title_justify="left")
    learned = Table(title="learned statistics", title_justify="left")
    for column in ("#", "model", "data classes", "$/call max", "latency max", "ctx max", "$/1M in, out"):
        justify = "left" if column in {"model", "data classes"} else "right"
        limits.add_column(column, no_wrap=column == "model", justify=justify)
    for column in ("model", "calls", "errors", "p95 latency", "mean $/call", "healthy"):
        learned.add_column(column, no_wrap=column == "model", justify="left" if column == "model" else "right")
    now = time.time()
    for index, candidate in enumerate(route.candidates, 1):
        price = litellm_price(candidate)
        limits.add_row(
            str(index),
            candidate.model,
            ", ".join(candidate.data_classes or []),
            _fmt(candidate.max_cost_usd, "${:g}"),
            _fmt(candidate.max_latency_s, "{:g}s"),
            _fmt(candidate.max_context_tokens, "{:,}"),
            "unknown" if price is None else f"${price[0] * 1e6:g}, ${price[1] * 1e6:g}",
        )
        seen = stats.get(candidate.model, ModelStats())
        learned.add_row(
            candidate.model,
            str(seen.calls),
            f"{seen.errors} ({seen.error_rate:.0%})" if seen.calls else "–",
            _fmt(seen.p95_latency_s, "{:.2f}s"),
            _fmt(seen.mean_cost_usd, "${:.6f}"),
            "yes" if seen.healthy(loaded.router, now) else f"no ({seen.consecutive_errors} failures in a row)",
        )
    console.print(limits)
    if have_store:
        console.print(learned)
    settings = loaded.router
    console.print(
        f"litellm Router: num_retries {settings.num_retries}, cooldown after {settings.allowed_fails} fails/min "
        f"for {settings.cooldown_s:g}s; restricted data classes {loaded.restricted_data_classes}",
        highlight=False,
    )
    console.print(note, style="dim", highlight=False)
    step = Step(id="explain", task_type=task_type, instruction="(explain)", data_classes=data_class or [])
    try:
        binding = choose(step, loaded, stats=stats, price=litellm_price, now=now)
        console.print(f"[bold]now:[/] {binding.model} → fallbacks {binding.fallbacks}\n  {binding.reason}",
                      highlight=False)
    except RoutingError as exc:
        console.print(f"[bold]now:[/] [red]{exc.error.code.value}[/] {exc.error.message}", highlight=False)


def _fmt(value: float | int | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)
