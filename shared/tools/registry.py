"""The tool model and registry: one description of a tool, whatever it wraps.

A tool is an async function registered with a decorator; its input and output JSON Schemas come
from pydantic models. Calling a tool validates the input against the schema first, applies the
tool's timeout, validates the output, and maps every failure to a TypedError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jsonschema
from pydantic import BaseModel, Field

from shared.events import ErrorCode, TypedError


class ToolSpec(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    side_effect: Literal["read", "write", "irreversible"] = "read"
    data_classes: list[str] = Field(default_factory=list)
    permission_scope: str = "default"
    timeout_s: float = Field(30.0, gt=0)
    idempotent: bool = True


@dataclass(frozen=True)
class ToolContext:
    """What a call knows about its caller. Writes pass `idempotency_key` to the upstream."""

    idempotency_key: str
    call_id: str
    http: httpx.AsyncClient
    config: dict[str, Any] = field(default_factory=dict)


class ToolError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


ToolFn = Callable[[Any, ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    fn: ToolFn
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def tool(
        self,
        name: str,
        *,
        input_model: type[BaseModel],
        output_model: type[BaseModel] | None = None,
        side_effect: Literal["read", "write", "irreversible"] = "read",
        data_classes: list[str] | None = None,
        permission_scope: str = "default",
        timeout_s: float = 30.0,
        idempotent: bool = True,
    ) -> Callable[[ToolFn], ToolFn]:
        """Register an async `fn(args: input_model, ctx: ToolContext) -> output` as a tool."""

        def register(fn: ToolFn) -> ToolFn:
            spec = ToolSpec(
                name=name,
                description=(fn.__doc__ or name).strip(),
                input_schema=input_model.model_json_schema(),
                output_schema=output_model.model_json_schema() if output_model else {"type": "object"},
                side_effect=side_effect,
                data_classes=data_classes or [],
                permission_scope=permission_scope,
                timeout_s=timeout_s,
                idempotent=idempotent,
            )
            if name in self._tools:
                raise ValueError(f"tool {name!r} is registered twice")
            self._tools[name] = Tool(spec, fn, input_model, output_model)
            return fn

        return register

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def catalogue(self) -> list[ToolSpec]:
        return [self._tools[name].spec for name in self.names()]

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(
                TypedError(
                    code=ErrorCode.TOOL_NOT_FOUND,
                    message=f"no tool named {name!r}",
                    details={"tool": name, "known_tools": self.names()},
                )
            ) from None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate, call with the tool's timeout, validate the output. Raises ToolError."""
        tool = self.get(name)
        _validate(arguments, tool.spec.input_schema, ErrorCode.INVALID_INPUT, name)
        args = tool.input_model.model_validate(arguments)
        try:
            result = await asyncio.wait_for(tool.fn(args, ctx), timeout=tool.spec.timeout_s)
        except ToolError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ToolError(
                TypedError(
                    code=ErrorCode.UPSTREAM_TIMEOUT,
                    message=f"{name} did not answer within {tool.spec.timeout_s:g}s",
                    retryable=True,
                    details={"tool": name, "timeout_s": tool.spec.timeout_s, "cause": type(exc).__name__},
                )
            ) from exc
        except httpx.HTTPStatusError as exc:
            raise ToolError(upstream_status_error(name, exc.response)) from exc
        except httpx.TransportError as exc:
            raise ToolError(
                TypedError(
                    code=ErrorCode.UPSTREAM_ERROR,
                    message=f"{name} could not reach its upstream: {exc}",
                    retryable=True,
                    details={"tool": name, "cause": type(exc).__name__},
                )
            ) from exc
        output = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        _validate(output, tool.spec.output_schema, ErrorCode.OUTPUT_INVALID, name)
        return output


def upstream_status_error(tool: str, response: httpx.Response) -> TypedError:
    status = response.status_code
    body = response.text[:500]
    if status == 429:
        retry_after = response.headers.get("retry-after")
        return TypedError(
            code=ErrorCode.RATE_LIMITED,
            message=f"{tool} is rate limited upstream (retry after {retry_after or 'unknown'}s)",
            retryable=True,
            details={"tool": tool, "status": status, "retry_after": retry_after},
        )
    if status in (401, 403):
        return TypedError(
            code=ErrorCode.PERMISSION_DENIED,
            message=f"{tool} was refused by its upstream (HTTP {status})",
            details={"tool": tool, "status": status, "body": body},
        )
    return TypedError(
        code=ErrorCode.UPSTREAM_ERROR,
        message=f"{tool} failed upstream with HTTP {status}: {body[:200]}",
        retryable=status >= 500 or status == 408,
        details={"tool": tool, "status": status, "body": body},
    )


def _validate(value: Any, schema: dict[str, Any], code: ErrorCode, tool: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if problems:
        details = [
            {"field": ".".join(str(p) for p in e.absolute_path) or "(root)", "problem": e.message}
            for e in problems
        ]
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        what = "input" if code is ErrorCode.INVALID_INPUT else "output"
        raise ToolError(
            TypedError(code=code, message=f"{tool} {what} is invalid: {summary}", details={"tool": tool, "errors": details})
        )
