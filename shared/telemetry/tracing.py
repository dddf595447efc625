"""Tracing and structured logs: one trace per goal, spans for model and tool calls with the
OpenTelemetry GenAI attributes, OTLP/HTTP export when an endpoint is configured."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

current_goal_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("goal_id", default=None)


def setup_tracing(service: str, otlp_endpoint: str | None, make_global: bool = True) -> TracerProvider:
    """A tracer provider for `service`, exporting to `otlp_endpoint` (OTLP/HTTP) when set.

    In a service it becomes the global provider too, so libraries that trace on their own join
    the goal's trace.
    """
    resource = Resource.create({"service.name": service, "service.namespace": "goalrail"})
    provider = TracerProvider(resource=resource, sampler=_sampler(otlp_endpoint))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if make_global:
        trace.set_tracer_provider(provider)
    return provider


def _sampler(otlp_endpoint: str | None) -> Sampler | None:
    """Without an exporter nothing reads the spans, so none is recorded: a dropped span still
    carries the goal's trace id and parent to the next hop and into the logs, while recording
    one costs tens of microseconds, a tenth of a service's CPU at about 60 spans per goal. With
    an exporter every span is kept, also under a parent that a non-exporting process dropped.
    OTEL_TRACES_SAMPLER, when set, decides instead (None: the SDK reads it)."""
    if os.environ.get(OTEL_TRACES_SAMPLER):
        return None
    if not otlp_endpoint:
        return ALWAYS_OFF
    return ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)


def never_records(tracer: trace.Tracer) -> bool:
    """Whether every span of `tracer` is dropped (no exporter, see `_sampler`). Then a hop need
    not make spans of its own: the upstream span's context carries the trace id on just as well,
    and making a span that nothing records is about a tenth of a millisecond per hop."""
    return getattr(tracer, "sampler", None) is ALWAYS_OFF


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


@contextmanager
def model_span(tracer: trace.Tracer, model: str, provider: str) -> Iterator[Span]:
    """`chat <model>` client span; the caller adds response model and token usage."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def record_model_response(span: Span, response_model: str, input_tokens: int, output_tokens: int) -> None:
    span.set_attribute("gen_ai.response.model", response_model)
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


@contextmanager
def tool_span(tracer: trace.Tracer, tool: str, call_id: str) -> Iterator[Span]:
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": call_id,
    }
    with tracer.start_as_current_span(f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes) as span:
        yield span


def record_error(span: Span, code: str, message: str, retryable: bool) -> None:
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("error.type", code)
    span.set_attribute("goalrail.error.retryable", retryable)
    span.set_attribute("goalrail.error.message", message)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, carrying the trace and goal ids of the current context."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        goal_id = current_goal_id.get()
        if goal_id:
            entry["goal_id"] = goal_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "LiteLLM", "litellm", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
