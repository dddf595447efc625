"""Executor domain: tool registry validation and error mapping, the built-in catalogue against the
demo business API (in process), idempotent execution per key, and model tasks on the offline provider."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel, Field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from services.executor.execution import StepRunner, execution_key, tool_idempotency_key  # noqa: E402
from services.executor.handlers import ExecutorDeps, handle  # noqa: E402
from shared.events import (  # noqa: E402
    Binding,
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Step,
    StepDispatched,
    StepFailed,
    StepSucceeded,
    TypedError,
    Usage,
)
from shared.embedded.demo_api import create_app as create_demo_api, sales_figures  # noqa: E402
from shared.models.client import ModelClient, ModelResult  # noqa: E402
from shared.store import open_database  # noqa: E402
from shared.tools.catalogue import build_catalogue  # noqa: E402
from shared.tools.registry import ToolContext, ToolError, ToolRegistry  # noqa: E402

TOOL_NAMES = ["test.bad_output", "test.count", "test.drop_table", "test.fetch", "test.slow"]
ROOT = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", goal=GoalSpec(text="abc", requester="r"))


class CountArgs(BaseModel):
    n: int = Field(ge=0)


class Counter:
    """A registry with tools that count their calls and fail as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ToolContext]] = []
        self.registry = ToolRegistry()
        self.failures: list[Exception] = []

        @self.registry.tool("test.count")
        async def count(args: CountArgs, ctx: ToolContext) -> Any:
            """Counts."""
            self.calls.append((args, ctx))
            if self.failures:
                raise self.failures.pop(0)
            return {"n": args.n, "calls": len(self.calls)}

        @self.registry.tool("test.slow", timeout_s=0.05)
        async def slow(args: CountArgs, ctx: ToolContext) -> Any:
            self.calls.append((args, ctx))
            await asyncio.sleep(1)

        @self.registry.tool("test.bad_output")
        async def bad_output(args: CountArgs) -> CountArgs:
            return {"n": "many"}  # type: ignore[return-value]

        @self.registry.tool("test.fetch")
        async def fetch(args: CountArgs, ctx: ToolContext) -> Any:
            response = await ctx.http.get("http://upstream.test/x")
            response.raise_for_status()
            return response.json()

        @self.registry.tool("test.drop_table", side_effect="irreversible")
        async def drop_table(args: CountArgs) -> Any:
            self.calls.append((args, None))
            return {}


class FakeModels:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def complete(self, model, task_type, instruction, data, fallbacks=None) -> ModelResult:
        self.calls.append((model, task_type, instruction, data, fallbacks))
        return ModelResult(f"text for {instruction}", model, Usage(input_tokens=4, output_tokens=2), 1.0)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def make_runner(tools: ToolRegistry, spans: InMemorySpanExporter, models: Any = None,
                handler: Any = None) -> StepRunner:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    transport = httpx.MockTransport(handler or (lambda request: httpx.Response(404)))
    return StepRunner(
        tools=tools, models=models or FakeModels(), http=httpx.AsyncClient(transport=transport),
        tracer=provider.get_tracer("test"), tool_config={"demo_api_url": "http://demo.test/"},
        attempts=3, max_backoff_s=0.001,
    )


def dispatched(tool: str | None = "test.count", inputs: dict | None = None, attempt: int = 1,
               allowed_tools: list[str] | None = None, step_id: str = "s", **step: Any) -> StepDispatched:
    if tool:
        binding = Binding(kind="tool", tool=tool, reason="test")
        step_model = Step(id=step_id, task_type="act", tool=tool, **step)
    else:
        binding = Binding(kind="model", model="goalrail/offline-writer", fallbacks=["goalrail/other"], reason="t")
        step_model = Step(id=step_id, task_type="summarise", **step)
    return ROOT.derive(StepDispatched, f"g:{step_id}:{attempt}:dispatched", "router", plan_id="g:plan",
                       step=step_model, attempt=attempt, resolved_inputs=inputs if inputs is not None else {"n": 1},
                       allowed_tools=allowed_tools, binding=binding)


# --- registry ------------------------------------------------------------------------------


def no_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(599)))


