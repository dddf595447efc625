"""Model calls for Goalrail tasks, traced: the offline provider (`goalrail/<name>`) is called
directly, any other model through litellm's Router, which is imported only then.

Every call is a `chat <model>` client span with the OpenTelemetry GenAI attributes; prompt and
output text stay off spans unless `trace_content` is on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from shared.events import Usage
from shared.governance.pii import redact
from shared.models import offline_provider
from shared.models.calls import Answer, ModelError, model_error
from shared.models.prompts import build_messages
from shared.models.routing_table import OFFLINE_PROVIDER, RoutingTable, is_offline, load_routing_table, provider_of
from shared.telemetry.tracing import model_span, record_error, record_model_response

if TYPE_CHECKING:
    from shared.models.litellm_models import LitellmModels

# litellm reports an exception of a custom provider as a server error: the direct path keeps that
OFFLINE_FAILURE_STATUS = 500


@dataclass(frozen=True)
class ModelResult:
    text: str
    model: str
    usage: Usage
    duration_ms: float


class ModelClient:
    """Calls a model for a Goalrail task, and traces it.

    A call whose models (the model and its fallbacks) all belong to the offline provider runs
    its deterministic code directly: litellm's routing, retries and cost logging would only add
    time to it, and litellm's import some 200 MB to the process. Any other call goes through
    litellm's Router (`shared.models.litellm_models`), imported at its first need.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        timeout_s: float = 60.0,
        trace_content: bool = False,
        table: RoutingTable | None = None,
    ) -> None:
        self._tracer = tracer
        self._timeout_s = timeout_s
        self._trace_content = trace_content
        self._table = table
        self._litellm: LitellmModels | None = None

    def _routing_table(self) -> RoutingTable:
        if self._table is None:
            from shared.settings import Settings

            self._table = load_routing_table(Settings().routing_table)
        return self._table

    def _litellm_models(self) -> LitellmModels:
        if self._litellm is None:
            from shared.models.litellm_models import LitellmModels

            self._litellm = LitellmModels(self._routing_table(), self._timeout_s)
        return self._litellm

    def needs_litellm(self) -> bool:
        """Whether the routing table names a model the offline provider does not serve."""
        return not all(candidate.offline for candidate in self._routing_table().candidates().values())

    async def warm_up(self) -> None:
        """Pay first-call costs at start, not in the first goal: litellm's import and Router when
        the routing table needs them, else the offline path's (its worker thread)."""
        messages = build_messages("write", "warm up", {})
        if self.needs_litellm():
            await self._litellm_models().warm_up()
        else:
            await self._offline([f"{OFFLINE_PROVIDER}/warm-up"], messages)

    async def complete(
        self,
        model: str,
        task_type: str,
        instruction: str,
        data: dict[str, Any],
        fallbacks: list[str] | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResult:
        """`ModelResult.model` is the model string (deployment) that answered, which is a
        fallback's when the first model failed. `messages` replaces the standard prompt (the
        planner has its own); `response_format` asks for structured output (a JSON schema)."""
        chain = [model, *[f for f in fallbacks or [] if f != model]]
        messages = messages or build_messages(task_type, instruction, data)
        started = time.perf_counter()
        with model_span(self._tracer, model, provider_of(model)) as span:
            try:
                answer = await self._answer(chain, messages, response_format)
            except ModelError as exc:
                record_error(span, exc.error.code.value, exc.error.message, exc.error.retryable)
                raise
            if answer.served != model:
                span.set_attribute("goalrail.model.fallback", answer.served)
            record_model_response(span, answer.response_model, answer.input_tokens, answer.output_tokens)
            if self._trace_content:
                # redacted before it is cut, so a cut cannot split a card number past recognition
                span.set_attribute("gen_ai.output.preview", redact(answer.text)[:200])
        usage = Usage(input_tokens=answer.input_tokens, output_tokens=answer.output_tokens, cost_usd=answer.cost_usd)
        return ModelResult(answer.text, answer.served, usage, (time.perf_counter() - started) * 1000)

    async def _answer(
        self, chain: list[str], messages: list[dict[str, str]], response_format: dict[str, Any] | None
    ) -> Answer:
        if all(is_offline(model) for model in chain):
            return await self._offline(chain, messages)
        return await self._litellm_models().answer(chain, messages, response_format)

    async def _offline(self, chain: list[str], messages: list[dict[str, str]]) -> Answer:
        """The first model of `chain` that answers in time. No retries: the same code given the
        same messages fails the same way again."""
        failure: Exception | None = None
        for model in chain:
            try:
                answer = await self._offline_answer(model, messages)
            except Exception as exc:  # noqa: BLE001 — a failing model falls back, as in litellm
                failure = exc
                continue
            return Answer(answer.text, model, offline_provider.model_name(model),
                          answer.prompt_tokens, answer.completion_tokens)
        assert failure is not None
        status = None if isinstance(failure, TimeoutError) else OFFLINE_FAILURE_STATUS
        raise ModelError(model_error(chain[0], failure, status)) from failure

    async def _offline_answer(self, model: str, messages: list[dict[str, str]]) -> offline_provider.OfflineAnswer:
        # in a worker thread, so the time limit holds however long the answer takes, and the
        # event loop keeps serving other messages meanwhile
        timeout_s = self._timeout_for(model)
        try:
            return await asyncio.wait_for(asyncio.to_thread(offline_provider.answer, messages), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no answer within {timeout_s:g}s") from None

    def _timeout_for(self, model: str) -> float:
        """The model's `max_latency_s`, else the client's timeout: the limits litellm applies."""
        candidate = self._routing_table().candidates().get(model)
        return (candidate.max_latency_s if candidate else None) or self._timeout_s
