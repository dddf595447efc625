"""One trace as an indented tree a person can read in a terminal: service, operation, duration."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared.telemetry.collector import CollectedSpan


@dataclass
class SpanNode:
    span: CollectedSpan
    children: list[SpanNode] = field(default_factory=list)


def is_message_creation(span: CollectedSpan) -> bool:
    """FastStream's zero-length `<topic> create` spans: noise in a tree for people."""
    return span.name.endswith(" create")


def build_tree(spans: Iterable[CollectedSpan], hide: Callable[[CollectedSpan], bool] = lambda s: False) -> list[SpanNode]:
    """Roots (spans without a parent in the list) with their children, ordered by start time.
    Hidden spans are left out and their children attached to the nearest shown ancestor."""
    by_id = {s.span_id: s for s in spans}
    nodes = {s.span_id: SpanNode(s) for s in sorted(by_id.values(), key=lambda s: s.start_ns) if not hide(s)}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent_id = node.span.parent_span_id
        while parent_id in by_id and parent_id not in nodes:
            parent_id = by_id[parent_id].parent_span_id
        parent = nodes.get(parent_id or "")
        (parent.children if parent else roots).append(node)
    return roots


def render_tree(spans: Iterable[CollectedSpan], hide: Callable[[CollectedSpan], bool] = is_message_creation) -> str:
    rows: list[tuple[str, str, str]] = []

    def walk(node: SpanNode, prefix: str, branch: str) -> None:
        rows.append((f"{prefix}{branch}{node.span.service}", node.span.name, f"{node.span.duration_ms:.1f} ms"))
        child_prefix = prefix + ("  " if branch == "└ " else "│ " if branch else "")
        for i, child in enumerate(node.children):
            walk(child, child_prefix, "└ " if i == len(node.children) - 1 else "├ ")

    for root in build_tree(spans, hide):
        walk(root, "", "")
    if not rows:
        return "(no spans)"
    width = max(len(r[0]) for r in rows) + 2
    name_width = max(len(r[1]) for r in rows) + 2
    return "\n".join(f"{a:<{width}}{b:<{name_width}}{c:>10}".rstrip() for a, b, c in rows)


def summarise_trace(spans: list[CollectedSpan]) -> dict[str, object]:
    roots = build_tree(spans)
    return {
        "trace_id": spans[0].trace_id if spans else None,
        "spans": len(spans),
        "services": sorted({s.service for s in spans}),
        "roots": [r.span.name for r in roots],
    }
