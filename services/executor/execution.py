"""Executor domain: run one dispatched step — a tool or a model task — and say how it went.

Retryable failures (timeouts, 429, 5xx) are retried here with exponential backoff and jitter;
what still fails becomes a StepFailed with the typed error, for the planner to decide.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from shared.events import ErrorCode, StepDispatched, StepFailed, StepSucceeded, TypedError, Usage
from shared.models.client import ModelError, ModelResult
from shared.telemetry.tracing import record_error, tool_span
from shared.tools.registry import ToolContext, ToolError, ToolRegistry

SOURCE = "goalrail/executor"


class ModelRunner(Protocol):
    async def complete(
        self, model: str, task_type: str, instruction: str, data: dict[str, Any], fallbacks: list[str] | None = None
    ) -> ModelResult: ...


@dataclass(frozen=True)
class StepRunner:
    tools: ToolRegistry
    models: ModelRunner
    http: httpx.AsyncClient
    tracer: trace.Tracer
    tool_config: dict[str, Any]
    attempts: int = 3
    max_backoff_s: float = 2.0

    async def run(self, event: StepDispatched) -> StepSucceeded | StepFailed:
        started = time.perf_counter()
        usage = Usage()
        try:
            if event.binding.kind == "tool":
                output = await self._retrying(lambda: self._call_tool(event))
            else:
                result = await self._retrying(lambda: self._call_model(event))
                output, usage = {"text": result.text, "model": result.model}, result.usage
        except (ToolError, ModelError) as exc:
            return _failed(event, exc.error, (time.perf_counter() - started) * 1000)
        return event.derive(
            StepSucceeded,
            f"{execution_key(event)}:succeeded",
            SOURCE,
            plan_id=event.plan_id,
            step_id=event.step.id,
            attempt=event.attempt,
            output=output,
            binding=event.binding,
            usage=usage,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(initial=0.1, max=self.max_backoff_s),
            retry=retry_if_exception(lambda e: isinstance(e, (ToolError, ModelError)) and e.error.retryable),
            reraise=True,
        ):
            with attempt:
                return await call()

    async def _call_tool(self, event: StepDispatched) -> Any:
        name = event.binding.tool or ""
        with tool_span(self.tracer, name, execution_key(event)) as span:
            try:
                if event.allowed_tools is not None and name not in event.allowed_tools:
                    raise ToolError(
                        TypedError(
                            code=ErrorCode.PERMISSION_DENIED,
                            message=f"goal {event.goal_id} may not use tool {name!r}",
                            details={"tool": name, "allowed_tools": event.allowed_tools},
                        )
                    )
                context = ToolContext(
                    idempotency_key=tool_idempotency_key(event),
                    call_id=execution_key(event),
                    http=self.http,
                    config=self.tool_config,
                )
                return await self.tools.call(name, event.resolved_inputs, context)
            except ToolError as exc:
                record_error(span, exc.error.code.value, exc.error.message, exc.error.retryable)
                raise

    async def _call_model(self, event: StepDispatched) -> ModelResult:
        instruction = event.step.instruction or f"Perform the {event.step.task_type} task"
        return await self.models.complete(
            event.binding.model or "",
            event.step.task_type,
            instruction,
            event.resolved_inputs,
            fallbacks=event.binding.fallbacks,
        )


def execution_key(event: StepDispatched) -> str:
    """One execution of one attempt of one step: the executor's idempotency key."""
    return f"{event.goal_id}:{event.step.id}:{event.attempt}"


def tool_idempotency_key(event: StepDispatched) -> str:
    """The key a tool's upstream sees: the same for every attempt of the step, so a retry after
    an unknown outcome (timeout, crash) cannot repeat the side effect."""
    return f"{event.goal_id}:{event.step.id}"


def _failed(event: StepDispatched, error: TypedError, duration_ms: float) -> StepFailed:
    return event.derive(
        StepFailed,
        f"{execution_key(event)}:failed",
        SOURCE,
        plan_id=event.plan_id,
        step_id=event.step.id,
        attempt=event.attempt,
        error=error,
        binding=event.binding,
        duration_ms=duration_ms,
    )
