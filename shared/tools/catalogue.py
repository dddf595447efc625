"""The tool catalogue: Python tools defined here with `@tool`, plus the tool sources of the tools
config (OpenAPI documents, MCP servers). The demo business systems' tools (`sales.get_figures`,
`crm.top_accounts`, `reports.publish`, …) are imported from the demo API's OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.settings import Settings
from shared.tools.documents import render_chart, write_spreadsheet
from shared.tools.mail import deliver_mail
from shared.tools.mcp import MCPSource, mcp_tools
from shared.tools.openapi import OpenAPISource, load_document, openapi_tools
from shared.tools.registry import ToolRegistry, tool


log = logging.getLogger("goalrail.tools")


class EchoInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Echo(BaseModel):
    echo: dict[str, Any]


@tool("noop.echo", permission_scope="noop", timeout_s=5, data_classes=["public"])
async def echo(args: EchoInput) -> Echo:
    """No-op: returns its input (benchmarks and tests)."""
    return Echo(echo=args.model_dump())


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    ms: int = Field(500, ge=0, le=60_000, description="How long the call takes, in milliseconds.")


@tool("noop.sleep", permission_scope="noop", timeout_s=70, data_classes=["public"])
async def sleep(args: SleepInput) -> Echo:
    """No-op that takes `ms` milliseconds, like a slow business API (benchmarks and tests)."""
    await asyncio.sleep(args.ms / 1000)
    return Echo(echo=args.model_dump())


PYTHON_TOOLS = [echo, sleep, write_spreadsheet, render_chart, deliver_mail]


def tool_config(settings: Settings) -> dict[str, str]:
    """What tools read from the settings (base URLs, folders, mail server), passed per call."""
    return {"demo_api_url": settings.demo_api_url, "artifacts_dir": str(settings.artifacts_dir),
            "smtp_url": settings.smtp_url, "smtp_from": settings.smtp_from}


class ToolsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    openapi: list[OpenAPISource] = Field(default_factory=list)
    mcp: list[MCPSource] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "ToolsConfig":
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})


def build_catalogue(settings: Settings | None = None, *, mcp: bool = True) -> ToolRegistry:
    """Every tool this deployment knows: the Python tools, the configured OpenAPI sources and
    (with `mcp`) the tools of the configured MCP servers.

    Synchronous, so planner and executor build the same catalogue at start; network-free for
    file documents and no MCP sources (the default config). MCP discovery runs on its own event
    loop in a worker thread, so this also works when called from async code.
    """
    settings = settings or Settings()
    registry = ToolRegistry()
    for fn in PYTHON_TOOLS:
        registry.add(fn)
    config_path = Path(settings.tools_config)
    config = ToolsConfig.load(config_path)
    values = settings.model_dump(mode="json")
    for source in config.openapi:
        document = load_document(source.document, config_path.parent, settings.tool_timeout_s)
        url = source.document if source.document.startswith(("http://", "https://")) else None
        tools, secrets = openapi_tools(document, source, document_url=url, settings=values)
        registry.extend(tools)
        registry.add_secrets(secrets)
    if mcp and config.mcp:
        with ThreadPoolExecutor(1, thread_name_prefix="mcp-discovery") as pool:
            pool.submit(asyncio.run, add_mcp_tools(registry, settings)).result()
    return registry


async def add_mcp_tools(registry: ToolRegistry, settings: Settings | None = None) -> list[str]:
    """Discover the configured MCP servers' tools into `registry`; returns the names of sources
    that could not be reached (logged, skipped: one dead server must not stop the executor)."""
    settings = settings or Settings()
    failed: list[str] = []
    for source in ToolsConfig.load(Path(settings.tools_config)).mcp:
        try:
            tools, secrets = await mcp_tools(source)
        except Exception as exc:
            log.error("MCP source %s unavailable, its tools are not in the catalogue: %s", source.name, exc)
            failed.append(source.name)
            continue
        registry.extend(tools)
        registry.add_secrets(secrets)
    return failed


