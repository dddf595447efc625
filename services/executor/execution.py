"""Executor domain: run one dispatched step — a tool or a model task — and say how it went.

Before a tool call: the tool must exist, the goal's tenant and allowed tools must permit it
(PERMISSION_DENIED, whatever the plan says) and an irreversible tool needs an approved step
(POLICY_VIOLATION); the goal type's data boundary applies too. Personal data leaves only for
where it is cleared: a model call gets inputs and instruction redacted down to what the bound
model and its fallbacks are cleared for (routing table), a web-facing tool (OpenAPI, MCP) down
to its `data_classes`. Calls take a slot of a bounded pool (per executor and per tool), so one slow
tool cannot hold every slot. Retryable failures (timeouts, 429, 5xx) are retried here with
exponential backoff and jitter, waiting at least an upstream's Retry-After; what still fails
becomes a StepFailed with the typed error, for the planner to decide.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from opentelemetry import trace
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from shared.events import ErrorCode, StepDispatched, StepFailed, StepSucceeded, TypedError, Usage
from shared.governance.boundaries import cleared_classes, is_web_facing, redact_outgoing
from shared.models.client import ModelError, ModelResult
from shared.telemetry.tracing import record_error, tool_span
from shared.tools.policy import ToolPolicy
from shared.tools.registry import ToolContext, ToolError, ToolRegistry, ToolSpec

SOURCE = "goalrail/executor"


class ModelRunner(Protocol):
    async def complete(
        self, model: str, task_type: str, instruction: str, data: dict[str, Any], fallbacks: list[str] | None = None
    ) -> ModelResult: ...


class ToolLimiter:
    """Bounded concurrency of tool calls: `total` per executor, `per_tool` per tool name."""

    def __init__(self, total: int = 16, per_tool: int = 4) -> None:
        self.total = total
        self.per_tool = per_tool
        self._total = asyncio.Semaphore(total)
        self._tools: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(per_tool))
        self.in_flight: defaultdict[str, int] = defaultdict(int)

    @asynccontextmanager
    async def slot(self, tool: str) -> AsyncIterator[None]:
        async with self._tools[tool], self._total:
            self.in_flight[tool] += 1
            try:
                yield
            finally:
                self.in_flight[tool] -= 1


@dataclass(frozen=True)
class StepRunner:
    tools: ToolRegistry
    models: ModelRunner
    http: httpx.AsyncClient
    tracer: trace.Tracer
    tool_config: dict[str, Any]
    attempts: int = 3
    max_backoff_s: float = 2.0
    policy: ToolPolicy | None = None  # None: tenants are not checked (allowed_tools still are)
    limiter: ToolLimiter = field(default_factory=ToolLimiter)
    max_retry_after_s: float = 5.0  # a longer Retry-After fails the step (RATE_LIMITED) instead
    clearances: Mapping[str, list[str]] = field(default_factory=dict)  # model -> cleared data classes

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
        """`call`, retried per the policy. The first try runs bare: nearly every call succeeds at
        once, and tenacity's loop around each one was a fifteenth of the executor's CPU. After a
        retryable failure tenacity takes over from that failure, so it counts and waits as if it
        had run the first try itself."""
        try:
            return await call()
        except (ToolError, ModelError) as exc:
            if self.attempts == 1 or not self._should_retry(exc):
                raise
            first_failure = exc
        tries = 0

        async def again() -> Any:
            nonlocal tries
            tries += 1
            if tries == 1:
                raise first_failure
            return await call()

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            reraise=True,
        ):
            with attempt:
                return await again()

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, (ToolError, ModelError)) or not exc.error.retryable:
            return False
        retry_after = exc.error.details.get("retry_after_s")
        return retry_after is None or retry_after <= self.max_retry_after_s

    def _wait(self, state: RetryCallState) -> float:
        # random jitter on top of the exponential step, so retries of many goals do not align
        backoff = (wait_exponential(multiplier=0.1, max=self.max_backoff_s)
                   + wait_random(0, min(0.1, self.max_backoff_s)))(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.error.details.get("retry_after_s") if isinstance(exc, ToolError) else None
        return max(backoff, float(retry_after)) if retry_after is not None else backoff

    async def _call_tool(self, event: StepDispatched) -> Any:
        name = event.binding.tool or ""
        with tool_span(self.tracer, name, execution_key(event)) as span:
            try:
                spec = self.tools.get(name).spec
                span.set_attribute("goalrail.tool.side_effect", spec.side_effect)
                span.set_attribute("goalrail.tool.source", spec.source)
                refusal = permission_error(self.policy, spec, event)
                if refusal is not None:
                    raise ToolError(refusal)
                context = ToolContext(
                    idempotency_key=tool_idempotency_key(event),
                    call_id=execution_key(event),
                    http=self.http,
                    config=self.tool_config,
                )
                inputs = event.resolved_inputs
                if is_web_facing(spec):
                    # the upstream is another system: it gets only the personal data it is cleared for
                    inputs, redacted = redact_outgoing(inputs, spec.data_classes)
                    if redacted:
                        span.set_attribute("goalrail.redacted", redacted)
                async with self.limiter.slot(name):
                    return await self.tools.call(name, inputs, context)
            except ToolError as exc:
                record_error(span, exc.error.code.value, exc.error.message, exc.error.retryable)
                raise

    async def _call_model(self, event: StepDispatched) -> ModelResult:
        instruction = event.step.instruction or f"Perform the {event.step.task_type} task"
        # any model of the chain may answer: send only what every one of them is cleared for
        allowed = cleared_classes([event.binding.model or "", *event.binding.fallbacks], self.clearances)
        instruction, _ = redact_outgoing(instruction, allowed)
        data, _ = redact_outgoing(event.resolved_inputs, allowed)
        return await self.models.complete(
            event.binding.model or "",
            event.step.task_type,
            instruction,
            data,
            fallbacks=event.binding.fallbacks,
        )


def permission_error(policy: ToolPolicy | None, spec: ToolSpec, event: StepDispatched) -> TypedError | None:
    """Why this step may not call this tool, or None."""
    if policy is not None:
        refusal = policy.check(spec, event.tenant, event.allowed_tools, event.goal_type)
        if refusal is not None:
            return refusal
    elif event.allowed_tools is not None and spec.name not in event.allowed_tools:
        return TypedError(
            code=ErrorCode.PERMISSION_DENIED,
            message=f"goal {event.goal_id} may not use tool {spec.name!r}",
            details={"tool": spec.name, "allowed_tools": event.allowed_tools,
                     "hint": "add the tool to the goal's constraints.allowed_tools, or plan without it"},
        )
    if spec.side_effect == "irreversible" and not event.approved_by:
        # only the router's dispatch after a person's ApprovalDecided carries approved_by
        return TypedError(
            code=ErrorCode.POLICY_VIOLATION,
            message=f"tool {spec.name!r} is irreversible; its step {event.step.id!r} must be approved first",
            details={"tool": spec.name, "step_id": event.step.id, "side_effect": spec.side_effect,
                     "hint": "the router holds such steps for an operator's approval (goalrail approvals)"},
        )
    return None


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
