"""The demo business systems the embedded stack starts as its own process: a sales system, a
CRM and a report writer, each a real HTTP API with an OpenAPI document.

Figures are derived from a hash of the period, so every run tells the same story. The report
writer honours `Idempotency-Key` like a well-behaved business API: a repeated key returns the
stored response and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
from collections import defaultdict
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Response
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
    name: str
    region: str
    revenue: int
    status: Literal["active", "at_risk", "expanding"]


class TopAccounts(BaseModel):
    quarter: str
    year: int
    accounts: list[Account]


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


class WriteCall(BaseModel):
    method: str
    path: str
    idempotency_key: str | None
    received_at: datetime
    completed: bool = False


def _seeded(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def sales_figures(quarter: str, year: int) -> SalesFigures:
    regions = []
    for region in REGIONS:
        seed = _seeded(region, quarter, year)
        revenue = 800_000 + seed % 1_700_000
        regions.append(
            RegionFigures(
                region=region,
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


def create_app(write_delay_s: float = 0.0) -> FastAPI:
    app = FastAPI(title="Goalrail demo business systems", version="1.0.0")
    reports: dict[str, Report] = {}
    bodies: dict[str, ReportDraft] = {}
    calls: list[WriteCall] = []
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @app.get("/sales/figures", operation_id="get_sales_figures", summary="Sales figures of one quarter")
    async def get_sales_figures(quarter: Quarter, year: Year) -> SalesFigures:
        return sales_figures(quarter, year)

    @app.get("/crm/accounts/top", operation_id="get_top_accounts", summary="Top accounts by revenue")
    async def get_top_accounts(quarter: Quarter, year: Year, limit: Annotated[int, Query(ge=1, le=20)] = 3) -> TopAccounts:
        statuses = ("active", "at_risk", "expanding")
        accounts = [
            Account(name=name, region=region, revenue=100_000 + _seeded(name, quarter, year) % 400_000,
                    status=statuses[_seeded(name, year) % 3])  # type: ignore[arg-type]
            for name, region in ACCOUNTS
        ]
        accounts.sort(key=lambda a: a.revenue, reverse=True)
        return TopAccounts(quarter=quarter, year=year, accounts=accounts[:limit])

    @app.post("/reports", operation_id="publish_report", summary="Publish a report", status_code=201)
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

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Goalrail demo business systems (sales, CRM, reports).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--write-delay", type=float, default=float(os.environ.get("GOALRAIL_DEMO_WRITE_DELAY_S", 0)),
                        help="Seconds each report write takes (to test crashes mid-write).")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.write_delay), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
