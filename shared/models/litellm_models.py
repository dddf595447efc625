"""Model calls through litellm's Router, for calls that involve a model other than the offline
provider.

Importing this module imports litellm, which costs seconds and some 200 MB of memory, so
ModelClient imports it only when a call (or, at warm-up, the routing table) names such a model.
Once litellm is loaded, `goalrail/<name>` is a litellm model too, served by the offline provider:
a real model can fall back to it, and `litellm.completion(model="goalrail/…")` works.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm reads it on import: no network

import litellm  # noqa: E402

from shared.models import offline_provider  # noqa: E402
from shared.models.calls import Answer, ModelError, model_error  # noqa: E402
from shared.models.prompts import build_messages  # noqa: E402
from shared.models.routing_table import OFFLINE_PROVIDER, Candidate, RoutingTable, is_offline  # noqa: E402

litellm.suppress_debug_info = True


class OfflineProvider(litellm.CustomLLM):
    """The offline provider as a litellm custom provider: the same answers as the direct path."""

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        return self.completion(model, messages, *args, **kwargs)

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        answer = offline_provider.answer(messages)
        return litellm.ModelResponse(
            model=model,
            choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer.text}}],
            usage={
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        )


def register_offline_provider() -> None:
    """Make `goalrail/<anything>` a litellm model served by the offline provider."""
    if any(entry.get("provider") == OFFLINE_PROVIDER for entry in litellm.custom_provider_map):
        return
    litellm.custom_provider_map = [
        *litellm.custom_provider_map,
        {"provider": OFFLINE_PROVIDER, "custom_handler": OfflineProvider()},
    ]


register_offline_provider()


class LitellmModels:
    """Calls through litellm's Router, and traces nothing (ModelClient does).

    Every model of the routing table is a Router deployment (its api_base, key, price and
    `max_latency_s` as timeout); a call's fallbacks become its fallback chain. Retries, fallbacks
    and cooldowns of failing deployments are litellm's, configured by the table's `router:`
    section. A model string missing from the table is added as a plain deployment.
    """

    def __init__(self, table: RoutingTable, timeout_s: float) -> None:
        self._table = table
        self._timeout_s = timeout_s
        self._router: Any = None
        self._deployments: dict[str, dict[str, Any]] = {}

    def _ensure_router(self, models: list[str]) -> Any:
        """The Router, rebuilt only when a call names a model it does not know."""
        if self._router is not None and all(m in self._deployments for m in models):
            return self._router
        known = self._table.candidates()
        for model in [*known, *models]:
            if model not in self._deployments:
                candidate = known.get(model) or Candidate(model=model)
                self._deployments[model] = {
                    "model_name": model,
                    "litellm_params": candidate.litellm_params(),
                    "model_info": {"id": model},
                }
        self._router = self._new_router()
        return self._router

    def _new_router(self) -> Any:
        settings = self._table.router
        fails = settings.allowed_fails
        return litellm.Router(
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

    async def warm_up(self) -> None:
        """Build the Router and make one offline call through it: litellm's first call loads
        lazily imported modules, a cost the first goal should not pay."""
        warm_up = f"{OFFLINE_PROVIDER}/warm-up"
        router = self._ensure_router([warm_up])
        await router.acompletion(model=warm_up, messages=build_messages("write", "warm up", {}))

    async def answer(
        self, chain: list[str], messages: list[dict[str, str]], response_format: dict[str, Any] | None
    ) -> Answer:
        """The first model of `chain` answers, or litellm falls back along the rest."""
        model, *fallbacks = chain
        router = self._ensure_router(chain)
        extra: dict[str, Any] = {"fallbacks": [{model: fallbacks}]} if fallbacks else {}
        if response_format:
            extra["response_format"] = response_format
        try:
            response = await router.acompletion(model=model, messages=messages, **extra)
        except Exception as exc:  # noqa: BLE001 — litellm raises many provider-specific types
            raise ModelError(model_error(model, exc)) from exc
        hidden = getattr(response, "_hidden_params", {}) or {}
        served = hidden.get("model_id") if hidden.get("model_id") in self._deployments else model
        return Answer(
            text=response.choices[0].message.content or "",
            served=served,
            response_model=response.model or served,
            input_tokens=response.usage.prompt_tokens,
            output_tokens=response.usage.completion_tokens,
            cost_usd=0.0 if is_offline(served) else _cost(response),
        )


def _cost(response: Any) -> float:
    hidden = getattr(response, "_hidden_params", {}) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # noqa: BLE001 — a model without a known price is recorded as free
        return 0.0
