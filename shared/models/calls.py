"""What one model call gives ModelClient back, whichever path served it (the offline provider
called directly, or litellm's Router): an Answer, or a ModelError carrying the typed error."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import ErrorCode, TypedError


@dataclass(frozen=True)
class Answer:
    text: str
    served: str  # the model string that answered: a fallback's when the first model failed
    response_model: str  # the model name the provider reported
    input_tokens: int
    output_tokens: int
    cost_usd: float = 0.0


class ModelError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


def model_error(model: str, exc: Exception, status: int | None = None) -> TypedError:
    """The typed error of a failed call, from the exception's type and HTTP status (`status`
    when the exception carries none)."""
    status = getattr(exc, "status_code", None) or status
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