def test_registry_describes_tools_with_json_schemas():
    registry = Counter().registry
    assert registry.names() == TOOL_NAMES
    spec = registry.get("test.count").spec
    assert spec.description == "Counts."
    assert spec.input_schema["properties"]["n"]["minimum"] == 0
    assert spec.input_schema["required"] == ["n"]
    assert registry.get("test.bad_output").spec.output_schema["properties"]["n"]["type"] == "integer"
    assert registry.get("test.drop_table").spec.side_effect == "irreversible"
    assert "test.count" in registry and "test.nope" not in registry


def test_registering_a_name_twice_is_refused():
    registry = Counter().registry

    async def again(args: CountArgs) -> Any: ...

    with pytest.raises(ValueError, match="registered twice"):
        registry.tool("test.count")(again)


async def test_unknown_tool_is_tool_not_found():
    with pytest.raises(ToolError) as info:
        await Counter().registry.call("test.nope", {}, ToolContext("k", "c", no_http()))
    assert info.value.error.code is ErrorCode.TOOL_NOT_FOUND
    assert info.value.error.details["tool"] == "test.nope"
    assert "test.count" in info.value.error.details["known_tools"]


@pytest.mark.parametrize(("arguments", "field"), [({"n": -1}, "n"), ({"n": "x"}, "n"), ({}, "(root)")])
async def test_invalid_input_is_refused_before_the_call(arguments, field):
    counter = Counter()
    with pytest.raises(ToolError) as info:
        await counter.registry.call("test.count", arguments, ToolContext("k", "c", no_http()))
    assert info.value.error.code is ErrorCode.INVALID_INPUT and not info.value.error.retryable
    assert info.value.error.details["errors"][0]["field"] == field
    assert counter.calls == []


