"""Tool sources against real servers on loopback: the demo business API (its OpenAPI document),
a third-party API imported by URL that fails in every way, Python tools; the executor's typed
errors, retries, permissions and the one-effect guarantee of repeated writes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from services.executor.execution import StepRunner, ToolLimiter  # noqa: E402
from shared.embedded.demo_api import create_app as demo_app  # noqa: E402
from shared.events import (  # noqa: E402
    Binding,
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Step,
    StepDispatched,
    StepFailed,
    StepSucceeded,
)
from shared.settings import Settings  # noqa: E402
from shared.tools.catalogue import build_catalogue  # noqa: E402
from shared.tools.openapi import OpenAPISource, load_document, openapi_tools  # noqa: E402
from shared.tools.policy import ToolPolicy  # noqa: E402
from shared.tools.registry import ToolRegistry  # noqa: E402
from tests.integration.tool_servers import LoopbackServer, failing_api  # noqa: E402

pytestmark = pytest.mark.integration
SECRET = "right-token-123"


@pytest.fixture(scope="module")
def demo() -> Iterator[LoopbackServer]:
    with LoopbackServer(demo_app()) as server:
        yield server


@pytest.fixture
def failing() -> Iterator[tuple[LoopbackServer, Any]]:
    app, calls = failing_api(slow_s=2.0)
    with LoopbackServer(app) as server:
        yield server, calls


@pytest.fixture
def outbox() -> Iterator[Any]:
    from shared.embedded.demo_smtp import SMTPOutboxServer

    with SMTPOutboxServer() as smtp:
        yield smtp


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


class NoModels:
    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no model calls here")


def runner(tools: ToolRegistry, spans: InMemorySpanExporter, demo_url: str = "", policy: ToolPolicy | None = None,
           artifacts: Any = None, smtp_url: str = "smtp://127.0.0.1:9", **options: Any) -> StepRunner:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return StepRunner(tools=tools, models=NoModels(), http=httpx.AsyncClient(), tracer=provider.get_tracer("t"),
                      tool_config={"demo_api_url": demo_url, "artifacts_dir": str(artifacts or ".goalrail/artifacts"),
                                   "smtp_url": smtp_url},
                      max_backoff_s=0.05, policy=policy, **options)


def dispatched(tool: str, inputs: dict[str, Any], *, goal: str = "g1", step: str = "s", attempt: int = 1,
               tenant: str = "acme", allowed_tools: list[str] | None = None, **step_fields: Any) -> StepDispatched:
    root = GoalSubmitted(id=f"{goal}:submitted", goal_id=goal, tenant=tenant,
                         goal=GoalSpec(text="test goal", requester="t"))
    return root.derive(
        StepDispatched, f"{goal}:{step}:{attempt}:dispatched", "router", plan_id=f"{goal}:plan",
        step=Step(id=step, task_type="act", tool=tool, **step_fields), attempt=attempt, resolved_inputs=inputs,
        allowed_tools=allowed_tools, binding=Binding(kind="tool", tool=tool, reason="test"),
        # a step marked needs_approval stands for one a person approved (the router's dispatch)
        approved_by="test-operator" if step_fields.get("needs_approval") else None,
    )


def failing_tools(server: LoopbackServer, **source: Any) -> ToolRegistry:
    """The failing API's tools, imported from its OpenAPI document by URL."""
    document_url = f"{server.url}/openapi.json"
    config = OpenAPISource(name="up", document=document_url, **source)
    tools, secrets = openapi_tools(load_document(document_url), config, document_url=document_url)
    registry = ToolRegistry()
    registry.extend(tools)
    registry.add_secrets(secrets)
    return registry


# --- source: the demo API's OpenAPI document -------------------------------------------------


def test_the_demo_catalogue_document_is_what_the_demo_api_serves(demo):
    served = httpx.get(f"{demo.url}/openapi.json").json()
    committed = json.loads((Settings().tools_config.parent / "openapi" / "demo_api.json").read_text())
    assert committed == served, "regenerate shared/config/openapi/demo_api.json from shared/embedded/demo_api.py"


