"""The demo business systems the embedded stack starts as its own process: a sales system, a
CRM, a report writer and a project tracker, each a real HTTP API with an OpenAPI document (and,
with `--smtp-port`, the mail system: an SMTP outbox, shared.embedded.demo_smtp).

Figures are derived from a hash of the period, so every run tells the same story. Every write
(report, issue, customer status) honours `Idempotency-Key` like a well-behaved business API: a
repeated key returns the stored response and changes nothing. With `GOALRAIL_DEMO_API_KEY` set, requests need that key
in `X-Api-Key` (the tools send it from the same variable).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

REGIONS = ("EMEA", "Americas", "APAC")
ACCOUNTS = (
    ("Northwind Traders", "EMEA"), ("Contoso Retail", "Americas"), ("Fabrikam Industries", "Americas"),
    ("Tailspin Toys", "APAC"), ("Wide World Importers", "EMEA"), ("Adventure Works", "APAC"),
)
Quarter = Annotated[str, Query(pattern=r"^Q[1-4]$", description="Quarter, e.g. Q3.")]
Year = Annotated[int, Query(ge=2000, le=2100)]


class RegionFigures(BaseModel):
    region: str
    revenue: int
    target: int
    previous_quarter_revenue: int
    deals_closed: int


class Totals(BaseModel):
    revenue: int
    target: int
    attainment_pct: float
    growth_pct: float


class SalesFigures(BaseModel):
    quarter: str
    year: int
    currency: str = "EUR"
    regions: list[RegionFigures]
    totals: Totals


class Account(BaseModel):
    customer_id: str
    name: str
    region: str
    revenue: int
    status: Literal["active", "at_risk", "expanding"]


class TopAccounts(BaseModel):
    quarter: str
    year: int
    accounts: list[Account]


CustomerStatus = Literal["active", "at_risk", "expanding", "churned"]


class Customer(BaseModel):
    customer_id: str
    name: str
    region: str
    status: CustomerStatus
    history: list[str] = Field(description="One line per status change that took effect.")


class StatusChange(BaseModel):
    status: CustomerStatus
    reason: str = Field("", max_length=500)


class ReportDraft(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1)
    audience: str = "board"


class Report(BaseModel):
    report_id: str
    title: str
    audience: str
    url: str
    created_at: datetime
    idempotency_key: str


class IssueDraft(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    assignee: str | None = None
    labels: list[str] = Field(default_factory=list)


class IssueUpdate(BaseModel):
    status: Literal["open", "in_progress", "done"] | None = None
    comment: str | None = Field(None, min_length=1)


class Issue(BaseModel):
    issue_id: str
    title: str
    description: str
    assignee: str | None
    labels: list[str]
    status: Literal["open", "in_progress", "done"]
    url: str
    history: list[str] = Field(description="One line per change that took effect.")
    created_at: datetime


class WriteCall(BaseModel):
    method: str
    path: str
    idempotency_key: str | None
    received_at: datetime
    completed: bool = False


def _seeded(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def _customer_id(number: int) -> str:
    return f"CUST-{number:03d}"


def sales_figures(quarter: str, year: int, region: str | None = None) -> SalesFigures:
    regions = []
    for name in ([region] if region else REGIONS):
        seed = _seeded(name, quarter, year)
        revenue = 800_000 + seed % 1_700_000
        regions.append(
            RegionFigures(
                region=name,
                revenue=revenue,
                target=int(revenue * (0.85 + (seed >> 8) % 30 / 100)),
                previous_quarter_revenue=int(revenue * (0.8 + (seed >> 12) % 35 / 100)),
                deals_closed=20 + (seed >> 4) % 80,
            )
        )
    revenue = sum(r.revenue for r in regions)
    target = sum(r.target for r in regions)
    previous = sum(r.previous_quarter_revenue for r in regions)
    totals = Totals(
        revenue=revenue,
        target=target,
        attainment_pct=round(100 * revenue / target, 1),
        growth_pct=round(100 * (revenue - previous) / previous, 1),
    )
    return SalesFigures(quarter=quarter, year=year, regions=regions, totals=totals)


def create_app(write_delay_s: float = 0.0, api_key: str | None = None, outbox: Any = None) -> FastAPI:
    """The demo API; with `api_key`, every business route needs it in `X-Api-Key`; with an SMTP
    `outbox` (shared.embedded.demo_smtp), GET /outbox/messages lists what it received."""
    app = FastAPI(title="Goalrail demo business systems", version="1.0.0")
    reports: dict[str, Report] = {}
    bodies: dict[str, ReportDraft] = {}
    calls: list[WriteCall] = []
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @app.get("/sales/figures", operation_id="get_sales_figures", summary="Sales figures of one quarter",
             description="Sales system: revenue, target and deals per region for one quarter, with totals.")
    async def get_sales_figures(
        quarter: Quarter, year: Year,
        region: Annotated[Literal["EMEA", "Americas", "APAC"] | None, Query(description="Only this region.")] = None,
    ) -> SalesFigures:
        return sales_figures(quarter, year, region)

    @app.get("/crm/accounts/top", operation_id="get_top_accounts", summary="Top accounts by revenue",
             description="CRM: the customer accounts with the most revenue in one quarter.")
    async def get_top_accounts(quarter: Quarter, year: Year, limit: Annotated[int, Query(ge=1, le=20)] = 3) -> TopAccounts:
        statuses = ("active", "at_risk", "expanding")
        accounts = [
            Account(customer_id=_customer_id(n), name=name, region=region,
                    revenue=100_000 + _seeded(name, quarter, year) % 400_000,
                    status=statuses[_seeded(name, year) % 3])  # type: ignore[arg-type]
            for n, (name, region) in enumerate(ACCOUNTS, start=1)
        ]
        accounts.sort(key=lambda a: a.revenue, reverse=True)
        return TopAccounts(quarter=quarter, year=year, accounts=accounts[:limit])

    @app.post("/reports", operation_id="publish_report", summary="Publish a report", status_code=201,
              description="Report writer: publish a report to its audience. Idempotent per Idempotency-Key: "
              "a repeated key returns the stored report (HTTP 200) and publishes nothing new.")
    async def publish_report(
        draft: ReportDraft,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Report:
        call = WriteCall(method="POST", path="/reports", idempotency_key=idempotency_key,
                         received_at=datetime.now(timezone.utc))
        calls.append(call)
        if not idempotency_key:
            raise HTTPException(400, {"error": "missing_idempotency_key",
                                      "message": "POST /reports needs an Idempotency-Key header"})
        async with locks[idempotency_key]:
            if idempotency_key in reports:
                if bodies[idempotency_key] != draft:
                    raise HTTPException(409, {"error": "idempotency_key_reused",
                                              "message": "this Idempotency-Key was used with a different body"})
                call.completed = True
                response.status_code = 200  # a replay: the stored report, nothing new
                return reports[idempotency_key]
            if write_delay_s > 0:
                await asyncio.sleep(write_delay_s)
            report_id = f"rpt-{len(reports) + 1:04d}"
            reports[idempotency_key] = Report(
                report_id=report_id, title=draft.title, audience=draft.audience, url=f"/reports/{report_id}",
                created_at=datetime.now(timezone.utc), idempotency_key=idempotency_key,
            )
            bodies[idempotency_key] = draft
            call.completed = True
            return reports[idempotency_key]

    # --- project tracker ---------------------------------------------------------------------
    issues: dict[str, Issue] = {}
    replies: dict[str, tuple[str, Any]] = {}  # Idempotency-Key -> (request fingerprint, answer)

    async def once(method: str, path: str, key: str | None, body: BaseModel, response: Response,
                   apply: Any) -> Any:
        """Apply a tracker or CRM write once per Idempotency-Key; a repeat gets the first answer."""
        call = WriteCall(method=method, path=path, idempotency_key=key, received_at=datetime.now(timezone.utc))
        calls.append(call)
        if not key:
            raise HTTPException(400, {"error": "missing_idempotency_key",
                                      "message": f"{method} {path} needs an Idempotency-Key header"})
        fingerprint = f"{method} {path} {body.model_dump_json()}"
        async with locks[key]:
            if key in replies:
                if replies[key][0] != fingerprint:
                    raise HTTPException(409, {"error": "idempotency_key_reused",
                                              "message": "this Idempotency-Key was used with a different request"})
                response.status_code = 200
                call.completed = True
                return replies[key][1]
            issue = apply()
            replies[key] = (fingerprint, issue.model_copy(deep=True))
            call.completed = True
            return issue

    @app.post("/tracker/issues", operation_id="create_issue", summary="Create an issue", status_code=201,
              description="Project tracker: open an issue (a task) for a person. Idempotent per Idempotency-Key.")
    async def create_issue(
        draft: IssueDraft,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Issue:
        def apply() -> Issue:
            issue_id = f"ISS-{len(issues) + 1}"
            issues[issue_id] = Issue(issue_id=issue_id, status="open", url=f"/tracker/issues/{issue_id}",
                                     history=[f"created: {draft.title}"], created_at=datetime.now(timezone.utc),
                                     **draft.model_dump())
            return issues[issue_id]

        return await once("POST", "/tracker/issues", idempotency_key, draft, response, apply)

    @app.patch("/tracker/issues/{issue_id}", operation_id="update_issue", summary="Update an issue",
               description="Project tracker: change an issue's status and/or add a comment. Idempotent per "
               "Idempotency-Key.")
    async def update_issue(
        issue_id: str,
        update: IssueUpdate,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Issue:
        if issue_id not in issues:
            raise HTTPException(404, {"error": "not_found", "message": f"no issue {issue_id}"})

        def apply() -> Issue:
            issue = issues[issue_id]
            if update.status and update.status != issue.status:
                issue.history.append(f"status: {issue.status} -> {update.status}")
                issue.status = update.status
            if update.comment:
                issue.history.append(f"comment: {update.comment}")
            return issue

        return await once("PATCH", f"/tracker/issues/{issue_id}", idempotency_key, update, response, apply)

    @app.get("/tracker/issues", operation_id="list_issues", summary="Issues",
             description="Project tracker: the issues, optionally only those with one status.")
    async def list_issues(status: Literal["open", "in_progress", "done"] | None = None) -> list[Issue]:
        return [i for i in issues.values() if status is None or i.status == status]

    # --- CRM: customers and their status ---------------------------------------------------------
    statuses: tuple[CustomerStatus, ...] = ("active", "at_risk", "expanding")
    customers = {
        _customer_id(n): Customer(customer_id=_customer_id(n), name=name, region=region,
                                 status=statuses[_seeded(name) % 3], history=[])
        for n, (name, region) in enumerate(ACCOUNTS, start=1)
    }

    @app.get("/crm/customers", operation_id="list_customers", summary="CRM customer list",
             description="CRM: the customer list with each customer's status, optionally one region or status.")
    async def list_customers(region: str | None = None, status: CustomerStatus | None = None) -> list[Customer]:
        return [c for c in customers.values()
                if (region is None or c.region == region) and (status is None or c.status == status)]

    @app.get("/crm/customers/{customer_id}", operation_id="get_customer", summary="One CRM customer")
    async def get_customer(customer_id: str) -> Customer:
        if customer_id not in customers:
            raise HTTPException(404, {"error": "not_found", "message": f"no customer {customer_id}"})
        return customers[customer_id]

    @app.put("/crm/customers/{customer_id}/status", operation_id="set_customer_status",
             summary="Set a CRM customer's status",
             description="CRM: set a customer's status (active, at_risk, expanding, churned). Idempotent: setting "
             "the status it already has changes nothing, and a repeated Idempotency-Key returns the first answer.")
    async def set_customer_status(
        customer_id: str,
        change: StatusChange,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Customer:
        if customer_id not in customers:
            raise HTTPException(404, {"error": "not_found", "message": f"no customer {customer_id}"})

        def apply() -> Customer:
            customer = customers[customer_id]
            if change.status != customer.status:
                reason = f" ({change.reason})" if change.reason else ""
                customer.history.append(f"status: {customer.status} -> {change.status}{reason}")
                customer.status = change.status
            return customer.model_copy(deep=True)

        return await once("PUT", f"/crm/customers/{customer_id}/status", idempotency_key, change, response, apply)

    @app.get("/reports", operation_id="list_reports", summary="All published reports")
    async def list_reports() -> list[Report]:
        return list(reports.values())

    @app.get("/reports/{report_id}", operation_id="get_report", summary="One report")
    async def get_report(report_id: str) -> Report:
        for report in reports.values():
            if report.report_id == report_id:
                return report
        raise HTTPException(404, {"error": "not_found", "message": f"no report {report_id}"})

    @app.get("/_calls", operation_id="list_write_calls", summary="Every write request received")
    async def list_calls() -> list[WriteCall]:
        return calls

    @app.get("/healthz", operation_id="health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if outbox is not None:
        # the mail system's own view, not a business tool: kept out of the OpenAPI document
        @app.get("/outbox/messages", operation_id="list_outbox", summary="Mail received by the SMTP outbox",
                 include_in_schema=False)
        async def list_outbox() -> list[dict[str, Any]]:
            return [m.model_dump(mode="json") for m in outbox.messages]

        @app.get("/outbox/deliveries", operation_id="count_outbox_deliveries",
                 summary="Messages the SMTP outbox was handed, repeats included", include_in_schema=False)
        async def count_deliveries() -> dict[str, int]:
            return {"deliveries": outbox.deliveries, "messages": len(outbox.messages)}

    if api_key:
        @app.middleware("http")
        async def require_api_key(request: Request, call_next: Any) -> Any:
            open_paths = ("/healthz", "/openapi.json", "/docs", "/_calls")
            if request.url.path not in open_paths and request.headers.get("x-api-key") != api_key:
                return JSONResponse({"error": "unauthorized", "message": "missing or wrong X-Api-Key"}, 401)
            return await call_next(request)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Goalrail demo business systems (sales, CRM, reports).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--write-delay", type=float, default=float(os.environ.get("GOALRAIL_DEMO_WRITE_DELAY_S", 0)),
                        help="Seconds each report write takes (to test crashes mid-write).")
    parser.add_argument("--smtp-port", type=int, default=int(os.environ.get("GOALRAIL_DEMO_SMTP_PORT", 0)),
                        help="Also run the SMTP outbox (the mail system) on this port; 0 = off.")
    parser.add_argument("--outbox-dir", type=Path, default=None,
                        help="Folder where the SMTP outbox writes each message it accepts as an .eml file.")
    args = parser.parse_args(argv)
    api_key = os.environ.get("GOALRAIL_DEMO_API_KEY") or None
    if args.smtp_port:
        from shared.embedded.demo_smtp import SMTPOutboxServer

        with SMTPOutboxServer(args.host, args.smtp_port, args.outbox_dir) as smtp:
            uvicorn.run(create_app(args.write_delay, api_key, smtp.outbox), host=args.host, port=args.port,
                        log_level="warning")
        return
    uvicorn.run(create_app(args.write_delay, api_key), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