async def test_invalid_output_is_output_invalid():
    with pytest.raises(ToolError) as info:
        await Counter().registry.call("test.bad_output", {"n": 1}, ToolContext("k", "c", no_http()))
    assert info.value.error.code is ErrorCode.OUTPUT_INVALID
    assert info.value.error.details["errors"][0]["field"] == "n"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(429, ErrorCode.RATE_LIMITED, True), (403, ErrorCode.PERMISSION_DENIED, False),
     (401, ErrorCode.PERMISSION_DENIED, False), (503, ErrorCode.UPSTREAM_ERROR, True),
     (500, ErrorCode.UPSTREAM_ERROR, True), (404, ErrorCode.UPSTREAM_ERROR, False)],
)
async def test_upstream_http_status_maps_to_typed_errors(status, code, retryable):
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"retry-after": "7"}, text="nope")

    ctx = ToolContext("k", "c", httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    with pytest.raises(ToolError) as info:
        await Counter().registry.call("test.fetch", {"n": 1}, ctx)
    assert (info.value.error.code, info.value.error.retryable) == (code, retryable)
    assert info.value.error.details["status"] == status
    if status == 429:
        assert info.value.error.details["retry_after_s"] == 7.0


async def test_unreachable_upstream_is_a_retryable_upstream_error():
    def upstream(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    ctx = ToolContext("k", "c", httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    with pytest.raises(ToolError) as info:
        await Counter().registry.call("test.fetch", {"n": 1}, ctx)
    assert (info.value.error.code, info.value.error.retryable) == (ErrorCode.UPSTREAM_ERROR, True)


# --- the built-in catalogue against the demo business API ----------------------------------


def demo_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_demo_api()))


def test_builtin_catalogue_has_the_demo_tools():
    catalogue = build_catalogue()
    assert {"sales.get_figures", "crm.top_accounts", "reports.publish", "noop.echo"} <= set(catalogue.names())
    assert catalogue.get("reports.publish").spec.side_effect != "read"
    assert catalogue.get("sales.get_figures").spec.side_effect == "read"


async def test_catalogue_tools_call_the_demo_api():
    catalogue = build_catalogue()
    ctx = ToolContext("g:fetch", "g:fetch:1", demo_http(), {"demo_api_url": "http://demo.test"})
    figures = await catalogue.call("sales.get_figures", {"quarter": "Q3", "year": 2026}, ctx)
    assert figures == sales_figures("Q3", 2026).model_dump(mode="json")
    accounts = await catalogue.call("crm.top_accounts", {"quarter": "Q3", "year": 2026, "limit": 2}, ctx)
    assert len(accounts["accounts"]) == 2
    assert await catalogue.call("noop.echo", {"a": 1}, ctx) == {"echo": {"a": 1}}
    with pytest.raises(ToolError) as info:
        await catalogue.call("sales.get_figures", {"quarter": "Q9", "year": 2026}, ctx)
    assert info.value.error.code is ErrorCode.INVALID_INPUT


async def test_report_publish_through_the_runner_is_idempotent_across_attempts():
    """Two attempts of one step carry one Idempotency-Key: the demo API writes one report."""
    http = demo_http()
    runner = StepRunner(tools=build_catalogue(), models=FakeModels(), http=http,
                        tracer=TracerProvider().get_tracer("t"), tool_config={"demo_api_url": "http://demo.test"})
    draft = {"title": "Q3 2026 sales report", "body": "Revenue grew.", "audience": "board"}
    first = await runner.run(dispatched(tool="reports.publish", inputs=draft, step_id="publish_report"))
    second = await runner.run(dispatched(tool="reports.publish", inputs=draft, step_id="publish_report", attempt=2))
    assert isinstance(first, StepSucceeded) and isinstance(second, StepSucceeded), getattr(first, "error", None)
    assert first.output["report_id"] == second.output["report_id"] == "rpt-0001"
    reports = (await http.get("http://demo.test/reports")).json()
    assert [r["idempotency_key"] for r in reports] == ["g:publish_report"]


# --- step runner ---------------------------------------------------------------------------


def test_keys():
    event = dispatched(attempt=2)
    assert execution_key(event) == "g:s:2"
    assert tool_idempotency_key(event) == "g:s"  # the same for every attempt


async def test_tool_step_succeeds_with_deterministic_id(spans):
    counter = Counter()
    result = await make_runner(counter.registry, spans).run(dispatched(inputs={"n": 5}, attempt=2))
    assert isinstance(result, StepSucceeded)
    assert result.id == "g:s:2:succeeded" and result.causation_id == "g:s:2:dispatched"
    assert result.output == {"n": 5, "calls": 1} and result.attempt == 2
    ctx = counter.calls[0][1]
    assert (ctx.idempotency_key, ctx.call_id) == ("g:s", "g:s:2")
    (span,) = spans.get_finished_spans()
    assert span.name == "execute_tool test.count"
    assert span.attributes["gen_ai.tool.call.id"] == "g:s:2"


async def test_invalid_input_becomes_step_failed_without_retry(spans):
    counter = Counter()
    result = await make_runner(counter.registry, spans).run(dispatched(inputs={"n": -3}))
    assert isinstance(result, StepFailed) and result.id == "g:s:1:failed"
    assert result.error.code is ErrorCode.INVALID_INPUT
    assert counter.calls == []
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "INVALID_INPUT"


async def test_unknown_tool_becomes_tool_not_found(spans):
    result = await make_runner(Counter().registry, spans).run(dispatched(tool="test.ghost"))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.TOOL_NOT_FOUND


async def test_tool_outside_allowed_tools_is_permission_denied(spans):
    counter = Counter()
    result = await make_runner(counter.registry, spans).run(dispatched(allowed_tools=["noop.echo"]))
    assert isinstance(result, StepFailed) and result.error.code is ErrorCode.PERMISSION_DENIED
    assert counter.calls == []


async def test_retryable_tool_errors_are_retried_then_succeed(spans):
    counter = Counter()
    flaky = TypedError(code=ErrorCode.UPSTREAM_ERROR, message="503", retryable=True)
    counter.failures = [ToolError(flaky), ToolError(flaky)]
    result = await make_runner(counter.registry, spans).run(dispatched())
    assert isinstance(result, StepSucceeded) and result.output["calls"] == 3
    assert len(counter.calls) == 3


async def test_timeouts_are_retried_up_to_the_attempts_then_fail(spans):
    counter = Counter()
    result = await make_runner(counter.registry, spans).run(dispatched(tool="test.slow"))
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.error.retryable) == (ErrorCode.UPSTREAM_TIMEOUT, True)
    assert len(counter.calls) == 3


