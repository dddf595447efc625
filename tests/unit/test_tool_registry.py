"""The tool model and its sources without servers: `@tool` on pydantic-typed functions, the
OpenAPI importer's mapping (3.0 and 3.1 documents, files, extensions, overrides), typed errors,
secrets redaction, the tool policy and the `goalrail tools` CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError
from typer.testing import CliRunner

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from shared.events import ErrorCode, TypedError  # noqa: E402
from shared.settings import CONFIG_DIR, Settings  # noqa: E402
from shared.tools.catalogue import ToolsConfig, build_catalogue  # noqa: E402
from shared.tools.openapi import OpenAPISource, load_document, openapi_tools  # noqa: E402
from shared.tools.policy import ToolPolicy  # noqa: E402
from shared.tools.registry import (  # noqa: E402
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolSpec,
    parse_retry_after,
    tool,
    upstream_status_error,
)
from shared.tools.secrets import REDACTED, SecretRef, redact  # noqa: E402


class Period(BaseModel):
    quarter: str = Field(pattern=r"^Q[1-4]$")
    year: int = Field(ge=2000)


class Forecast(BaseModel):
    quarter: str
    revenue: int


@tool("finance.forecast", side_effect="read", data_classes=["internal"], permission_scope="finance.read",
      timeout_s=2)
async def forecast(period: Period, ctx: ToolContext) -> Forecast:
    """Forecast revenue of one quarter.

    Deterministic, for tests."""
    return Forecast(quarter=period.quarter, revenue=1000 * period.year + len(ctx.idempotency_key))


@tool("math.add", idempotent=True)
def add(a: int, b: int = 2) -> int:
    """Add two integers (a sync function runs in a thread)."""
    return a + b


@tool("math.broken")
def broken(a: int) -> int:
    return "not an int"  # type: ignore[return-value]


def ctx(key: str = "g:s", transport: Any = None, **config: Any) -> ToolContext:
    http = httpx.AsyncClient(transport=transport) if transport else httpx.AsyncClient()
    return ToolContext(key, f"{key}:1", http, config)


def registry(*fns: Any) -> ToolRegistry:
    r = ToolRegistry()
    for fn in fns:
        r.add(fn)
    return r


# --- python tools ----------------------------------------------------------------------------


def test_decorator_builds_the_full_tool_model():
    spec = forecast.__goalrail_tool__.spec
    assert isinstance(spec, ToolSpec)
    assert spec.name == "finance.forecast" and spec.source == "python"
    assert spec.description == "Forecast revenue of one quarter.\n\nDeterministic, for tests."
    assert spec.input_schema["properties"]["quarter"]["pattern"] == "^Q[1-4]$"
    assert spec.output_schema["required"] == ["quarter", "revenue"]
    assert (spec.side_effect, spec.data_classes, spec.permission_scope, spec.timeout_s, spec.idempotent) == (
        "read", ["internal"], "finance.read", 2, True)
    adder = add.__goalrail_tool__.spec
    assert adder.input_schema["required"] == ["a"] and adder.input_schema["additionalProperties"] is False
    assert adder.output_schema == {"type": "integer"}


async def test_python_tools_are_called_with_validated_typed_input():
    tools = registry(forecast, add)
    assert await tools.call("finance.forecast", {"quarter": "Q3", "year": 2026}, ctx("abc")) == {
        "quarter": "Q3", "revenue": 2_026_003}
    assert await tools.call("math.add", {"a": 40}, ctx()) == 42
    with pytest.raises(ToolError) as info:
        await tools.call("math.add", {"a": 1, "c": 3}, ctx())
    assert info.value.error.code is ErrorCode.INVALID_INPUT


async def test_python_tool_output_is_validated():
    with pytest.raises(ToolError) as info:
        await registry(broken).call("math.broken", {"a": 1}, ctx())
    assert info.value.error.code is ErrorCode.OUTPUT_INVALID


def test_registering_undecorated_or_twice_is_refused():
    tools = registry(add)
    with pytest.raises(ValueError, match="twice"):
        tools.add(add)
    with pytest.raises(TypeError, match="@tool"):
        tools.add(lambda: None)
    with pytest.raises(ValidationError):
        tool("Bad Name")(add)


async def test_tool_not_found_names_the_close_tools():
    with pytest.raises(ToolError) as info:
        await registry(add, forecast).call("math.mul", {}, ctx())
    assert info.value.error.code is ErrorCode.TOOL_NOT_FOUND
    assert info.value.error.details["known_tools"] == ["math.add"]


# --- OpenAPI import --------------------------------------------------------------------------

DOC_30 = {
    "openapi": "3.0.3",
    "info": {"title": "Tickets", "version": "1"},
    "servers": [{"url": "https://tickets.example/api"}],
    "paths": {
        "/projects/{project}/tickets": {
            "parameters": [{"name": "project", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "listTickets",
                "summary": "List tickets",
                "description": "Open tickets of a project.",
                "parameters": [
                    {"name": "closed", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "ok", "content": {"application/json": {
                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Ticket"}}}}}},
            },
            "post": {
                "operationId": "createTicket",
                "x-goalrail-permission-scope": "tickets.write",
                "x-goalrail-data-classes": ["pii"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/NewTicket"}}}},
                "responses": {"201": {"description": "ok", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Ticket"}}}}},
            },
        },
        "/tickets/bulk": {
            "put": {
                "operationId": "bulkTickets",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "array", "items": {"$ref": "#/components/schemas/NewTicket"}}}}},
                "responses": {"204": {"description": "done"}},
            },
        },
        "/tickets/{id}": {
            "delete": {
                "operationId": "deleteTicket",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"204": {"description": "gone"}},
            },
        },
    },
    "components": {"schemas": {
        "NewTicket": {"type": "object", "required": ["title"], "properties": {
            "title": {"type": "string"}, "assignee": {"type": "string", "nullable": True}}},
        "Ticket": {"allOf": [{"$ref": "#/components/schemas/NewTicket"}, {"type": "object", "required": ["id"],
                                                                          "properties": {"id": {"type": "integer"}}}]},
    }},
}


@pytest.fixture
def tickets(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(DOC_30))
    source = OpenAPISource(
        name="tickets", document="tickets.yaml", headers={"Authorization": {"env": "TICKETS_TOKEN", "prefix": "Bearer "}},
        operations={"listTickets": {"tool": "tickets.list", "permission_scope": "tickets.read", "timeout_s": 3}},
    )
    os.environ["TICKETS_TOKEN"] = "tok-secret-1"
    try:
        tools, secrets = openapi_tools(load_document(source.document, tmp_path), source)
    finally:
        del os.environ["TICKETS_TOKEN"]
    r = ToolRegistry()
    r.extend(tools)
    r.add_secrets(secrets)
    return {"registry": r, "specs": {t.spec.name: t.spec for t in tools}, "secrets": secrets}


def test_openapi_operations_become_tools(tickets):
    specs = tickets["specs"]
    assert sorted(specs) == ["tickets.bulk_tickets", "tickets.create_ticket", "tickets.delete_ticket", "tickets.list"]
    listing = specs["tickets.list"]
    assert listing.description == "List tickets\n\nOpen tickets of a project."
    assert (listing.side_effect, listing.permission_scope, listing.timeout_s) == ("read", "tickets.read", 3)
    assert listing.input_schema["required"] == ["project"]
    assert set(listing.input_schema["properties"]) == {"project", "closed", "X-Trace"}
    assert listing.output_schema["items"]["allOf"][1]["required"] == ["id"]  # $ref inlined
    create = specs["tickets.create_ticket"]
    assert (create.side_effect, create.permission_scope, create.data_classes) == ("write", "tickets.write", ["pii"])
    assert create.idempotent is False  # a POST that declares no Idempotency-Key
    assert create.input_schema["required"] == ["project", "title"]  # body properties flattened
    assert create.input_schema["properties"]["assignee"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert "body" in specs["tickets.bulk_tickets"].input_schema["properties"]  # a non-object body
    assert specs["tickets.delete_ticket"].side_effect == "irreversible"
    assert tickets["secrets"] == {"Bearer tok-secret-1", "tok-secret-1"}


async def test_openapi_tools_map_parameters_onto_the_request(tickets):
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=[{"id": 1, "title": "a", "assignee": None}])
        if request.method == "POST":
            return httpx.Response(201, json={"id": 2, **json.loads(request.content)})
        return httpx.Response(204)

    tools = tickets["registry"]
    listed = await tools.call("tickets.list", {"project": "a b", "closed": False, "X-Trace": "t1"},
                              ctx(transport=httpx.MockTransport(upstream)))
    assert listed == [{"id": 1, "title": "a", "assignee": None}]
    created = await tools.call("tickets.create_ticket", {"project": "p", "title": "t"},
                               ctx("g:create", transport=httpx.MockTransport(upstream)))
    assert created == {"id": 2, "title": "t"}
    assert await tools.call("tickets.bulk_tickets", {"body": [{"title": "x"}]},
                            ctx("g:bulk", transport=httpx.MockTransport(upstream))) is None
    get, post, put = seen
    assert str(get.url) == "https://tickets.example/api/projects/a%20b/tickets?closed=false"
    assert get.headers["X-Trace"] == "t1" and get.headers["Authorization"] == "Bearer tok-secret-1"
    assert "Idempotency-Key" not in get.headers  # reads need none
    assert post.headers["Idempotency-Key"] == "g:create" and json.loads(post.content) == {"title": "t"}
    assert put.headers["Idempotency-Key"] == "g:bulk" and json.loads(put.content) == [{"title": "x"}]


async def test_openapi_errors_are_typed_and_secrets_redacted(tickets):
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad token {request.headers['Authorization']}")

    with pytest.raises(ToolError) as info:
        await tickets["registry"].call("tickets.list", {"project": "p"}, ctx(transport=httpx.MockTransport(upstream)))
    error = info.value.error
    assert error.code is ErrorCode.PERMISSION_DENIED and error.details["status"] == 401
    assert "tok-secret-1" not in error.model_dump_json() and REDACTED in error.details["body"]


async def test_non_json_answer_is_output_invalid(tickets):
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>", headers={"content-type": "text/html"})

    with pytest.raises(ToolError) as info:
        await tickets["registry"].call("tickets.list", {"project": "p"}, ctx(transport=httpx.MockTransport(upstream)))
    assert info.value.error.code is ErrorCode.OUTPUT_INVALID


def test_openapi_include_must_name_real_operations(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        openapi_tools(DOC_30, OpenAPISource(name="t", document="x", include=["listTickets", "nope"]))


def test_a_relative_server_needs_a_base_url():
    doc = {**DOC_30, "servers": [{"url": "/api"}]}
    with pytest.raises(ValueError, match="base_url"):
        openapi_tools(doc, OpenAPISource(name="t", document="x"))
    tools, _ = openapi_tools(doc, OpenAPISource(name="t", document="x"), document_url="http://h:1/openapi.json")
    assert tools


def test_not_an_openapi_document(tmp_path):
    (tmp_path / "x.json").write_text('{"swagger": "2.0"}')
    with pytest.raises(ValueError, match="OpenAPI 3"):
        load_document("x.json", tmp_path)


# --- typed errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), ("1.5", 1.5), (None, None), ("soon", None)])
def test_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    from email.utils import formatdate
    import time

    assert 25 <= parse_retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30


def test_status_errors_say_what_to_do():
    request = httpx.Request("GET", "http://x")
    limited = upstream_status_error("t.x", httpx.Response(429, headers={"Retry-After": "3"}, request=request))
    assert limited.code is ErrorCode.RATE_LIMITED and limited.details["retry_after_s"] == 3.0
    assert "retry after 3s" in limited.message
    failed = upstream_status_error("t.x", httpx.Response(502, text="bad gateway", request=request))
    assert (failed.code, failed.retryable, failed.details["status"]) == (ErrorCode.UPSTREAM_ERROR, True, 502)


def test_redact_walks_models_and_containers():
    error = TypedError(code=ErrorCode.UPSTREAM_ERROR, message="key s3cr3t!", details={"h": ["s3cr3t!"]})
    clean = redact(error, {"s3cr3t!"})
    assert clean.message == f"key {REDACTED}" and clean.details == {"h": [REDACTED]}
    assert redact({"a": ("x", 1)}, set()) == {"a": ("x", 1)}


def test_secret_ref_needs_one_source(tmp_path):
    with pytest.raises(ValidationError):
        SecretRef()
    with pytest.raises(ValidationError):
        SecretRef(env="A", file=tmp_path / "x")
    (tmp_path / "token").write_text("from-file\n")
    assert SecretRef(file=tmp_path / "token").resolve().get_secret_value() == "from-file"
    assert SecretRef(env="GOALRAIL_SURELY_UNSET", optional=True).resolve() is None
    with pytest.raises(LookupError, match="GOALRAIL_SURELY_UNSET"):
        SecretRef(env="GOALRAIL_SURELY_UNSET").resolve()


# --- the built-in catalogue, its config and the policy ---------------------------------------


def test_the_playbook_tools_exist_in_the_catalogue():
    names = set(build_catalogue().names())
    for playbook in (CONFIG_DIR / "playbooks").glob("*.yaml"):
        for step in yaml.safe_load(playbook.read_text())["steps"]:
            if step.get("tool"):
                assert step["tool"] in names, f"{playbook.name}: {step['tool']}"


def test_built_in_configs_validate():
    config = ToolsConfig.load(CONFIG_DIR / "tools.yaml")
    assert config.openapi[0].name == "demo"
    policy = ToolPolicy.load(CONFIG_DIR / "tool_policy.yaml")
    assert policy.for_tenant("acme") is policy.tenants["*"]
    with pytest.raises(ValidationError):
        ToolPolicy.model_validate({"tenants": {"a": {"scopes": [], "typo": 1}}})


def test_policy_scopes_globs_data_classes_and_denials():
    policy = ToolPolicy.model_validate({"tenants": {
        "acme": {"scopes": ["sales.*"], "data_classes": ["internal"], "deny_tools": ["sales.secret_*"]},
    }})
    spec = ToolSpec(name="sales.figures", description="d", input_schema={}, permission_scope="sales.read",
                    data_classes=["internal"])
    assert policy.check(spec, "acme") is None
    assert policy.check(spec, "other").details["hint"].startswith("add the tenant")
    assert policy.check(spec, "acme", allowed_tools=["crm.x"]).code is ErrorCode.PERMISSION_DENIED
    pii = spec.model_copy(update={"data_classes": ["pii"]})
    assert policy.check(pii, "acme").details["data_classes"] == ["pii"]
    denied = spec.model_copy(update={"name": "sales.secret_list"})
    assert "denied" in policy.check(denied, "acme").message
    crm = spec.model_copy(update={"permission_scope": "crm.read"})
    assert policy.check(crm, "acme").details["granted_scopes"] == ["sales.*"]
    assert policy.allowed([spec, crm], "acme") == [spec]


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_tools_list_show_call():
    from shared.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["tools", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "reports.publish" in {t["name"] for t in json.loads(listed.output)}
    sandbox = runner.invoke(app, ["tools", "list", "--json", "--tenant", "sandbox"])
    assert [t["name"] for t in json.loads(sandbox.output)] == ["noop.echo", "noop.sleep"]  # the noop scope only
    shown = runner.invoke(app, ["tools", "show", "sales.get_figures"])
    assert json.loads(shown.output)["input_schema"]["required"] == ["quarter", "year"]
    missing = runner.invoke(app, ["tools", "show", "sales.nothing"])
    assert missing.exit_code == 1 and json.loads(missing.output)["code"] == "TOOL_NOT_FOUND"
    called = runner.invoke(app, ["tools", "call", "noop.echo", "--input", '{"a": 1}'])
    assert called.exit_code == 0 and json.loads(called.output) == {"echo": {"a": 1}}
    invalid = runner.invoke(app, ["tools", "call", "sales.get_figures", "-i", '{"quarter": "Q9", "year": 2026}'])
    assert invalid.exit_code == 1 and json.loads(invalid.output)["code"] == "INVALID_INPUT"
    refused = runner.invoke(app, ["tools", "call", "reports.publish", "--tenant", "readonly",
                                  "-i", '{"title": "t", "body": "b"}'])
    assert refused.exit_code == 1 and json.loads(refused.output)["code"] == "PERMISSION_DENIED"


def test_settings_point_at_the_built_in_tool_configs():
    settings = Settings()
    assert settings.tools_config.is_file() and settings.tool_policy.is_file()
    assert settings.tool_concurrency >= settings.tool_concurrency_per_tool


@tool("math.crash")
def crash(a: int) -> int:
    raise ZeroDivisionError("division by zero")


async def test_a_tool_that_raises_is_a_typed_error():
    with pytest.raises(ToolError) as info:
        await registry(crash).call("math.crash", {"a": 1}, ctx())
    error = info.value.error
    assert (error.code, error.retryable, error.details["cause"]) == (ErrorCode.UPSTREAM_ERROR, False,
                                                                      "ZeroDivisionError")


# --- document tools (spreadsheet, chart) -------------------------------------------------------


async def test_spreadsheet_and_chart_tools_write_one_file_per_step(tmp_path):
    from openpyxl import load_workbook

    tools = build_catalogue()
    sheet = {"title": "Q3 figures", "sheets": [{"name": "Regions", "columns": ["region", "revenue"],
                                                "rows": [["EMEA", 1200], ["APAC", 900]]}]}
    chart = {"title": "Q3 revenue", "labels": ["EMEA", "APAC"],
             "series": [{"name": "revenue", "values": [1200, 900]}, {"name": "target", "values": [1000, 1000]}]}
    first = await tools.call("files.write_spreadsheet", sheet, ctx("g:sheet", artifacts_dir=str(tmp_path)))
    again = await tools.call("files.write_spreadsheet", sheet, ctx("g:sheet", artifacts_dir=str(tmp_path)))
    assert first == again
    workbook = load_workbook(first["path"])
    assert [[c.value for c in row] for row in workbook["Regions"].iter_rows()] == [
        ["region", "revenue"], ["EMEA", 1200], ["APAC", 900]]
    png = await tools.call("charts.render", chart, ctx("g:chart", artifacts_dir=str(tmp_path)))
    assert Path(png["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await tools.call("charts.render", chart, ctx("g:chart", artifacts_dir=str(tmp_path)))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".png", ".xlsx"]  # one file per step
    with pytest.raises(ToolError) as info:
        await tools.call("charts.render", {**chart, "labels": ["EMEA"]}, ctx("g:bad", artifacts_dir=str(tmp_path)))
    assert info.value.error.code is ErrorCode.INVALID_INPUT


async def test_the_context_may_come_first():
    @tool("ctx.first")
    async def first(ctx: ToolContext, period: Period) -> dict[str, str]:
        return {"key": ctx.idempotency_key, "quarter": period.quarter}

    assert await registry(first).call("ctx.first", {"quarter": "Q1", "year": 2026}, ctx("k1")) == {
        "key": "k1", "quarter": "Q1"}


async def test_document_tools_take_records_as_a_business_api_returns_them(tmp_path):
    from openpyxl import load_workbook

    tools = build_catalogue()
    regions = [{"region": "EMEA", "revenue": 1200, "target": 1000}, {"region": "APAC", "revenue": 900, "target": 1000}]
    sheet = {"title": "Q3", "sheets": [{"name": "Regions", "records": regions},
                                       {"name": "Revenue", "columns": ["revenue", "region"], "records": regions}]}
    written = await tools.call("files.write_spreadsheet", sheet, ctx("g:records", artifacts_dir=str(tmp_path)))
    workbook = load_workbook(written["path"])
    assert [[c.value for c in row] for row in workbook["Regions"].iter_rows()] == [
        ["region", "revenue", "target"], ["EMEA", 1200, 1000], ["APAC", 900, 1000]]
    assert [[c.value for c in row] for row in workbook["Revenue"].iter_rows()] == [
        ["revenue", "region"], [1200, "EMEA"], [900, "APAC"]]
    chart = {"title": "Q3 by region", "records": regions, "label_field": "region", "value_fields": ["revenue", "target"]}
    png = await tools.call("charts.render", chart, ctx("g:records-chart", artifacts_dir=str(tmp_path)))
    assert Path(png["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ToolError) as info:
        await tools.call("charts.render", {**chart, "value_fields": ["margin"]}, ctx("g:bad", artifacts_dir=str(tmp_path)))
    assert info.value.error.code is ErrorCode.INVALID_INPUT
