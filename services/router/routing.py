"""Router domain: which candidate a step gets, and why. Pure: no I/O.

A model step may go only to candidates cleared for every data class it carries (policy), that are
healthy (learned), fit its context, cost no more than their per-call limit and than what is left
of the goal's and the tenant's budget. Among those, the cheapest expected cost wins; candidates
whose learned p95 latency breaks their limit come after the others, `fallback_only` ones last.
The rest become litellm fallbacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.events import Binding, ErrorCode, Step, TypedError
from shared.models.routing_table import (  # noqa: F401 — the table is part of the router's API
    Budgets,
    Candidate,
    Route,
    RouterSettings,
    RoutingTable,
    load_routing_table,
    parse_routing_table,
)

LATENCY_WINDOW = 50
Price = tuple[float, float]  # USD per input token, per output token
Pricer = Callable[[Candidate], Price | None]


class RoutingError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


# --- learned statistics --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStats:
    """What the router has observed of one model; `latencies_ms` is a recent window."""

    calls: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    cost_usd_total: float = 0.0
    latencies_ms: tuple[float, ...] = ()
    last_error_at: float | None = None

    @property
    def successes(self) -> int:
        return self.calls - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def mean_cost_usd(self) -> float | None:
        return self.cost_usd_total / self.successes if self.successes else None

    @property
    def mean_latency_s(self) -> float | None:
        return sum(self.latencies_ms) / len(self.latencies_ms) / 1000 if self.latencies_ms else None

    @property
    def p95_latency_s(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] / 1000

    def succeeded(self, latency_ms: float, cost_usd: float) -> ModelStats:
        return replace(
            self,
            calls=self.calls + 1,
            consecutive_errors=0,
            cost_usd_total=self.cost_usd_total + cost_usd,
            latencies_ms=(*self.latencies_ms, latency_ms)[-LATENCY_WINDOW:],
        )

    def failed(self, at: float) -> ModelStats:
        return replace(
            self, calls=self.calls + 1, errors=self.errors + 1, consecutive_errors=self.consecutive_errors + 1,
            last_error_at=at,
        )

    def healthy(self, settings: RouterSettings, now: float) -> bool:
        if self.consecutive_errors < settings.unhealthy_after or self.last_error_at is None:
            return True
        return now - self.last_error_at >= settings.unhealthy_for_s

    def to_document(self) -> dict[str, Any]:
        return {
            "calls": self.calls, "errors": self.errors, "consecutive_errors": self.consecutive_errors,
            "cost_usd_total": self.cost_usd_total, "latencies_ms": list(self.latencies_ms),
            "last_error_at": self.last_error_at,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> ModelStats:
        if not document:
            return cls()
        return cls(
            calls=int(document.get("calls", 0)), errors=int(document.get("errors", 0)),
            consecutive_errors=int(document.get("consecutive_errors", 0)),
            cost_usd_total=float(document.get("cost_usd_total", 0.0)),
            latencies_ms=tuple(document.get("latencies_ms", ())), last_error_at=document.get("last_error_at"),
        )


# --- budgets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetState:
    """Limits and spend of the step's goal and tenant; None = no limit."""

    goal_limit_usd: float | None = None
    goal_spent_usd: float = 0.0
    tenant_limit_usd: float | None = None
    tenant_spent_usd: float = 0.0

    def remaining(self) -> tuple[str, float] | None:
        """The tighter of the goal's and the tenant's remaining budget, with its name."""
        left = [
            (name, limit - spent)
            for name, limit, spent in (
                ("goal", self.goal_limit_usd, self.goal_spent_usd),
                ("tenant", self.tenant_limit_usd, self.tenant_spent_usd),
            )
            if limit is not None
        ]
        return min(left, key=lambda item: item[1]) if left else None


# --- the decision --------------------------------------------------------------------------


def table_price(candidate: Candidate) -> Price | None:
    """Prices the table itself knows: explicit per-token prices, and the free offline provider."""
    if candidate.input_cost_per_token is not None or candidate.output_cost_per_token is not None:
        return candidate.input_cost_per_token or 0.0, candidate.output_cost_per_token or 0.0
    if candidate.offline:
        return 0.0, 0.0
    return None


def estimate_input_tokens(step: Step, inputs: Mapping[str, Any]) -> int:
    """About four characters a token, plus the prompt's framing."""
    text = (step.instruction or "") + json.dumps(inputs, default=str, sort_keys=True)
    return 50 + len(text) // 4


@dataclass
class _Option:
    candidate: Candidate
    index: int
    cost: float | None
    learned_cost: bool
    slow: bool
    notes: list[str] = field(default_factory=list)

    def key(self) -> tuple[bool, bool, bool, float, int]:
        return (self.candidate.fallback_only, self.slow, self.cost is None, self.cost or 0.0, self.index)


