"""The tool model and registry: one description of a tool, whatever it wraps.

A tool is a `ToolSpec` (name, description, input/output JSON Schema, side-effect class, data
classes, permission scope, timeout, idempotency) plus an async `invoke(arguments, ctx)`. Three
sources build tools: Python functions with the `@tool` decorator (schemas from pydantic types,
here), HTTP operations of an OpenAPI 3 document (`shared.tools.openapi`) and the tools of an MCP
server (`shared.tools.mcp`). Calling a tool validates the input against its schema first, applies
the tool's timeout, validates the output, and maps every failure to a TypedError with secrets
redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import re
import time
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from shared.events import ErrorCode, TypedError
from shared.tools.secrets import redact

if TYPE_CHECKING:
    import httpx

SideEffect = Literal["read", "write", "irreversible"]
TOOL_NAME = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"


class ToolSpec(BaseModel):
    """What the planner, the router, the policy and a person see of a tool."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=TOOL_NAME)
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] = Field(default_factory=dict, description="{} = any output.")
    side_effect: SideEffect = "read"
    data_classes: list[str] = Field(default_factory=list)
    permission_scope: str = Field("default", min_length=1)
    timeout_s: float = Field(30.0, gt=0)
    idempotent: bool = Field(True, description="Repeating a call (with the same Idempotency-Key) has one effect.")
    source: str = Field("python", description="python, openapi:<name> or mcp:<name>.")


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


ToolInvoke = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    invoke: ToolInvoke  # gets arguments already validated against spec.input_schema


# --- source 1: Python functions ------------------------------------------------------------


def tool(name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a pydantic-typed function a tool; `ToolRegistry.add(fn)` registers it.

    The function takes either one pydantic model (the input) or typed keyword parameters, plus
    optionally a parameter annotated `ToolContext`. Its return annotation is the output schema.
    `options` are `python_tool`'s keywords (description, side_effect, data_classes,
    permission_scope, timeout_s, idempotent, input_model, output_model).
    It stays callable as before; the tool is on `fn.__goalrail_tool__`.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__goalrail_tool__ = python_tool(fn, name=name, **options)  # type: ignore[attr-defined]
        return fn

    return decorate


def python_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    data_classes: list[str] | None = None,
    permission_scope: str = "default",
    timeout_s: float = 30.0,
    idempotent: bool = True,
    input_model: type[BaseModel] | None = None,
    output_model: type[BaseModel] | None = None,
) -> Tool:
    """A Tool from a function; `input_model`/`output_model` override what its annotations say
    (the function then takes `(args, ctx)`)."""
    hints = typing.get_type_hints(fn) if input_model is None else {}
    parameters = list(inspect.signature(fn).parameters.values())
    if input_model is not None:
        ctx_names = [parameters[1].name] if len(parameters) > 1 else []
        inputs = parameters[:1]
    else:
        ctx_names = [p.name for p in parameters if hints.get(p.name) is ToolContext]
        inputs = [p for p in parameters if p.name not in ctx_names]
    single = input_model or (hints.get(inputs[0].name) if len(inputs) == 1 else None)
    if inspect.isclass(single) and issubclass(single, BaseModel):
        input_model = single
        as_model = True
    else:
        fields: dict[str, Any] = {}
        for p in inputs:
            if p.name not in hints:
                raise TypeError(f"tool {fn.__name__}: parameter {p.name!r} needs a type annotation")
            fields[p.name] = (hints[p.name], ... if p.default is inspect.Parameter.empty else p.default)
        input_model = create_model(f"{fn.__name__}_input", __config__=ConfigDict(extra="forbid"), **fields)
        as_model = False
    returns = output_model or hints.get("return", Any)
    output_schema = {} if returns in (Any, None, type(None)) else TypeAdapter(returns).json_schema(mode="serialization")
    spec = ToolSpec(
        name=name or fn.__name__,
        description=inspect.cleandoc(description or fn.__doc__ or name or fn.__name__),
        input_schema=input_model.model_json_schema(),
        output_schema=output_schema,
        side_effect=side_effect,
        data_classes=data_classes or [],
        permission_scope=permission_scope,
        timeout_s=timeout_s,
        idempotent=idempotent,
        source="python",
    )

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        try:
            args = input_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_invalid(spec.name, "input", ErrorCode.INVALID_INPUT, [
                {"field": ".".join(map(str, e["loc"])) or "(root)", "problem": e["msg"]} for e in exc.errors()
            ])) from None
        kwargs: dict[str, Any] = {n: ctx for n in ctx_names}
        if as_model:
            kwargs[inputs[0].name] = args
        else:
            kwargs.update({p.name: getattr(args, p.name) for p in inputs})
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        return await asyncio.to_thread(fn, **kwargs)

    return Tool(spec, invoke)


