"""`goalrail audit …` and `goalrail kpis`: read the auditor's store (the audit trail) from the
command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from shared.settings import Settings
from shared.store import embedded_store_url

audit_app = typer.Typer(help="The tamper-evident audit trail of goals.", no_args_is_help=True)
console = Console()

MongoUrl = Annotated[
    Optional[str],
    typer.Option("--mongo-url", help="Store URL (default: GOALRAIL_MONGO_URL, or the --workdir store)."),
]
Workdir = Annotated[
    Optional[Path],
    typer.Option(help="Workdir of an embedded stack (e.g. .goalrail/demo): use its store."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def store_url(mongo_url: str | None, workdir: Path | None) -> str:
    """--mongo-url, else the store of an embedded stack's workdir, else the configured store."""
    if mongo_url:
        return mongo_url
    if workdir is not None:
        return embedded_store_url(workdir)
    return Settings().mongo_url


def _store(mongo_url: str | None, workdir: Path | None) -> Any:
    from services.auditor.app import DATABASE
    from services.auditor.store import AuditStore
    from shared.store import open_database

    url = store_url(mongo_url, workdir)
    if url.startswith("embedded://") and not Path(url.removeprefix("embedded://")).expanduser().is_dir():
        console.print(f"[red]no embedded store at {url}[/] (a demo's store: --workdir .goalrail/demo)", highlight=False)
        raise typer.Exit(2)
    return AuditStore(open_database(url, DATABASE))


def _records(goal_id: str, mongo_url: str | None, workdir: Path | None) -> list[Any]:
    records = asyncio.run(_store(mongo_url, workdir).records(goal_id))
    if not records:
        console.print(
            f"[red]no audit records for goal {goal_id}[/] in {store_url(mongo_url, workdir)} "
            "(`goalrail audit goals` lists the audited goals)",
            highlight=False,
        )
        raise typer.Exit(2)
    return records


@audit_app.command("verify")
def audit_verify(goal_id: str, mongo_url: MongoUrl = None, workdir: Workdir = None, as_json: AsJson = False) -> None:
    """Recompute a goal's hash chain; exit 1 and name the first broken record when it does not hold."""
    from services.auditor.audit import verify_chain

    records = _records(goal_id, mongo_url, workdir)
    broken = verify_chain(records)
    if as_json:
        print(json.dumps({"goal_id": goal_id, "records": len(records), "intact": broken is None,
                          "broken": broken.model_dump(mode="json") if broken else None}))
    elif broken is None:
        console.print(f"[green]audit chain of {goal_id} intact[/]: {len(records)} records, head {records[-1].hash[:16]}…")
    else:
        console.print(
            f"[red]audit chain of {goal_id} broken at seq {broken.seq}[/] ({broken.event_type}, event {broken.event_id}): "
            f"{broken.reason}",
            highlight=False,
        )
    raise typer.Exit(0 if broken is None else 1)


@audit_app.command("show")
def audit_show(goal_id: str, mongo_url: MongoUrl = None, workdir: Workdir = None, as_json: AsJson = False) -> None:
    """A goal's audit timeline: time, source service, event, step, model or tool used, cost, errors."""
    from services.auditor.audit import timeline, verify_chain

    records = _records(goal_id, mongo_url, workdir)
    entries = timeline(records)
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries]))
        return
    start = entries[0].time
    table = Table(title=f"Audit trail of {goal_id}", title_justify="left")
    for column in ("seq", "time", "+s", "source", "event", "step", "used", "cost $", "error / note"):
        table.add_column(column, justify="right" if column in ("seq", "+s", "cost $") else "left")
    for entry in entries:
        step = f"{entry.step}#{entry.attempt}" if entry.step and entry.attempt else entry.step or ""
        table.add_row(
            str(entry.seq),
            entry.time.strftime("%H:%M:%S.%f")[:-3],
            f"{(entry.time - start).total_seconds():.2f}",
            entry.source,
            entry.event_type.removeprefix("goalrail."),
            step,
            entry.used or "",
            f"{entry.cost_usd:.4f}" if entry.cost_usd else "",
            f"[red]{entry.error}[/]" if entry.error else (entry.note or ""),
        )
    console.print(table)
    broken = verify_chain(records)
    if broken is None:
        console.print(f"chain [green]intact[/] ({len(records)} records)")
    else:
        console.print(f"chain [red]broken at seq {broken.seq}[/]: {broken.reason}", highlight=False)
    _print_flags(goal_id, mongo_url, workdir)


