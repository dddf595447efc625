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
from shared.models import offline_writer
from shared.models.prompts import build_messages, parse_messages
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
    """Calls one model (with litellm fallbacks) for a Goalrail task and traces it."""

    def __init__(self, tracer: trace.Tracer, timeout_s: float = 60.0, trace_content: bool = False) -> None:
        self._tracer = tracer
        self._timeout_s = timeout_s
        self._trace_content = trace_content
        self._litellm: Any = None

    def _ensure_litellm(self) -> Any:
        self._litellm = self._litellm or _litellm()
        return self._litellm

    async def warm_up(self) -> None:
        """Import litellm and make one untraced offline call: its first call loads lazily
        imported modules, a cost the first goal should not pay."""
        litellm = self._ensure_litellm()
        await litellm.acompletion(model=f"{OFFLINE_PROVIDER}/warm-up", messages=build_messages("write", "warm up", {}))

    async def complete(
        self, model: str, task_type: str, instruction: str, data: dict[str, Any], fallbacks: list[str] | None = None
    ) -> ModelResult:
        litellm = self._ensure_litellm()
        provider = model.split("/", 1)[0] if "/" in model else "openai"
        messages = build_messages(task_type, instruction, data)
        started = time.perf_counter()
        with model_span(self._tracer, model, provider) as span:
            try:
                response = await litellm.acompletion(
                    model=model, messages=messages, timeout=self._timeout_s, fallbacks=fallbacks or None
                )
            except Exception as exc:  # noqa: BLE001 — litellm raises many provider-specific types
                error = _model_error(model, exc)
                record_error(span, error.code.value, error.message, error.retryable)
                raise ModelError(error) from exc
            text = response.choices[0].message.content or ""
            usage = Usage(
                input_tokens=response.usage.prompt_tokens,
                output_tokens=response.usage.completion_tokens,
                cost_usd=0.0 if provider == OFFLINE_PROVIDER else _cost(litellm, response),
            )
            response_model = response.model or model
            record_model_response(span, response_model, usage.input_tokens, usage.output_tokens)
            if self._trace_content:
                span.set_attribute("gen_ai.output.preview", text[:200])
        return ModelResult(text, response_model, usage, (time.perf_counter() - started) * 1000)


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
    if status == 429 or name == "RateLimitError":
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
