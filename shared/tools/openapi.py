"""Tool source 2: the HTTP operations of an OpenAPI 3 document (a file or a URL).

Each operation becomes one tool: operationId (or a configured name) → name, summary and
description → description, path/query/header parameters and the JSON body's properties → one
input object schema, the first 2xx JSON response → output schema. Side effects default from the
method (GET read, POST/PUT/PATCH write, DELETE irreversible); writes always send the step's
`Idempotency-Key`. Auth headers come from secrets (env or file) and are redacted from errors.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from shared.events import ErrorCode, TypedError
from shared.tools.registry import SideEffect, Tool, ToolContext, ToolError, ToolSpec
from shared.tools.secrets import SecretRef, secret_values

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
IDEMPOTENCY_HEADER = "Idempotency-Key"


class OperationOptions(BaseModel):
    """Per-operation overrides (config wins over `x-goalrail-*` extensions in the document)."""

    model_config = ConfigDict(extra="forbid")

    tool: str | None = None
    description: str | None = None
    side_effect: SideEffect | None = None
    data_classes: list[str] | None = None
    permission_scope: str | None = None
    timeout_s: float | None = Field(None, gt=0)
    idempotent: bool | None = None

    def tool_spec(self, kind: str, source: str, **fields: Any) -> ToolSpec:
        """The spec of an operation imported from `source` (of `kind`, e.g. openapi or mcp): `fields`
        (name, description, schemas, side effect, idempotency) and the overrides every imported
        operation defaults alike: no data classes, the source's name as scope, a 30 s timeout."""
        return ToolSpec(
            **fields,
            data_classes=self.data_classes or [],
            permission_scope=self.permission_scope or source,
            timeout_s=self.timeout_s or 30.0,
            source=f"{kind}:{source}",
        )


class OpenAPISource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    document: str = Field(description="http(s) URL or file path (relative to the config file).")
    base_url: str | None = Field(
        None, description="Where calls go; `{setting}` placeholders take Goalrail settings. "
        "Default: the document's first server."
    )
    headers: dict[str, SecretRef] = Field(default_factory=dict, description="Auth headers from secrets.")
    include: list[str] | None = Field(None, description="operationIds to import; unset = all.")
    defaults: OperationOptions = Field(default_factory=OperationOptions)
    operations: dict[str, OperationOptions] = Field(default_factory=dict)


