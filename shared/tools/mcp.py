"""Tool source 3: the tools of an MCP server (official `mcp` SDK), over stdio or Streamable HTTP.

Discovery lists the server's tools once (at start); each becomes a Goalrail tool with the
server's input/output schemas. Its side effect comes from the MCP annotations (read-only →
read, destructive → irreversible, else write) unless the config says otherwise. A tool whose
input declares `idempotency_key` gets the step's key there (it is hidden from the Goalrail
schema), the MCP equivalent of the Idempotency-Key header. Each call opens its own session, so
a dead or restarted server costs one failed call (UPSTREAM_ERROR, retryable), not a stuck
executor.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shared.events import ErrorCode, TypedError
from shared.tools.openapi import OperationOptions
from shared.tools.registry import SideEffect, Tool, ToolContext, ToolError
from shared.tools.secrets import SecretRef, secret_values

IDEMPOTENCY_ARGUMENT = "idempotency_key"


class MCPSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    url: str | None = Field(None, description="Streamable HTTP endpoint, e.g. http://host:8000/mcp.")
    command: list[str] | None = Field(None, description="stdio: the server's command line.")
    cwd: Path | None = Field(None, description="stdio: the server's working directory.")
    env: dict[str, SecretRef] = Field(default_factory=dict, description="stdio: secrets for the server's env.")
    headers: dict[str, SecretRef] = Field(default_factory=dict, description="HTTP: auth headers from secrets.")
    include: list[str] | None = Field(None, description="MCP tool names to import; unset = all.")
    defaults: OperationOptions = Field(default_factory=OperationOptions)
    tools: dict[str, OperationOptions] = Field(default_factory=dict, description="Per MCP tool overrides.")
    connect_timeout_s: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPSource":
        if (self.url is None) == (self.command is None):
            raise ValueError(f"MCP source {self.name!r} needs exactly one of `url` or `command`")
        return self


@asynccontextmanager
async def connect(source: MCPSource, secrets: dict[str, SecretStr | None]) -> AsyncIterator[Any]:
    """An initialised MCP client session to the source."""
    from mcp import Client, StdioServerParameters

    if source.command is not None:
        import os

        env = {**os.environ, **{k: v.get_secret_value() for k, v in secrets.items() if v is not None}}
        server: Any = StdioServerParameters(command=source.command[0], args=source.command[1:], env=env,
                                            cwd=source.cwd)
        async with Client(server, read_timeout_seconds=source.connect_timeout_s) as client:
            yield client
        return
    assert source.url is not None
    headers = {k: v.get_secret_value() for k, v in secrets.items() if v is not None}
    if headers:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(headers=headers, timeout=source.connect_timeout_s) as http:
            async with Client(streamable_http_client(source.url, http_client=http)) as client:
                yield client
        return
    async with Client(source.url) as client:
        yield client


def _resolve_secrets(source: MCPSource) -> tuple[dict[str, SecretStr | None], dict[str, str]]:
    resolved: dict[str, SecretStr | None] = {}
    missing: dict[str, str] = {}
    for key, ref in {**source.env, **source.headers}.items():
        try:
            resolved[key] = ref.resolve()
        except LookupError as exc:
            missing[key] = str(exc)
    return resolved, missing


async def mcp_tools(source: MCPSource) -> tuple[list[Tool], set[str]]:
    """Discover the server's tools; raises when the server cannot be reached or listed."""
    secrets, missing = _resolve_secrets(source)
    if missing:
        raise LookupError(f"MCP source {source.name!r}: {missing}")
    listed: list[Any] = []
    async with connect(source, secrets) as client:
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
    found = {t.name for t in listed}
    if source.include is not None:
        unknown = sorted(set(source.include) - found)
        if unknown:
            raise ValueError(f"MCP source {source.name!r}: no tools {unknown} (found {sorted(found)})")
        listed = [t for t in listed if t.name in source.include]
    return [_tool(source, secrets, t) for t in listed], secret_values(secrets)


def _tool(source: MCPSource, secrets: dict[str, SecretStr | None], remote: Any) -> Tool:
    overrides = {**source.defaults.model_dump(exclude_none=True),
                 **source.tools.get(remote.name, OperationOptions()).model_dump(exclude_none=True)}
    options = OperationOptions.model_validate(overrides)
    hints = remote.annotations
    if hints is not None and hints.read_only_hint:
        default_effect: SideEffect = "read"
    elif hints is not None and hints.destructive_hint:
        default_effect = "irreversible"
    else:
        default_effect = "write"
    input_schema = dict(remote.input_schema or {"type": "object"})
    properties = dict(input_schema.get("properties") or {})
    takes_key = IDEMPOTENCY_ARGUMENT in properties
    if takes_key:
        properties.pop(IDEMPOTENCY_ARGUMENT)
        input_schema["properties"] = properties
        if IDEMPOTENCY_ARGUMENT in input_schema.get("required", []):
            input_schema["required"] = [r for r in input_schema["required"] if r != IDEMPOTENCY_ARGUMENT]
    side_effect = options.side_effect or default_effect
    read_only = side_effect == "read"
    idempotent = options.idempotent if options.idempotent is not None else (
        read_only or takes_key or bool(hints is not None and hints.idempotent_hint))
    name = options.tool or f"{source.name}.{_snake(remote.name)}"
    spec = options.tool_spec(
        "mcp", source.name, name=name,
        description=options.description or remote.description or remote.title or remote.name,
        input_schema=input_schema, output_schema=dict(remote.output_schema or {}),
        side_effect=side_effect, idempotent=idempotent,
    )

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        from mcp import MCPError

        call_arguments = {**arguments, IDEMPOTENCY_ARGUMENT: ctx.idempotency_key} if takes_key else arguments
        try:
            async with connect(source, secrets) as client:
                # the registry's own timeout (the same) fires first and maps to UPSTREAM_TIMEOUT
                result = await client.call_tool(remote.name, call_arguments, read_timeout_seconds=spec.timeout_s + 5)
        except MCPError as exc:
            raise ToolError(TypedError(
                code=ErrorCode.UPSTREAM_ERROR,
                message=f"{name}: the MCP server refused the call: {exc}",
                details={"tool": name, "status": None, "mcp_error": str(exc)[:300]},
            )) from None
        except Exception as exc:  # the server died, would not start, or the transport broke
            raise ToolError(TypedError(
                code=ErrorCode.UPSTREAM_ERROR,
                message=f"{name}: cannot reach MCP server {source.name!r} ({type(exc).__name__}); is it running?",
                retryable=True,
                details={"tool": name, "status": None, "cause": type(exc).__name__, "error": str(exc)[:300]},
            )) from None
        text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text")
        if result.is_error:
            raise ToolError(TypedError(
                code=ErrorCode.UPSTREAM_ERROR,
                message=f"{name} failed on the MCP server: {text[:200]}",
                details={"tool": name, "status": None, "error": text[:500]},
            ))
        if result.structured_content is not None:
            return result.structured_content
        try:
            return json.loads(text)
        except ValueError:
            return {"text": text}

    return Tool(spec, invoke)


def _snake(text: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text).lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return text if re.match(r"^[a-z]", text) else f"t_{text}"
