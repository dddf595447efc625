"""Model calls through litellm, with the offline provider registered as `goalrail/<name>`.

litellm is imported lazily (its import costs seconds) so only processes that call models pay.
Every call is a `chat <model>` client span with the OpenTelemetry GenAI attributes; prompt and
output text stay off spans unless `trace_content` is on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from shared.events import ErrorCode, TypedError, Usage
from shared.governance.pii import redact
from shared.models import offline_planner, offline_writer
from shared.models.prompts import build_messages, parse_messages
from shared.models.routing_table import Candidate, RoutingTable, load_routing_table
from shared.telemetry.tracing import model_span, record_error, record_model_response

OFFLINE_PROVIDER = "goalrail"


@dataclass(frozen=True)
class ModelResult:
    text: str
    model: str
    usage: Usage
    duration_ms: float


class ModelError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    register_offline_provider(litellm)
    return litellm


def register_offline_provider(litellm: Any) -> None:
    """Make `goalrail/<anything>` a litellm model served by deterministic local code."""
    if any(entry.get("provider") == OFFLINE_PROVIDER for entry in litellm.custom_provider_map):
        return

    class OfflineProvider(litellm.CustomLLM):
        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            return self.completion(model, messages, *args, **kwargs)

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            task_type, instruction, data = parse_messages(messages)
            if task_type == "plan":
                text = offline_planner.plan(instruction, data)
            else:
                text = offline_writer.write(task_type, instruction, data)
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
            completion_tokens = len(text.split())
            return litellm.ModelResponse(
                model=model,
                choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                usage={
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            )

    litellm.custom_provider_map = [
        *litellm.custom_provider_map,
        {"provider": OFFLINE_PROVIDER, "custom_handler": OfflineProvider()},
    ]


class ModelClient:
    """Calls a model for a Goalrail task through litellm's Router, and traces it.

    Every model of the routing table is a Router deployment (its api_base, key, price and
    `max_latency_s` as timeout); the binding's fallbacks become the call's fallback chain. Retries,
    fallbacks and cooldowns of failing deployments are litellm's, configured by the table's
    `router:` section. A model string missing from the table is added as a plain deployment.
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
        self._litellm: Any = None
        self._router: Any = None
        self._deployments: dict[str, dict[str, Any]] = {}

    def _ensure_litellm(self) -> Any:
        self._litellm = self._litellm or _litellm()
        return self._litellm

    def _ensure_router(self, models: list[str]) -> Any:
        """The litellm Router, rebuilt only when a call names a model it does not know."""
        if self._router is not None and all(m in self._deployments for m in models):
            return self._router
        litellm = self._ensure_litellm()
        if self._table is None:
            from shared.settings import Settings

            self._table = load_routing_table(Settings().routing_table)
        table = self._table
        known = table.candidates()
        for model in [*known, *models]:
            if model not in self._deployments:
                candidate = known.get(model) or Candidate(model=model)
                self._deployments[model] = {
                    "model_name": model,
                    "litellm_params": candidate.litellm_params(),
                    "model_info": {"id": model},
                }
        settings = table.router
        fails = settings.allowed_fails
        self._router = litellm.Router(
            model_list=list(self._deployments.values()),
            num_retries=settings.num_retries,
            timeout=self._timeout_s,
            cooldown_time=settings.cooldown_s,
            # per exception type, so a model that is the only deployment of its group is cooled
            # down too (litellm spares lone deployments under a plain `allowed_fails`)
            allowed_fails_policy=litellm.types.router.AllowedFailsPolicy(
                RateLimitErrorAllowedFails=fails,
                TimeoutErrorAllowedFails=fails,
                InternalServerErrorAllowedFails=fails,
                ServiceUnavailableErrorAllowedFails=fails,
                BadGatewayErrorAllowedFails=fails,
            ),
        )
        return self._router

    async def warm_up(self) -> None:
        """Import litellm, build the Router and make one untraced offline call: its first call
        loads lazily imported modules, a cost the first goal should not pay."""
        warm_up = f"{OFFLINE_PROVIDER}/warm-up"
        router = self._ensure_router([warm_up])
        await router.acompletion(model=warm_up, messages=build_messages("write", "warm up", {}))

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
        fallbacks = [f for f in fallbacks or [] if f != model]
        router = self._ensure_router([model, *fallbacks])
        provider = _provider(model)
        messages = messages or build_messages(task_type, instruction, data)
        started = time.perf_counter()
        with model_span(self._tracer, model, provider) as span:
            try:
                extra: dict[str, Any] = {"fallbacks": [{model: fallbacks}]} if fallbacks else {}
                if response_format:
                    extra["response_format"] = response_format
                response = await router.acompletion(model=model, messages=messages, **extra)
            except Exception as exc:  # noqa: BLE001 — litellm raises many provider-specific types
                error = _model_error(model, exc)
                record_error(span, error.code.value, error.message, error.retryable)
                raise ModelError(error) from exc
            hidden = getattr(response, "_hidden_params", {}) or {}
            served = hidden.get("model_id") if hidden.get("model_id") in self._deployments else model
            text = response.choices[0].message.content or ""
            usage = Usage(
                input_tokens=response.usage.prompt_tokens,
                output_tokens=response.usage.completion_tokens,
                cost_usd=0.0 if _provider(served) == OFFLINE_PROVIDER else _cost(self._litellm, response),
            )
            if served != model:
                span.set_attribute("goalrail.model.fallback", served)
            record_model_response(span, response.model or served, usage.input_tokens, usage.output_tokens)
            if self._trace_content:
                # redacted before it is cut, so a cut cannot split a card number past recognition
                span.set_attribute("gen_ai.output.preview", redact(text)[:200])
        return ModelResult(text, served, usage, (time.perf_counter() - started) * 1000)


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else "openai"


def _cost(litellm: Any, response: Any) -> float:
    hidden = getattr(response, "_hidden_params", {}) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # noqa: BLE001 — a model without a known price is recorded as free
        return 0.0


def _model_error(model: str, exc: Exception) -> TypedError:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    if status == 429 or name in {"RateLimitError", "RouterRateLimitError"}:
        code, retryable = ErrorCode.RATE_LIMITED, True
    elif name in {"Timeout", "APITimeoutError"} or isinstance(exc, TimeoutError):
        code, retryable = ErrorCode.UPSTREAM_TIMEOUT, True
    else:
        code, retryable = ErrorCode.MODEL_ERROR, bool(status and status >= 500)
    return TypedError(
        code=code,
        message=f"model {model} failed: {name}: {str(exc)[:300]}",
        retryable=retryable,
        details={"model": model, "status": status, "exception": name},
    )
