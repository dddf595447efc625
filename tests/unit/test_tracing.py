"""Which spans a service records: none without an exporter (the trace still propagates), all of
them with one, also below a parent that a process without an exporter dropped."""

from __future__ import annotations

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry.tracing import _sampler, current_trace_id, setup_tracing

UNSAMPLED_PARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
PARENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(autouse=True)
def no_sampler_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OTEL_TRACES_SAMPLER, raising=False)


def test_without_an_exporter_no_span_is_recorded_but_the_trace_goes_on() -> None:
    tracer = setup_tracing("planner", None, make_global=False).get_tracer("test")
    with tracer.start_as_current_span("goals.submitted process", context=propagate.extract(UNSAMPLED_PARENT)) as span:
        assert not span.is_recording()
        assert current_trace_id() == PARENT_TRACE_ID  # what the auditor writes into the outcome
        headers: dict[str, str] = {}
        propagate.inject(headers)
    child_trace_id = headers["traceparent"].split("-")[1]
    assert child_trace_id == PARENT_TRACE_ID
    assert headers["traceparent"].split("-")[2] == format(span.get_span_context().span_id, "016x")


def test_without_an_exporter_a_new_goal_still_gets_a_trace_id() -> None:
    tracer = setup_tracing("client", None, make_global=False).get_tracer("test")
    with tracer.start_as_current_span("submit goal") as span:
        assert not span.is_recording()
        assert span.get_span_context().is_valid
        assert current_trace_id() == format(span.get_span_context().trace_id, "032x")


def test_with_an_exporter_spans_are_kept_under_a_parent_that_was_dropped() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=_sampler("http://jaeger:4318"))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("steps.ready process", context=propagate.extract(UNSAMPLED_PARENT)):
        with tracer.start_as_current_span("execute_tool noop.echo"):
            pass
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["execute_tool noop.echo", "steps.ready process"]
    assert {format(s.context.trace_id, "032x") for s in finished} == {PARENT_TRACE_ID}
    assert all(s.context.trace_flags.sampled for s in finished)


def test_a_sampler_set_in_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OTEL_TRACES_SAMPLER, "always_on")
    assert _sampler(None) is None  # the SDK reads OTEL_TRACES_SAMPLER itself
    tracer = setup_tracing("router", None, make_global=False).get_tracer("test")
    with tracer.start_as_current_span("steps.ready process") as span:
        assert span.is_recording()
    assert isinstance(trace.get_current_span(), trace.NonRecordingSpan)