def choose(
    step: Step,
    table: RoutingTable,
    *,
    inputs: Mapping[str, Any] | None = None,
    stats: Mapping[str, ModelStats] | None = None,
    budget: BudgetState | None = None,
    price: Pricer = table_price,
    now: float = 0.0,
) -> Binding:
    """Tool steps run their tool; model steps get the cheapest candidate that meets the policy,
    the limits and the budget, with the other such candidates as fallbacks."""
    if step.tool is not None:
        return Binding(kind="tool", tool=step.tool, reason=f"step names tool {step.tool}")
    route = table.route(step.task_type)
    needed = sorted(set(step.data_classes))
    cleared = [c for c in route.candidates if set(needed) <= set(c.data_classes or ())]
    if not cleared:
        raise RoutingError(
            TypedError(
                code=ErrorCode.POLICY_VIOLATION,
                message=f"no model for task type {step.task_type!r} may receive data classes {needed}",
                details={"task_type": step.task_type, "data_classes": needed,
                         "candidates": [c.model for c in route.candidates]},
            )
        )
    stats = stats or {}
    tokens_in = estimate_input_tokens(step, inputs or {})
    tokens = tokens_in + route.expected_output_tokens
    left = (budget or BudgetState()).remaining()
    options: list[_Option] = []
    rejected: dict[str, str] = {}
    kinds: set[str] = set()
    for index, candidate in enumerate(cleared):
        seen = stats.get(candidate.model, ModelStats())
        cost, learned = _expected_cost(candidate, seen, price, tokens_in, route.expected_output_tokens)
        refusal = _rejection(candidate, seen, cost, tokens, left, table.router, now)
        if refusal is not None:
            kinds.add(refusal[0])
            rejected[candidate.model] = refusal[1]
            continue
        p95 = seen.p95_latency_s
        slow = bool(candidate.max_latency_s and p95 is not None and seen.calls >= table.router.min_samples
                    and p95 > candidate.max_latency_s)
        notes = [f"learned p95 {p95:.2f}s > max_latency_s {candidate.max_latency_s:g}"] if slow else []
        options.append(_Option(candidate, index, cost, learned, slow, notes))
    if not options:
        raise RoutingError(_refusal(step, needed, rejected, kinds, left))
    options.sort(key=_Option.key)
    chosen, *rest = options
    return Binding(
        kind="model",
        model=chosen.candidate.model,
        fallbacks=[o.candidate.model for o in rest],
        reason=_reason(step, table, needed, chosen, len(options), rejected),
        estimated_cost_usd=chosen.cost,
    )


def _rejection(
    candidate: Candidate,
    seen: ModelStats,
    cost: float | None,
    tokens: int,
    left: tuple[str, float] | None,
    settings: RouterSettings,
    now: float,
) -> tuple[str, str] | None:
    """Why a cleared candidate cannot take the step (kind, reason), or None when it can."""
    if not seen.healthy(settings, now):
        return "health", f"unhealthy ({seen.consecutive_errors} failures in a row)"
    if candidate.max_context_tokens and tokens > candidate.max_context_tokens:
        return "limit", f"needs ~{tokens} tokens > max_context_tokens {candidate.max_context_tokens}"
    if candidate.max_cost_usd is not None and cost is not None and cost > candidate.max_cost_usd:
        return "cost", f"expected ${cost:.6f} > max_cost_usd ${candidate.max_cost_usd:g}"
    if left is not None and (cost or 0.0) > left[1]:
        return "budget", f"expected ${cost or 0.0:.6f} > ${max(left[1], 0.0):.6f} left of the {left[0]} budget"
    return None


def _expected_cost(
    candidate: Candidate, seen: ModelStats, price: Pricer, tokens_in: int, tokens_out: int
) -> tuple[float | None, bool]:
    if seen.mean_cost_usd is not None:
        return seen.mean_cost_usd, True
    per_token = price(candidate)
    if per_token is None:
        return None, False
    return tokens_in * per_token[0] + tokens_out * per_token[1], False


def _refusal(
    step: Step, needed: list[str], rejected: dict[str, str], kinds: set[str], left: tuple[str, float] | None
) -> TypedError:
    listed = "; ".join(f"{model}: {why}" for model, why in rejected.items())
    details: dict[str, Any] = {"task_type": step.task_type, "data_classes": needed, "rejected": rejected}
    if kinds <= {"budget", "cost"}:
        if left is not None:
            details.update(budget=left[0], remaining_usd=left[1])
        return TypedError(
            code=ErrorCode.BUDGET_EXCEEDED,
            message=f"step {step.id} not dispatched: every candidate would exceed its cost limit "
            f"or the budget ({listed})",
            details=details,
        )
    return TypedError(
        code=ErrorCode.POLICY_VIOLATION,
        message=f"no allowed and healthy model for task type {step.task_type!r} ({listed})",
        retryable=kinds == {"health"},
        details=details,
    )


def _reason(
    step: Step, table: RoutingTable, needed: list[str], chosen: _Option, eligible: int, rejected: dict[str, str]
) -> str:
    source = "task type" if step.task_type in table.task_types else "default route"
    if chosen.cost is None:
        cost = "cost unknown"
    else:
        cost = f"expected ${chosen.cost:.6f} ({'learned' if chosen.learned_cost else 'priced'})"
    restricted = sorted(set(needed) & set(table.restricted_data_classes))
    parts = [
        f"{source} {step.task_type}: {chosen.candidate.model}, "
        f"cheapest of {eligible} candidate(s) meeting the limits, {cost}",
        f"cleared for {needed or ['no restricted data']}" + (f" (restricted: {restricted})" if restricted else ""),
    ]
    parts += chosen.notes
    if rejected:
        parts.append("skipped " + "; ".join(f"{model} ({why})" for model, why in rejected.items()))
    return "; ".join(parts)
