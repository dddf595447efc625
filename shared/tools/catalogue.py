"""The built-in tool catalogue: the demo business systems and no-op tools for benchmarks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.tools.registry import ToolContext, ToolRegistry


class PeriodQuery(BaseModel):
    quarter: str = Field(pattern=r"^Q[1-4]$", description="Quarter, e.g. Q3.")
    year: int = Field(ge=2000, le=2100)


class TopAccountsQuery(PeriodQuery):
    limit: int = Field(3, ge=1, le=20)


class ReportDraft(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1)
    audience: Literal["board", "management", "team"] = "board"


class PublishedReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    report_id: str
    url: str


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="allow")


def _demo_url(ctx: ToolContext, path: str) -> str:
    return ctx.config.get("demo_api_url", "http://127.0.0.1:8123").rstrip("/") + path


def build_catalogue() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool("sales.get_figures", input_model=PeriodQuery, timeout_s=10)
    async def get_sales_figures(args: PeriodQuery, ctx: ToolContext) -> Any:
        """Sales system: revenue, target and deals per region for one quarter, with totals."""
        response = await ctx.http.get(_demo_url(ctx, "/sales/figures"), params=args.model_dump())
        response.raise_for_status()
        return response.json()

    @registry.tool("crm.top_accounts", input_model=TopAccountsQuery, timeout_s=10)
    async def get_top_accounts(args: TopAccountsQuery, ctx: ToolContext) -> Any:
        """CRM: the customer accounts with the most revenue in one quarter."""
        response = await ctx.http.get(_demo_url(ctx, "/crm/accounts/top"), params=args.model_dump())
        response.raise_for_status()
        return response.json()

    @registry.tool(
        "reports.publish",
        input_model=ReportDraft,
        output_model=PublishedReport,
        side_effect="write",
        timeout_s=30,
    )
    async def publish_report(args: ReportDraft, ctx: ToolContext) -> Any:
        """Report writer: publish a report to its audience (idempotent per Idempotency-Key)."""
        response = await ctx.http.post(
            _demo_url(ctx, "/reports"),
            json=args.model_dump(),
            headers={"Idempotency-Key": ctx.idempotency_key},
        )
        response.raise_for_status()
        return response.json()

    @registry.tool("noop.echo", input_model=EchoInput, timeout_s=5)
    async def echo(args: EchoInput, ctx: ToolContext) -> Any:
        """No-op: returns its input (benchmarks and tests)."""
        return {"echo": args.model_dump()}

    return registry

