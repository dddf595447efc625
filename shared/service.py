"""What every service process shares: tracing, logging, the broker, the guarded subscriber.

A service's app module only builds its dependencies and names its topics and handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from faststream import FastStream
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from shared.bus import ConsumeGuard, Handler, ensure_topics, make_broker, subscriber_options
from shared.events import Topic
from shared.settings import Settings
from shared.telemetry.tracing import configure_logging, setup_tracing

log = logging.getLogger("goalrail.service")


class ServiceRuntime:
    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        endpoint = str(settings.otlp_endpoint) if settings.otlp_endpoint else None
        self.tracer_provider = setup_tracing(name, endpoint)
        self.tracer = trace.get_tracer(f"goalrail.{name}", tracer_provider=self.tracer_provider)
        self.broker = make_broker(settings, self.tracer_provider)

    def app(
        self,
        topics: Sequence[Topic],
        handler: Handler,
        on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
        max_workers: int = 1,
    ) -> FastStream:
        guard = ConsumeGuard(self.broker, self.name, handler, self.settings.handler_attempts)
        # max_workers > 1 (one topic only): that many consumers of the group in this process, so
        # a slow message on one partition does not hold the others; offsets still commit after
        # handling, per partition
        concurrency = {"max_workers": max_workers} if max_workers > 1 else {}

        @self.broker.subscriber(
            *(t.value for t in topics),
            **subscriber_options(self.settings, group_id=self.name),
            **concurrency,
            title=f"{self.name}/consume",
        )
        async def consume(message: KafkaMessage) -> None:
            await guard(message)

        async def start() -> None:
            await ensure_topics(self.settings.kafka_bootstrap, self.settings.kafka_partitions)
            for hook in on_startup:
                await hook()

        async def ready() -> None:
            log.info("%s ready, consuming %s", self.name, ", ".join(t.value for t in topics))

        async def stop() -> None:
            self.tracer_provider.shutdown()

        return FastStream(self.broker, on_startup=[start], after_startup=[ready], after_shutdown=[stop], logger=None)


def run(create_app: Callable[[Settings], FastStream], name: str) -> None:
    """Entry point of `python -m services.<name>`: settings from the environment, run until
    SIGTERM/SIGINT, then drain and flush traces."""
    settings = Settings()
    configure_logging(name, settings.log_level)
    asyncio.run(create_app(settings).run())