async def test_demo_tools_read_and_write_through_the_real_api(demo, spans):
    run = runner(build_catalogue(), spans, demo.url)
    figures = await run.run(dispatched("sales.get_figures", {"quarter": "Q3", "year": 2026}, step="figures"))
    assert isinstance(figures, StepSucceeded), figures
    assert figures.output["totals"]["revenue"] > 0 and len(figures.output["regions"]) == 3
    accounts = await run.run(dispatched("crm.top_accounts", {"quarter": "Q3", "year": 2026, "limit": 2},
                                        step="accounts"))
    assert isinstance(accounts, StepSucceeded) and len(accounts.output["accounts"]) == 2
    report = await run.run(dispatched("reports.publish", {"title": "Q3", "body": "Fine."}, goal="g-demo",
                                      step="publish"))
    assert isinstance(report, StepSucceeded), report
    assert report.output["idempotency_key"] == "g-demo:publish"
    fetched = await run.run(dispatched("reports.get", {"report_id": report.output["report_id"]}, step="get"))
    assert isinstance(fetched, StepSucceeded) and fetched.output["title"] == "Q3"
    names = [s.name for s in spans.get_finished_spans()]
    assert "execute_tool reports.publish" in names


async def test_every_write_step_repeated_three_times_has_one_effect(demo, spans, tmp_path, outbox):
    smtp = outbox
    catalogue = build_catalogue()
    run = runner(catalogue, spans, demo.url, artifacts=tmp_path, smtp_url=smtp.url)
    target = await run.run(dispatched("tracker.create_issue", {"title": "target"}, goal="g-target", step="make"))
    assert isinstance(target, StepSucceeded), target
    issue_id = target.output["issue_id"]
    samples = {
        "reports.publish": {"title": "Board pack", "body": "Revenue up.", "audience": "board"},
        "tracker.create_issue": {"title": "Follow up at-risk accounts", "assignee": "cfo@acme.example"},
        "tracker.update_issue": {"issue_id": issue_id, "status": "in_progress", "comment": "on it"},
        "crm.set_customer_status": {"customer_id": "CUST-001", "status": "churned", "reason": "moved to a rival"},
        "files.write_spreadsheet": {"title": "Figures", "sheets": [{"name": "S", "columns": ["a"], "rows": [[1]]}]},
        "charts.render": {"title": "Revenue", "labels": ["EMEA"], "series": [{"name": "r", "values": [1.0]}]},
        "mail.deliver": {"to": ["cfo@acme.example"], "subject": "Q3", "body": "The Q3 report is out."},
    }
    writes = [spec for spec in catalogue.catalogue() if spec.side_effect != "read"]
    assert {spec.name for spec in writes} == set(samples), "add sample inputs for new write tools"

    def effects() -> dict[str, int]:
        issues = httpx.get(f"{demo.url}/tracker/issues").json()
        return {"reports.publish": len(httpx.get(f"{demo.url}/reports").json()),
                "tracker.create_issue": len(issues),
                "tracker.update_issue": sum(len(i["history"]) for i in issues if i["issue_id"] == issue_id),
                "crm.set_customer_status": len(httpx.get(f"{demo.url}/crm/customers/CUST-001").json()["history"]),
                "files.write_spreadsheet": len(list(tmp_path.glob("*.xlsx"))),
                "charts.render": len(list(tmp_path.glob("*.png"))),
                "mail.deliver": len(smtp.outbox.messages)}

    for number, spec in enumerate(writes):
        before = effects()
        outputs = []
        # three deliveries of the step: a redelivery, then a retry attempt after an unknown outcome
        for attempt in (1, 1, 2):
            approved = spec.side_effect == "irreversible"  # such a step runs only once approved
            result = await run.run(dispatched(spec.name, samples[spec.name], goal="g-thrice", step=f"write_{number}",
                                              attempt=attempt, needs_approval=approved))
            assert isinstance(result, StepSucceeded), result
            outputs.append(result.output)
        assert outputs[0] == outputs[1] == outputs[2], spec.name
        after = effects()
        changed = {name: after[name] - before[name] for name in after if after[name] != before[name]}
        expected = 2 if spec.name == "tracker.update_issue" else 1  # a status change and a comment
        assert changed == {spec.name: expected}, spec.name
    http_writes = [spec for spec in writes if spec.source.startswith("openapi:")]
    keys = [c["idempotency_key"] for c in httpx.get(f"{demo.url}/_calls").json()
            if (c["idempotency_key"] or "").startswith("g-thrice:")]
    assert len(keys) == 3 * len(http_writes) and len(set(keys)) == len(http_writes)  # each with its step's key