def load_document(location: str, base_dir: Path | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """An OpenAPI document from a URL or a file, JSON or YAML."""
    if location.startswith(("http://", "https://")):
        import httpx  # only for a document at a URL: the default ones are files

        response = httpx.get(location, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
        text = response.text
    else:
        path = Path(location)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        text = path.read_text()
    document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3."):
        raise ValueError(f"{location} is not an OpenAPI 3 document")
    return document


def openapi_tools(
    document: dict[str, Any],
    source: OpenAPISource,
    *,
    document_url: str | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[list[Tool], set[str]]:
    """The tools of `document`, and the secret values the registry must redact."""
    base_url = _base_url(document, source, document_url, settings or {})
    headers: dict[str, SecretStr | None] = {}
    missing: dict[str, str] = {}
    for header, ref in source.headers.items():
        try:
            headers[header] = ref.resolve()
        except LookupError as exc:
            missing[header] = str(exc)
    tools: list[Tool] = []
    for path, item in document.get("paths", {}).items():
        shared_params = item.get("parameters", [])
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            op_id = operation.get("operationId") or _snake(f"{method}_{path}")
            if source.include is not None and op_id not in source.include:
                continue
            operation = _resolve(operation, document)
            params = [_resolve(p, document) for p in shared_params] + operation.get("parameters", [])
            tools.append(_operation_tool(source, base_url, path, method, op_id, operation, params, headers, missing))
    if source.include is not None:
        found = sorted(filter(None, (_op_of(t) for t in tools)))
        unknown = [op for op in source.include if op not in found]
        if unknown:
            raise ValueError(f"OpenAPI source {source.name!r}: no operations {unknown} (found {found})")
    return tools, secret_values(headers)


def _operation_tool(
    source: OpenAPISource,
    base_url: Callable[[ToolContext], str],
    path: str,
    method: str,
    op_id: str,
    operation: dict[str, Any],
    params: list[dict[str, Any]],
    headers: dict[str, SecretStr | None],
    missing: dict[str, str],
) -> Tool:
    options = _options(source, op_id, operation)
    auth_headers = {h.lower() for h in source.headers}
    properties: dict[str, Any] = {}
    required: list[str] = []
    where: dict[str, tuple[str, str]] = {}  # input name -> (location, wire name)
    takes_idempotency_key = False
    for param in params:
        location, wire = param["in"], param["name"]
        if location == "header" and wire.lower() == IDEMPOTENCY_HEADER.lower():
            takes_idempotency_key = True
            continue
        if location == "header" and wire.lower() in auth_headers:
            continue
        key = wire if wire not in properties else f"{location}_{wire}"
        schema = dict(param.get("schema", {}))
        if param.get("description") and "description" not in schema:
            schema["description"] = param["description"]
        properties[key] = schema
        where[key] = (location, wire)
        if param.get("required") or location == "path":
            required.append(key)
    body_schema, body_required = _json_body(operation)
    flatten = (
        body_schema is not None
        and body_schema.get("type") == "object"
        and isinstance(body_schema.get("properties"), dict)
        and not set(body_schema["properties"]) & set(properties)
    )
    if body_schema is not None and flatten:
        for key, schema in body_schema["properties"].items():
            properties[key] = schema
            where[key] = ("body", key)
        required.extend(k for k in body_schema.get("required", []) if k in body_schema["properties"])
    elif body_schema is not None:
        properties["body"] = body_schema
        where["body"] = ("body", "")
        if body_required:
            required.append("body")
    input_schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        input_schema["required"] = sorted(set(required))

    default_effect: SideEffect = "read" if method in ("get", "head", "options") else (
        "irreversible" if method == "delete" else "write")
    side_effect = options.side_effect or default_effect
    idempotent = options.idempotent if options.idempotent is not None else (
        method in ("get", "head", "options", "put", "delete") or takes_idempotency_key)
    name = options.tool or f"{source.name}.{_snake(op_id)}"
    description = options.description or "\n\n".join(
        part for part in (operation.get("summary"), operation.get("description")) if part
    ) or f"{method.upper()} {path}"
    spec = options.tool_spec("openapi", source.name, name=name, description=description, input_schema=input_schema,
                             output_schema=_output_schema(operation), side_effect=side_effect, idempotent=idempotent)
    send_key = takes_idempotency_key or side_effect != "read"
    flattened_body = body_schema is not None and flatten

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        if missing:
            raise ToolError(TypedError(
                code=ErrorCode.PERMISSION_DENIED,
                message=f"{name}: credentials for source {source.name!r} are not configured",
                details={"tool": name, "missing": missing, "hint": "set the secrets named in the tools config"},
            ))
        url_path = path
        query: dict[str, Any] = {}
        request_headers: dict[str, str] = {}
        body: Any = {} if flattened_body else None
        for key, value in arguments.items():
            location, wire = where[key]
            if value is None and location in ("query", "header", "cookie"):
                continue  # an explicit null of an optional parameter: leave it out
            if location == "path":
                url_path = url_path.replace("{" + wire + "}", quote(str(value), safe=""))
            elif location == "query":
                query[wire] = _wire_value(value)
            elif location == "header":
                request_headers[wire] = str(_wire_value(value))
            elif location == "cookie":
                request_headers["Cookie"] = f"{wire}={value}"
            elif flattened_body:
                body[wire] = value
            else:
                body = value
        for header, secret in headers.items():
            if secret is not None:
                request_headers[header] = secret.get_secret_value()
        if send_key:
            request_headers[IDEMPOTENCY_HEADER] = ctx.idempotency_key
        response = await ctx.http.request(
            method.upper(),
            base_url(ctx).rstrip("/") + url_path,
            params=query or None,
            headers=request_headers,
            json=body,
            timeout=spec.timeout_s,
        )
        response.raise_for_status()
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ToolError(TypedError(
                code=ErrorCode.OUTPUT_INVALID,
                message=f"{name}: the upstream answered HTTP {response.status_code} with a body that is not JSON",
                details={"tool": name, "status": response.status_code,
                         "content_type": response.headers.get("content-type"), "body": response.text[:300]},
            )) from None

    invoke.operation_id = op_id  # type: ignore[attr-defined]
    return Tool(spec, invoke)


def _op_of(entry: Tool) -> str | None:
    return getattr(entry.invoke, "operation_id", None)


def _options(source: OpenAPISource, op_id: str, operation: dict[str, Any]) -> OperationOptions:
    extension = {
        key: operation[f"x-goalrail-{key.replace('_', '-')}"]
        for key in OperationOptions.model_fields
        if f"x-goalrail-{key.replace('_', '-')}" in operation
    }
    merged = {**source.defaults.model_dump(exclude_none=True), **extension,
              **source.operations.get(op_id, OperationOptions()).model_dump(exclude_none=True)}
    return OperationOptions.model_validate(merged)


def _base_url(
    document: dict[str, Any], source: OpenAPISource, document_url: str | None, settings: dict[str, Any]
) -> Callable[[ToolContext], str]:
    """Where calls go. `{setting}` placeholders are filled per call from the caller's tool config
    (the executor passes its settings), else from the settings given at import."""
    if source.base_url:
        template = source.base_url
        try:
            template.format(**settings)
        except KeyError as exc:
            raise ValueError(f"OpenAPI source {source.name!r}: base_url names unknown setting {exc}") from None
        return lambda ctx: template.format(**{**settings, **ctx.config})
    servers = document.get("servers") or []
    url = servers[0]["url"] if servers else ""
    if document_url:
        url = urljoin(document_url, url or "/")
    elif not url.startswith(("http://", "https://")):
        raise ValueError(f"OpenAPI source {source.name!r}: set base_url (the document names no absolute server)")
    return lambda ctx: url


def _json_body(operation: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    body = operation.get("requestBody")
    if not body:
        return None, False
    for media, content in body.get("content", {}).items():
        if media.startswith("application/json") or media.endswith("+json"):
            return content.get("schema", {}), bool(body.get("required"))
    raise ValueError(f"operation {operation.get('operationId')}: only JSON request bodies are supported")


def _output_schema(operation: dict[str, Any]) -> dict[str, Any]:
    for status, response in sorted(operation.get("responses", {}).items()):
        if str(status).startswith("2"):
            for media, content in response.get("content", {}).items():
                if media.startswith("application/json") or media.endswith("+json"):
                    return content.get("schema", {})
            return {}
    return {}


def _resolve(node: Any, document: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Inline local `$ref`s (recursion stops at a cycle) and turn OpenAPI 3.0 `nullable` into
    JSON Schema, so a tool's schemas stand alone."""
    if isinstance(node, list):
        return [_resolve(v, document, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported (got {ref!r})")
        if ref in seen:
            return {}
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**copy.deepcopy(target), **siblings}, document, (*seen, ref))
    resolved = {k: _resolve(v, document, seen) for k, v in node.items()}
    if resolved.pop("nullable", False) is True:
        resolved = {"anyOf": [resolved, {"type": "null"}]}
    return resolved


def _wire_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _snake(text: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text).lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return text if re.match(r"^[a-z]", text) else f"op_{text}"
