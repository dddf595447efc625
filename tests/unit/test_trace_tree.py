"""The trace tree people read in a terminal, and the embedded OTLP/HTTP collector behind it."""

from __future__ import annotations

import gzip

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from shared.telemetry.collector import CollectedSpan, SpanCollector, load_spans
from shared.telemetry.tree import build_tree, is_message_creation, render_tree, summarise_trace

MS = 1_000_000


def span(span_id: str, parent: str | None, name: str, service: str, start_ms: float, end_ms: float,
         trace_id: str = "t1") -> CollectedSpan:
    return CollectedSpan(trace_id, span_id, parent, name, "INTERNAL", service, int(start_ms * MS), int(end_ms * MS))


def goal_trace() -> list[CollectedSpan]:
    # deliberately out of order: the tree orders by start time
    return [
        span("e", "d", "steps.ready publish", "planner", 5, 6),
        span("b", "a", "goals.submitted publish", "client", 1, 2),
        span("c", "b", "goals.submitted process", "planner", 3, 9),
        span("a", None, "submit goal", "client", 0, 10),
        span("d", "c", "steps.ready create", "planner", 4, 4),
        span("f", "c", "plans.events publish", "planner", 4.5, 5),
    ]


def names(nodes) -> list:
    return [(n.span.name, names(n.children)) if n.children else n.span.name for n in nodes]


def test_build_tree_links_parents_and_orders_children_by_start():
    roots = build_tree(goal_trace())
    assert names(roots) == [
        ("submit goal", [("goals.submitted publish", [("goals.submitted process", [
            ("steps.ready create", ["steps.ready publish"]), "plans.events publish"])])])
    ]


def test_hidden_spans_hand_their_children_to_the_nearest_shown_ancestor():
    roots = build_tree(goal_trace(), hide=is_message_creation)
    process = roots[0].children[0].children[0]
    assert process.span.name == "goals.submitted process"
    assert [c.span.name for c in process.children] == ["plans.events publish", "steps.ready publish"]


def test_spans_whose_parent_is_not_in_the_list_are_roots():
    spans = [span("x", "missing", "late", "router", 2, 3), span("y", None, "early", "client", 1, 2)]
    assert [r.span.name for r in build_tree(spans)] == ["early", "late"]


def test_message_creation_spans_are_recognised():
    assert is_message_creation(span("d", None, "steps.ready create", "planner", 0, 0))
    assert not is_message_creation(span("d", None, "steps.ready publish", "planner", 0, 0))


def test_render_tree_lines():
    assert render_tree(goal_trace()).splitlines() == [
        "client         submit goal                 10.0 ms",
        "└ client       goals.submitted publish      1.0 ms",
        "  └ planner    goals.submitted process      6.0 ms",
        "    ├ planner  plans.events publish         0.5 ms",
        "    └ planner  steps.ready publish          1.0 ms",
    ]


def test_render_tree_can_show_everything_and_handles_no_spans():
    assert "steps.ready create" in render_tree(goal_trace(), hide=lambda s: False)
    assert render_tree([]) == "(no spans)"


def test_summarise_trace():
    summary = summarise_trace(goal_trace())
    assert summary == {"trace_id": "t1", "spans": 6, "services": ["client", "planner"], "roots": ["submit goal"]}
    assert summarise_trace([])["trace_id"] is None


# --- the collector -------------------------------------------------------------------------


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def export_request(trace_id: bytes, service: str = "planner") -> ExportTraceServiceRequest:
    root = Span(trace_id=trace_id, span_id=bytes.fromhex("00000000000000a1"), name="goals.submitted process",
                kind=Span.SPAN_KIND_CONSUMER, start_time_unix_nano=1_000 * MS, end_time_unix_nano=1_012 * MS,
                attributes=[_kv("messaging.system", AnyValue(string_value="kafka")),
                            _kv("messaging.kafka.partition", AnyValue(int_value=2)),
                            _kv("tags", AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"),
                                                                                 AnyValue(bool_value=True)])))])
    child = Span(trace_id=trace_id, span_id=bytes.fromhex("00000000000000b2"),
                 parent_span_id=bytes.fromhex("00000000000000a1"), name="execute_tool sales.get_figures",
                 kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=1_001 * MS, end_time_unix_nano=1_010 * MS,
                 status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
                 events=[Span.Event(name="exception")])
    resource = Resource(attributes=[_kv("service.name", AnyValue(string_value=service))])
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[root, child])])
    ])


@pytest.fixture
def collector(tmp_path):
    with SpanCollector(sink_path=tmp_path / "spans.jsonl") as running:
        yield running


def test_collector_receives_otlp_protobuf_and_keeps_spans(collector, tmp_path):
    trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    response = httpx.post(f"{collector.endpoint}/v1/traces", content=export_request(trace_id).SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse().ParseFromString(response.content)  # a valid OTLP reply

    spans = collector.spans(trace_id.hex())
    assert [s.name for s in spans] == ["goals.submitted process", "execute_tool sales.get_figures"]
    root, child = spans
    assert (root.trace_id, root.span_id, root.parent_span_id) == (trace_id.hex(), "00000000000000a1", None)
    assert (root.kind, root.service, root.status) == ("CONSUMER", "planner", "UNSET")
    assert root.attributes == {"messaging.system": "kafka", "messaging.kafka.partition": 2, "tags": ["a", True]}
    assert root.duration_ms == 12.0
    assert (child.parent_span_id, child.kind, child.status, child.events) == (
        "00000000000000a1", "INTERNAL", "ERROR", ["exception"])
    assert collector.trace_ids() == [trace_id.hex()]
    assert collector.spans("ffff") == []

    assert load_spans(tmp_path / "spans.jsonl") == spans
    tree = render_tree(spans)
    assert tree.splitlines()[1].startswith("└ planner")


def test_collector_accepts_gzip_and_separates_traces(collector):
    first, second = bytes(range(16)), bytes(range(1, 17))
    for trace_id, service in ((first, "router"), (second, "executor")):
        body = gzip.compress(export_request(trace_id, service).SerializeToString())
        response = httpx.post(f"{collector.endpoint}/v1/traces", content=body,
                              headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
        assert response.status_code == 200
    assert collector.trace_ids() == [first.hex(), second.hex()]
    assert {s.service for s in collector.spans(second.hex())} == {"executor"}
    assert len(collector.spans()) == 4
    assert len(collector.wait_for(lambda s: len(s) == 2, timeout=1, trace_id=first.hex())) == 2


def test_collector_ignores_other_paths_and_times_out_waiting(collector):
    response = httpx.post(f"{collector.endpoint}/v1/metrics", content=b"\x00\x01")
    assert response.status_code == 200
    assert collector.spans() == []
    with pytest.raises(TimeoutError, match="incomplete"):
        collector.wait_for(lambda s: bool(s), timeout=0.1)