# --- source: an OpenAPI document by URL, failing in every way --------------------------------


async def test_rate_limited_with_long_retry_after_fails_at_once(failing, spans):
    server, calls = failing
    result = await runner(failing_tools(server), spans).run(dispatched("up.rate_limited", {}))
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.error.retryable) == (ErrorCode.RATE_LIMITED, True)
    assert result.error.details["retry_after_s"] == 120.0 and result.error.details["status"] == 429
    assert calls["rate_limited"] == 1  # Retry-After beyond what the executor waits: no retry here


async def test_rate_limited_waits_for_retry_after_then_succeeds(failing, spans):
    server, calls = failing
    started = time.monotonic()
    result = await runner(failing_tools(server), spans).run(dispatched("up.rate_limited_once", {}))
    assert isinstance(result, StepSucceeded), result
    assert calls["rate_limited_once"] == 2 and time.monotonic() - started >= 0.95


async def test_server_error_is_retried_then_upstream_error_with_status(failing, spans):
    server, calls = failing
    result = await runner(failing_tools(server), spans).run(dispatched("up.broken", {}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.UPSTREAM_ERROR
    assert result.error.details["status"] == 500 and result.error.retryable
    assert "database on fire" in result.error.details["body"]
    assert calls["broken"] == 3  # the runner's three attempts, with backoff and jitter


async def test_client_error_is_not_retried(failing, spans):
    server, calls = failing
    result = await runner(failing_tools(server), spans).run(dispatched("up.get_thing", {"thing_id": "nope"}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.UPSTREAM_ERROR
    assert (result.error.details["status"], result.error.retryable) == (404, False)
    assert calls["get_thing"] == 1


async def test_slow_upstream_is_upstream_timeout(failing, spans):
    server, calls = failing
    tools = failing_tools(server, operations={"slow": {"timeout_s": 0.2}})
    result = await runner(tools, spans, attempts=2).run(dispatched("up.slow", {}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.UPSTREAM_TIMEOUT
    assert result.error.retryable and result.error.details["timeout_s"] == 0.2
    assert calls["slow"] == 2


async def test_output_that_breaks_the_schema_is_output_invalid(failing, spans):
    server, _ = failing
    result = await runner(failing_tools(server), spans).run(dispatched("up.bad_output", {}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.OUTPUT_INVALID
    assert {e["field"] for e in result.error.details["errors"]} == {"id", "value"}


async def test_invalid_input_never_reaches_the_upstream(failing, spans):
    server, calls = failing
    result = await runner(failing_tools(server), spans).run(
        dispatched("up.create_thing", {"id": "x", "value": "many", "colour": "red"}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.INVALID_INPUT
    fields = {e["field"] for e in result.error.details["errors"]}
    assert fields == {"(root)", "value"}  # the unknown property and the wrong type
    assert calls["create_thing"] == 0


async def test_unknown_tool_is_tool_not_found(failing, spans):
    server, _ = failing
    result = await runner(failing_tools(server), spans).run(dispatched("up.nothing", {}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.TOOL_NOT_FOUND
    assert "up.broken" in result.error.details["known_tools"]


async def test_irreversible_tool_without_approval_is_a_policy_violation(failing, spans):
    server, calls = failing
    tools = failing_tools(server)
    assert tools.get("up.delete_thing").spec.side_effect == "irreversible"
    result = await runner(tools, spans).run(dispatched("up.delete_thing", {"thing_id": "a"}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.POLICY_VIOLATION
    assert calls["delete_thing"] == 0
    approved = await runner(tools, spans).run(dispatched("up.delete_thing", {"thing_id": "a"}, step="d2",
                                                         needs_approval=True, side_effect="irreversible"))
    assert isinstance(approved, StepSucceeded) and calls["delete_thing"] == 1


async def test_writes_carry_the_step_idempotency_key(failing, spans):
    server, calls = failing
    run = runner(failing_tools(server), spans)
    first = await run.run(dispatched("up.create_thing", {"id": "a", "value": 1}, goal="gk", step="make"))
    again = await run.run(dispatched("up.create_thing", {"id": "b", "value": 2}, goal="gk", step="make", attempt=2))
    assert isinstance(first, StepSucceeded) and isinstance(again, StepSucceeded)
    assert again.output == first.output == {"id": "a", "value": 1}  # the upstream deduplicated by key


# --- secrets ---------------------------------------------------------------------------------


async def test_auth_header_comes_from_a_secret_and_never_leaks(failing, spans, monkeypatch, caplog):
    server, _ = failing
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("UP_TOKEN", SECRET)
    tools = failing_tools(server, headers={"Authorization": {"env": "UP_TOKEN", "prefix": "Bearer "}})
    assert "Authorization" not in json.dumps(tools.get("up.secure").spec.input_schema)
    ok = await runner(tools, spans).run(dispatched("up.secure", {}))
    assert isinstance(ok, StepSucceeded), ok

    # a wrong credential: the careless upstream echoes what it got into its error body
    monkeypatch.setenv("UP_TOKEN", "wrong-token-456")
    wrong = failing_tools(server, headers={"Authorization": {"env": "UP_TOKEN", "prefix": "Bearer "}})
    failed = await runner(wrong, spans).run(dispatched("up.secure", {}, step="s2"))
    assert isinstance(failed, StepFailed) and failed.error.code is ErrorCode.PERMISSION_DENIED
    assert failed.error.details["status"] == 401
    event_json = failed.model_dump_json()
    assert "wrong-token-456" not in event_json and "[REDACTED]" in event_json
    span_text = json.dumps([dict(s.attributes or {}) | {"status": s.status.description}
                            for s in spans.get_finished_spans()])
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET, "wrong-token-456"):
        assert secret not in span_text and secret not in logs and secret not in event_json


async def test_missing_secret_is_permission_denied_with_the_variable_named(failing, spans, monkeypatch):
    server, calls = failing
    monkeypatch.delenv("UP_TOKEN", raising=False)
    tools = failing_tools(server, headers={"Authorization": {"env": "UP_TOKEN"}})
    result = await runner(tools, spans).run(dispatched("up.secure", {}))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.PERMISSION_DENIED
    assert "UP_TOKEN" in json.dumps(result.error.details) and calls["secure"] == 0


async def test_demo_api_key_from_the_environment(monkeypatch, spans):
    with LoopbackServer(demo_app(api_key="demo-key-789")) as server:
        monkeypatch.delenv("GOALRAIL_DEMO_API_KEY", raising=False)
        refused = await runner(build_catalogue(), spans, server.url).run(
            dispatched("sales.get_figures", {"quarter": "Q1", "year": 2026}))
        assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.PERMISSION_DENIED
        monkeypatch.setenv("GOALRAIL_DEMO_API_KEY", "demo-key-789")
        ok = await runner(build_catalogue(), spans, server.url).run(
            dispatched("sales.get_figures", {"quarter": "Q1", "year": 2026}))
        assert isinstance(ok, StepSucceeded), ok


# --- permissions -----------------------------------------------------------------------------


async def test_a_plan_naming_a_forbidden_tool_is_refused(demo, spans):
    policy = ToolPolicy.load(Settings().tool_policy)
    run = runner(build_catalogue(), spans, demo.url, policy=policy)
    before = len(httpx.get(f"{demo.url}/reports").json())
    publish = {"title": "Leak", "body": "Should not be published."}
    # the tenant lacks the scope
    readonly = await run.run(dispatched("reports.publish", publish, tenant="readonly", goal="g-ro"))
    assert isinstance(readonly, StepFailed) and readonly.error.code is ErrorCode.PERMISSION_DENIED
    assert readonly.error.details["permission_scope"] == "reports.write"
    # the goal's constraints do not list the tool
    narrowed = await run.run(dispatched("reports.publish", publish, tenant="acme", goal="g-narrow",
                                        allowed_tools=["sales.get_figures"]))
    assert isinstance(narrowed, StepFailed) and narrowed.error.code is ErrorCode.PERMISSION_DENIED
    assert len(httpx.get(f"{demo.url}/reports").json()) == before  # nothing was published
    # reading is fine for the read-only tenant
    figures = await run.run(dispatched("sales.get_figures", {"quarter": "Q2", "year": 2026}, tenant="readonly"))
    assert isinstance(figures, StepSucceeded)


# --- bounded concurrency ---------------------------------------------------------------------


async def test_a_slow_tool_does_not_block_other_tools(failing, spans):
    import asyncio

    server, calls = failing
    tools = failing_tools(server, operations={"slow": {"timeout_s": 5}})
    run = runner(tools, spans, limiter=ToolLimiter(total=4, per_tool=2), attempts=1)
    slow = [asyncio.create_task(run.run(dispatched("up.slow", {}, goal=f"slow{i}"))) for i in range(4)]
    await asyncio.sleep(0.3)
    assert run.limiter.in_flight["up.slow"] == 2  # the other two wait for a slow slot
    started = time.monotonic()
    quick = await run.run(dispatched("up.get_thing", {"thing_id": "x"}, goal="quick"))
    assert time.monotonic() - started < 1.0  # not queued behind the slow calls
    assert isinstance(quick, StepFailed) and quick.error.details["status"] == 404
    results = await asyncio.gather(*slow)
    assert all(isinstance(r, StepSucceeded) for r in results) and calls["slow"] == 4


# --- source: an MCP server (official SDK), over stdio and Streamable HTTP ---------------------


@pytest.fixture
def notes_file(tmp_path, monkeypatch) -> Any:
    path = tmp_path / "notes.json"
    monkeypatch.setenv("MCP_NOTES_FILE", str(path))
    return path


async def mcp_registry(**source: Any) -> ToolRegistry:
    from shared.tools.mcp import MCPSource, mcp_tools

    tools, secrets = await mcp_tools(MCPSource(name="notes", **source))
    registry = ToolRegistry()
    registry.extend(tools)
    registry.add_secrets(secrets)
    return registry


STDIO = {"command": [sys.executable, "-m", "tests.integration.mcp_server"],
         "cwd": str(Path(__file__).resolve().parents[2])}


async def test_mcp_stdio_server_tools(notes_file, spans, monkeypatch):
    monkeypatch.setenv("GOALRAIL_TEST_MCP_TOKEN", "mcp-token-42")
    tools = await mcp_registry(**STDIO, env={"MCP_TEST_TOKEN": {"env": "GOALRAIL_TEST_MCP_TOKEN"}},
                               tools={"nap": {"timeout_s": 3}})
    specs = {s.name: s for s in tools.catalogue()}
    assert specs["notes.add"].side_effect == "read" and specs["notes.add"].source == "mcp:notes"
    assert specs["notes.create_note"].side_effect == "write" and specs["notes.create_note"].idempotent
    assert "idempotency_key" not in specs["notes.create_note"].input_schema["properties"]
    assert specs["notes.purge_notes"].side_effect == "irreversible"
    run = runner(tools, spans, attempts=1)
    added = await run.run(dispatched("notes.add", {"a": 2, "b": 40}))
    assert isinstance(added, StepSucceeded) and added.output == {"result": 42}
    token = await run.run(dispatched("notes.token_check", {}, step="tok"))
    assert isinstance(token, StepSucceeded) and token.output == {"result": True}  # the secret reached its env
    exploded = await run.run(dispatched("notes.explode", {}, step="boom"))
    assert isinstance(exploded, StepFailed) and exploded.error.code is ErrorCode.UPSTREAM_ERROR
    slept = await run.run(dispatched("notes.nap", {"seconds": 30}, step="nap"))
    assert isinstance(slept, StepFailed) and slept.error.code is ErrorCode.UPSTREAM_TIMEOUT
    purge = await run.run(dispatched("notes.purge_notes", {}, step="purge"))
    assert isinstance(purge, StepFailed) and purge.error.code is ErrorCode.POLICY_VIOLATION


async def test_mcp_write_repeated_three_times_has_one_effect(notes_file, spans):
    tools = await mcp_registry(**STDIO)
    run = runner(tools, spans)
    outputs = []
    for attempt in (1, 1, 2):
        result = await run.run(dispatched("notes.create_note", {"title": "minutes"}, goal="g-mcp", step="note",
                                          attempt=attempt))
        assert isinstance(result, StepSucceeded), result
        outputs.append(result.output)
    assert outputs == [{"note_id": "note-1", "title": "minutes"}] * 3
    assert list(json.loads(notes_file.read_text())) == ["g-mcp:note"]


async def test_mcp_streamable_http_server_tools(notes_file, spans, monkeypatch):
    from tests.integration.mcp_server import server

    monkeypatch.setenv("GOALRAIL_TEST_MCP_HEADER", "header-secret-77")
    with LoopbackServer(server.streamable_http_app(), lifespan="on") as http:
        tools = await mcp_registry(url=f"{http.url}/mcp", headers={"X-Token": {"env": "GOALRAIL_TEST_MCP_HEADER"}})
        run = runner(tools, spans)
        added = await run.run(dispatched("notes.add", {"a": 1, "b": 1}))
        assert isinstance(added, StepSucceeded) and added.output == {"result": 2}
        invalid = await run.run(dispatched("notes.add", {"a": "one"}, step="bad"))
        assert isinstance(invalid, StepFailed) and invalid.error.code is ErrorCode.INVALID_INPUT
        for attempt in (1, 2, 3):
            note = await run.run(dispatched("notes.create_note", {"title": "t"}, goal="g-http", step="n",
                                            attempt=attempt))
            assert isinstance(note, StepSucceeded) and note.output["note_id"] == "note-1"
    assert len(json.loads(notes_file.read_text())) == 1


async def test_configured_mcp_sources_join_the_catalogue(notes_file, tmp_path, monkeypatch):

    config = yaml.safe_load((Settings().tools_config).read_text())
    config["openapi"][0]["document"] = str(Settings().tools_config.parent / config["openapi"][0]["document"])
    config["mcp"] = [{"name": "notes", **STDIO, "include": ["add"]},
                     {"name": "gone", "command": [sys.executable, "-c", "raise SystemExit(3)"]}]
    (tmp_path / "tools.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("GOALRAIL_TOOLS_CONFIG", str(tmp_path / "tools.yaml"))
    catalogue = build_catalogue(Settings())  # from async code too: discovery runs in a thread
    assert "notes.add" in catalogue and "notes.create_note" not in catalogue
    assert "sales.get_figures" in catalogue  # the other sources are unaffected by the dead server


# --- the mail system: SMTP outbox -----------------------------------------------------------


async def test_mail_is_irreversible_needs_approval_and_is_delivered_once(spans):
    from shared.embedded.demo_smtp import SMTPOutboxServer

    mail = {"to": ["board@acme.example"], "subject": "Q3 report", "body": "Attached: the Q3 report."}
    with SMTPOutboxServer() as smtp:
        run = runner(build_catalogue(), spans, smtp_url=smtp.url)
        refused = await run.run(dispatched("mail.deliver", mail, step="mail"))
        assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.POLICY_VIOLATION
        assert smtp.outbox.deliveries == 0
        for attempt in (1, 1, 2):
            sent = await run.run(dispatched("mail.deliver", mail, goal="g-mail", step="mail", attempt=attempt,
                                            needs_approval=True, side_effect="irreversible"))
            assert isinstance(sent, StepSucceeded), sent
        assert smtp.outbox.deliveries == 3 and len(smtp.outbox.messages) == 1
        (message,) = smtp.outbox.messages
        assert message.recipients == ["board@acme.example"] and message.subject == "Q3 report"
        assert message.message_id == sent.output["message_id"]
        bad = await run.run(dispatched("mail.deliver", {**mail, "to": ["not an address"]}, step="bad",
                                       needs_approval=True))
        assert isinstance(bad, StepFailed) and bad.error.code is ErrorCode.INVALID_INPUT
    down = await runner(build_catalogue(), spans, smtp_url=smtp.url, attempts=1).run(
        dispatched("mail.deliver", mail, step="down", needs_approval=True))
    assert isinstance(down, StepFailed) and down.error.code is ErrorCode.UPSTREAM_ERROR and down.error.retryable
