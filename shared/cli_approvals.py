"""`goalrail approvals list|approve|reject` and `goalrail goals retry|cancel`: people answer the
steps waiting for approval and act on failed or escalated goals.

By default through the auditor's HTTP API (`--auditor-url`, default the local auditor on
GOALRAIL_AUDITOR_HTTP_PORT); with `--bootstrap` straight on Kafka through GoalrailClient, for
deployments without the API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.settings import Settings

approvals_app = typer.Typer(help="Steps waiting for a person's approval.", no_args_is_help=True)
goals_app = typer.Typer(help="Operator actions on failed or escalated goals.", no_args_is_help=True)
console = Console()

AuditorUrl = Annotated[
    Optional[str],
    typer.Option("--auditor-url", help="Base URL of the auditor's HTTP API (default: the local auditor)."),
]
Bootstrap = Annotated[
    Optional[str],
    typer.Option("--bootstrap", "-b", help="Publish/read on Kafka directly instead of the auditor's API."),
]
Tenant = Annotated[str, typer.Option(help="Tenant of the decision (with --bootstrap).")]
By = Annotated[str, typer.Option("--by", help="Who decides (name or address).")]
Comment = Annotated[str, typer.Option("--comment", "-m", help="Why.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def auditor_url(value: str | None) -> str:
    if value:
        return value.rstrip("/")
    settings = Settings()
    host = "127.0.0.1" if settings.auditor_http_host in ("0.0.0.0", "::") else settings.auditor_http_host
    return f"http://{host}:{settings.auditor_http_port}"


def goal_of(approval_id: str) -> str:
    """The goal id inside an approval id `<goal_id>:<step_id>:<attempt>:approval`."""
    if not approval_id.endswith(":approval") or approval_id.count(":") < 3:
        console.print(f"[red]{approval_id!r} is not an approval id[/] (<goal_id>:<step_id>:<attempt>:approval)",
                      highlight=False)
        raise typer.Exit(2)
    return approval_id.removesuffix(":approval").rsplit(":", 2)[0]


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, json=body, timeout=15)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the auditor at {url}[/]: {exc} (is the stack up? --auditor-url, "
                      "or --bootstrap to use Kafka)", highlight=False)
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        detail = response.json().get("detail") if response.headers.get("content-type", "").startswith(
            "application/json") else response.text
        console.print(f"[red]{response.status_code}[/]: {detail}", highlight=False)
        raise typer.Exit(1)
    return response.json()


@approvals_app.command("list")
def approvals_list(
    auditor: AuditorUrl = None,
    bootstrap: Bootstrap = None,
    status: Annotated[Optional[str], typer.Option(help="pending, approved or rejected.")] = None,
    as_json: AsJson = False,
) -> None:
    """The approvals, pending first: step, tool, why, and who decided."""
    if bootstrap:
        approvals = asyncio.run(_approvals_from_kafka(bootstrap))
        approvals = [a for a in approvals if status is None or a["status"] == status]
    else:
        query = f"?status={status}" if status else ""
        approvals = _request("GET", f"{auditor_url(auditor)}/approvals{query}")["approvals"]
    if as_json:
        print(json.dumps({"approvals": approvals}, indent=2))
        return
    if not approvals:
        console.print("no approvals" + (f" {status}" if status else ""))
        return
    table = Table(title="Approvals")
    for column in ("approval id", "status", "tool", "side effect", "reason", "inputs", "decided by"):
        table.add_column(column, overflow="fold")
    colours = {"pending": "yellow", "approved": "green", "rejected": "red"}
    for a in approvals:
        table.add_row(a["approval_id"], f"[{colours.get(a['status'], 'white')}]{a['status']}[/]", a.get("tool") or "",
                      a.get("side_effect") or "", a.get("reason") or "", json.dumps(a.get("inputs") or {})[:120],
                      a.get("decided_by") or "")
    console.print(table)


async def _approvals_from_kafka(bootstrap: str, idle_s: float = 1.5) -> list[dict[str, Any]]:
    """Requests and decisions read from the start of their topics until they go quiet."""
    from shared.client import EventStream
    from shared.events import ApprovalDecided, ApprovalRequested, Topic

    stream = EventStream(bootstrap, [Topic.APPROVALS_REQUESTED.value, Topic.APPROVALS_DECIDED.value],
                         from_beginning=True)
    await stream.start()
    requested: dict[str, ApprovalRequested] = {}
    decided: dict[str, ApprovalDecided] = {}
    try:
        events = stream.__aiter__()
        while True:
            try:
                received = await asyncio.wait_for(events.__anext__(), idle_s)
            except (TimeoutError, StopAsyncIteration):
                break
            if isinstance(received.event, ApprovalRequested):
                requested.setdefault(received.event.approval_id, received.event)
            elif isinstance(received.event, ApprovalDecided):
                decided.setdefault(received.event.approval_id, received.event)
    finally:
        await stream.stop()
    rows = []
    for approval_id, request in requested.items():
        decision = decided.get(approval_id)
        rows.append({
            "approval_id": approval_id, "goal_id": request.goal_id, "tenant": request.tenant,
            "step_id": request.step.id, "tool": request.step.tool, "side_effect": request.step.side_effect,
            "reason": request.reason, "inputs": request.inputs, "requested_at": request.time.isoformat(),
            "status": decision.decision if decision else "pending",
            "decided_by": decision.decided_by if decision else None,
        })
    return sorted(rows, key=lambda r: (r["status"] != "pending", r["requested_at"]))


def _decide(approval_id: str, approve: bool, by: str, comment: str, auditor: str | None, bootstrap: str | None,
            tenant: str) -> None:
    verb = "approved" if approve else "rejected"
    if bootstrap:
        from shared.client import GoalrailClient

        async def send() -> None:
            async with GoalrailClient(bootstrap, tenant=tenant, source="goalrail/cli") as client:
                await client.decide(approval_id, goal_of(approval_id), approve, by, comment)

        asyncio.run(send())
    else:
        action = "approve" if approve else "reject"
        _request("POST", f"{auditor_url(auditor)}/approvals/{approval_id}/{action}", {"by": by, "comment": comment})
    console.print(f"[{'green' if approve else 'red'}]{verb}[/] {approval_id} by {by}", highlight=False)


@approvals_app.command("approve")
def approvals_approve(approval_id: str, by: By, comment: Comment = "", auditor: AuditorUrl = None,
                      bootstrap: Bootstrap = None, tenant: Tenant = "default") -> None:
    """Approve a waiting step: the router dispatches it."""
    _decide(approval_id, True, by, comment, auditor, bootstrap, tenant)


@approvals_app.command("reject")
def approvals_reject(approval_id: str, by: By, comment: Comment = "", auditor: AuditorUrl = None,
                     bootstrap: Bootstrap = None, tenant: Tenant = "default") -> None:
    """Reject a waiting step: it fails (POLICY_VIOLATION) and its goal ends failed."""
    _decide(approval_id, False, by, comment, auditor, bootstrap, tenant)


def _act(goal_id: str, action: str, by: str, comment: str, auditor: str | None, bootstrap: str | None,
         tenant: str) -> None:
    if bootstrap:
        from shared.client import GoalrailClient

        async def send() -> None:
            async with GoalrailClient(bootstrap, tenant=tenant, source="goalrail/cli") as client:
                await client.act_on_goal(goal_id, action, by, comment)

        asyncio.run(send())
    else:
        _request("POST", f"{auditor_url(auditor)}/goals/{goal_id}/{action}", {"by": by, "comment": comment})
    console.print(f"{action} of {goal_id} requested by {by}", highlight=False)


@goals_app.command("retry")
def goals_retry(goal_id: str, by: By, comment: Comment = "", auditor: AuditorUrl = None,
                bootstrap: Bootstrap = None, tenant: Tenant = "default") -> None:
    """Run a failed or escalated goal's failed steps again (what succeeded is kept)."""
    _act(goal_id, "retry", by, comment, auditor, bootstrap, tenant)


@goals_app.command("cancel")
def goals_cancel(goal_id: str, by: By, comment: Comment = "", auditor: AuditorUrl = None,
                 bootstrap: Bootstrap = None, tenant: Tenant = "default") -> None:
    """End a running, failed or escalated goal as CANCELLED."""
    _act(goal_id, "cancel", by, comment, auditor, bootstrap, tenant)
