"""Fixtures that start real parts: the Tansu broker and the embedded stack of processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from shared.embedded.stack import Broker, EmbeddedStack, fresh_workdir  # noqa: E402

if TYPE_CHECKING:
    from shared.telemetry.collector import SpanCollector


class RunningStack(NamedTuple):
    stack: EmbeddedStack
    collector: "SpanCollector"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Tansu broker (memory storage) with Goalrail's topics, on a free loopback port; four
    partitions each, as in production, since the consumer tests spread goals over partitions."""
    kafka = Broker(tmp_path / "broker.log")
    asyncio.run(kafka.start(partitions=4))
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Broker, demo API and the four services as separate processes exporting spans by OTLP to
    an in-test collector, shared by tests that only add goals (each uses its own goal ids)."""
    from shared.telemetry.collector import SpanCollector

    workdir = fresh_workdir(tmp_path_factory.mktemp("stack"))
    collector = SpanCollector(sink_path=workdir / "spans.jsonl")
    collector.start()
    stack = EmbeddedStack(workdir, otlp_endpoint=collector.endpoint)
    try:
        asyncio.run(stack.start())  # inside the try: a stack that fails to start must not leak its processes
        yield RunningStack(stack, collector)
    finally:
        asyncio.run(stack.stop())
        collector.stop()