# --- the registry --------------------------------------------------------------------------


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._secrets: set[str] = set()

    def add(self, item: Tool | Callable[..., Any]) -> Tool:
        """Register a Tool, or a function decorated with `@tool`."""
        entry = item if isinstance(item, Tool) else getattr(item, "__goalrail_tool__", None)
        if not isinstance(entry, Tool):
            raise TypeError(f"{item!r} is neither a Tool nor decorated with @tool")
        if entry.spec.name in self._tools:
            raise ValueError(f"tool {entry.spec.name!r} is registered twice")
        self._tools[entry.spec.name] = entry
        return entry

    def extend(self, tools: Iterable[Tool]) -> None:
        for entry in tools:
            self.add(entry)

    def add_secrets(self, values: Iterable[str]) -> None:
        """Values that must never leave a call: they are redacted from errors and outputs."""
        self._secrets.update(v for v in values if v)

    def tool(self, name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@registry.tool(...)`: `@tool(...)` and register at once."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            tool(name, **options)(fn)
            self.add(fn)
            return fn

        return register

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def catalogue(self) -> list[ToolSpec]:
        return [self._tools[name].spec for name in self.names()]

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            close = [n for n in self.names() if n.split(".")[0] == name.split(".")[0]] or self.names()
            raise ToolError(
                TypedError(
                    code=ErrorCode.TOOL_NOT_FOUND,
                    message=f"no tool named {name!r}; see `goalrail tools list`",
                    details={"tool": name, "known_tools": close},
                )
            ) from None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate, call with the tool's timeout, validate the output. Raises ToolError."""
        try:
            return redact(await self._call(name, arguments, ctx), self._secrets)
        except ToolError as exc:
            raise ToolError(redact(exc.error, self._secrets)) from None

    async def _call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        import httpx  # here, not at the top: only the executor calls tools, the others need no httpx

        entry = self.get(name)
        spec = entry.spec
        validate(arguments, spec.input_schema, ErrorCode.INVALID_INPUT, name)
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(entry.invoke(arguments, ctx), timeout=spec.timeout_s)
        except ToolError:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ToolError(
                TypedError(
                    code=ErrorCode.UPSTREAM_TIMEOUT,
                    message=f"{name} did not answer within {spec.timeout_s:g}s; retry later or raise the "
                    "tool's timeout",
                    retryable=True,
                    details={"tool": name, "timeout_s": spec.timeout_s,
                             "elapsed_s": round(time.perf_counter() - started, 3), "cause": type(exc).__name__},
                )
            ) from None
        except httpx.HTTPStatusError as exc:
            raise ToolError(upstream_status_error(name, exc.response)) from None
        except httpx.TransportError as exc:
            raise ToolError(
                TypedError(
                    code=ErrorCode.UPSTREAM_ERROR,
                    message=f"{name} could not reach its upstream ({type(exc).__name__}); is it running?",
                    retryable=True,
                    details={"tool": name, "status": None, "cause": type(exc).__name__, "error": str(exc)[:300]},
                )
            ) from None
        except Exception as exc:  # a bug or an unexpected failure inside the tool itself
            raise ToolError(
                TypedError(
                    code=ErrorCode.UPSTREAM_ERROR,
                    message=f"{name} raised {type(exc).__name__}: {str(exc)[:200]}",
                    details={"tool": name, "status": None, "cause": type(exc).__name__, "error": str(exc)[:300]},
                )
            ) from exc
        output = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        if spec.output_schema:
            validate(output, spec.output_schema, ErrorCode.OUTPUT_INVALID, name)
        return output


def upstream_status_error(tool_name: str, response: httpx.Response) -> TypedError:
    """The typed error for an HTTP error status of a tool's upstream."""
    status = response.status_code
    body = response.text[:500]
    base = {"tool": tool_name, "status": status, "body": body}
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return TypedError(
            code=ErrorCode.RATE_LIMITED,
            message=f"{tool_name} is rate limited upstream; retry after "
            f"{'%gs' % retry_after if retry_after is not None else 'a while'}",
            retryable=True,
            details={**base, "retry_after_s": retry_after},
        )
    if status in (401, 403):
        return TypedError(
            code=ErrorCode.PERMISSION_DENIED,
            message=f"{tool_name} was refused by its upstream (HTTP {status}); check the credentials "
            "configured for its source",
            details=base,
        )
    if status in (408, 504):
        return TypedError(
            code=ErrorCode.UPSTREAM_TIMEOUT,
            message=f"{tool_name}'s upstream timed out (HTTP {status})",
            retryable=True,
            details=base,
        )
    if status in (400, 422):
        return TypedError(
            code=ErrorCode.INVALID_INPUT,
            message=f"{tool_name}'s upstream rejected the input (HTTP {status}): {body[:200]}",
            details=base,
        )
    retryable = status >= 500
    return TypedError(
        code=ErrorCode.UPSTREAM_ERROR,
        message=f"{tool_name} failed upstream with HTTP {status}"
        + (" (retryable)" if retryable else "") + f": {body[:200]}",
        retryable=retryable,
        details=base,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}
_VALIDATORS_KEPT = 1024


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """One validator per schema object: building one costs more than validating a call's input.
    The cache holds the schema itself, so its id cannot be reused by another object."""
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        if len(_VALIDATORS) >= _VALIDATORS_KEPT:
            _VALIDATORS.clear()
        cached = _VALIDATORS[id(schema)] = (schema, jsonschema.Draft202012Validator(schema))
    return cached[1]


def validate(value: Any, schema: dict[str, Any], code: ErrorCode, tool_name: str) -> None:
    validator = _validator(schema)
    if validator.is_valid(value):
        return
    problems = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    if problems:
        details = [
            {"field": ".".join(str(p) for p in e.absolute_path) or "(root)", "problem": e.message[:300]}
            for e in problems[:20]
        ]
        what = "input" if code is ErrorCode.INVALID_INPUT else "output"
        raise ToolError(_invalid(tool_name, what, code, details))


def _invalid(tool_name: str, what: str, code: ErrorCode, details: list[dict[str, str]]) -> TypedError:
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
    hint = (f"fix the arguments; `goalrail tools show {tool_name}` prints the input schema"
            if what == "input" else "the upstream answered with a shape its output schema does not allow")
    return TypedError(code=code, message=f"{tool_name} {what} is invalid: {summary}",
                      details={"tool": tool_name, "errors": details, "hint": hint})