async def test_model_step_uses_the_binding_and_reports_usage(spans):
    models = FakeModels()
    result = await make_runner(Counter().registry, spans, models).run(
        dispatched(tool=None, inputs={"figures": {}}, instruction="Summarise Q3"))
    assert isinstance(result, StepSucceeded)
    assert result.output == {"text": "text for Summarise Q3", "model": "goalrail/offline-writer"}
    assert (result.usage.input_tokens, result.usage.output_tokens) == (4, 2)
    assert models.calls == [("goalrail/offline-writer", "summarise", "Summarise Q3", {"figures": {}},
                             ["goalrail/other"])]


async def test_model_step_without_instruction_gets_a_default_one(spans):
    models = FakeModels()
    await make_runner(Counter().registry, spans, models).run(dispatched(tool=None))
    assert models.calls[0][2] == "Perform the summarise task"


# --- idempotent execution ------------------------------------------------------------------


async def test_same_execution_key_runs_the_tool_once(spans):
    counter = Counter()
    deps = ExecutorDeps(executions=open_database("memory://", f"exec_{uuid.uuid4().hex}")["executions"],
                        runner=make_runner(counter.registry, spans))
    event = dispatched(inputs={"n": 2})
    first = await handle(event, deps)
    again = await handle(event, deps)
    assert len(counter.calls) == 1
    assert again == first and isinstance(first[0], StepSucceeded)
    stored = await deps.executions.find_one({"_id": "g:s:1"})
    assert (stored["goal_id"], stored["step_id"], stored["attempt"]) == ("g", "s", 1)
    assert stored["binding"]["tool"] == "test.count"
    # a new attempt is a new execution
    await handle(dispatched(inputs={"n": 2}, attempt=2), deps)
    assert len(counter.calls) == 2


async def test_stored_failures_are_replayed_too(spans):
    counter = Counter()
    deps = ExecutorDeps(executions=open_database("memory://", f"exec_{uuid.uuid4().hex}")["executions"],
                        runner=make_runner(counter.registry, spans))
    event = dispatched(inputs={"n": -1})
    first = await handle(event, deps)
    assert await handle(event, deps) == first and first[0].error.code is ErrorCode.INVALID_INPUT


# --- the offline provider -------------------------------------------------------------------


async def test_model_task_on_the_offline_provider(spans):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    client = ModelClient(provider.get_tracer("test"))
    data = {"figures": {"totals": {"revenue": 4_200_000, "target": 4_000_000}}}
    runner = make_runner(Counter().registry, spans, client)
    result = await runner.run(dispatched(tool=None, inputs=data, instruction="Summarise Q3 2026 sales"))
    assert isinstance(result, StepSucceeded), getattr(result, "error", None)
    text = result.output["text"]
    assert text.startswith("## Q3 2026 sales\n")
    assert "In total: revenue 4,200,000, target 4,000,000." in text
    assert result.output["model"].endswith("offline-writer")
    assert result.usage.output_tokens == len(text.split()) and result.usage.cost_usd == 0.0
    # deterministic: the same input gives the same text
    again = await client.complete("goalrail/offline-writer", "summarise", "Summarise Q3 2026 sales", data)
    assert again.text == text
    chat = [s for s in spans.get_finished_spans() if s.name == "chat goalrail/offline-writer"]
    assert chat and chat[0].attributes["gen_ai.provider.name"] == "goalrail"
    assert chat[0].attributes["gen_ai.usage.output_tokens"] == result.usage.output_tokens
    # classify goes through the same provider
    label = await client.complete("goalrail/offline-writer", "classify", "Route this",
                                  {"labels": ["billing", "tech_support"], "text": "my support ticket"})
    assert label.text == "tech_support"


async def test_irreversible_tool_needs_an_approved_step(spans):
    counter = Counter()
    runner = make_runner(counter.registry, spans)
    refused = await runner.run(dispatched(tool="test.drop_table"))
    assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.POLICY_VIOLATION
    assert counter.calls == []
    # the plan's needs_approval alone is not an approval: only a person's decision is
    planned = await runner.run(dispatched(tool="test.drop_table", needs_approval=True))
    assert isinstance(planned, StepFailed) and planned.error.code is ErrorCode.POLICY_VIOLATION
    approved = await runner.run(dispatched(tool="test.drop_table", attempt=2, needs_approval=True)
                                .model_copy(update={"approval_id": "g:s:2:approval", "approved_by": "ops"}))
    assert isinstance(approved, StepSucceeded) and len(counter.calls) == 1