def _print_flags(goal_id: str, mongo_url: str | None, workdir: Path | None) -> None:
    """The goal's policy flags: open ones block its completion, mitigated ones were redacted."""
    flags = asyncio.run(_store(mongo_url, workdir).flags(goal_id))
    if not flags:
        console.print("policy flags: [green]none[/]")
        return
    table = Table(title=f"Policy flags of {goal_id}", title_justify="left")
    for column in ("status", "rule", "event", "step", "message"):
        table.add_column(column)
    for flag in flags:
        status = f"[red]{flag.status}[/]" if flag.status == "open" else f"[yellow]{flag.status}[/]"
        table.add_row(status, flag.rule, flag.event_type.removeprefix("goalrail."), flag.step_id or "", flag.message)
    console.print(table)


@audit_app.command("goals")
def audit_goals(mongo_url: MongoUrl = None, workdir: Workdir = None, as_json: AsJson = False) -> None:
    """Every audited goal: process, status, cycle time, cost."""
    from services.auditor.kpis import KPI_EVENT_TYPES, summarize_goals

    goals = summarize_goals(asyncio.run(_store(mongo_url, workdir).all_records(KPI_EVENT_TYPES)))
    if as_json:
        print(json.dumps([g.model_dump(mode="json") for g in goals]))
        return
    table = Table(title="Audited goals", title_justify="left")
    for column in ("goal", "process", "status", "submitted", "cycle s", "steps", "retries", "cost $"):
        table.add_column(column)
    for goal in goals:
        table.add_row(
            goal.goal_id, goal.process, goal.status + (" (escalated)" if goal.escalated and goal.status != "escalated" else ""),
            goal.submitted_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{goal.cycle_time_s:.2f}" if goal.cycle_time_s is not None else "",
            str(goal.steps or ""), str(goal.retries), f"{goal.cost_usd:.4f}",
        )
    console.print(table)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _reduction(value: float | None) -> str:
    if value is None:
        return "–"
    return ">99.9%" if 99.95 <= value < 100 else f"{value:.1f}%"


def kpis(
    mongo_url: MongoUrl = None,
    workdir: Workdir = None,
    playbooks_dir: Annotated[
        Optional[Path], typer.Option(help="Playbooks with the manual baselines (default: GOALRAIL_PLAYBOOKS_DIR).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Process KPIs from the audit trail: cycle time against the manual baseline, success, cost.

    Per process (playbook): goals, manual baseline vs measured mean cycle time and the reduction,
    success, escalation and retry rates, steps and cost per goal.
    """
    from services.auditor.kpis import KPI_EVENT_TYPES, process_kpis, summarize_goals
    from services.auditor.store import load_baselines

    baselines = load_baselines(playbooks_dir or Settings().playbooks_dir)
    goals = summarize_goals(asyncio.run(_store(mongo_url, workdir).all_records(KPI_EVENT_TYPES)))
    rows = process_kpis(goals, baselines)
    if as_json:
        print(json.dumps({"processes": [r.model_dump(mode="json") for r in rows]}))
        return
    table = Table(title="Process KPIs", title_justify="left")
    for column in ("process", "goals", "old cycle time", "new cycle time", "reduction", "success", "escalations",
                   "retries", "steps/goal", "cost/goal"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for row in rows:
        table.add_row(
            row.process,
            str(row.goals),
            f"{row.manual_baseline_minutes:g} min" if row.manual_baseline_minutes else "–",
            _minutes(row.mean_cycle_time_s),
            _reduction(row.reduction_pct),
            _pct(row.success_rate),
            _pct(row.escalation_rate),
            _pct(row.retry_rate),
            "–" if row.steps_per_goal is None else f"{row.steps_per_goal:.1f}",
            "–" if row.cost_per_goal_usd is None else f"${row.cost_per_goal_usd:.4f}",
        )
    console.print(table)
    if not rows:
        console.print("no audited goals yet")
