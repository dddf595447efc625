"""The router's decision, pure: policy by data class, limits against learned statistics, budgets,
cheapest-first preference, the reason it gives, and the routing table's validation messages."""

from __future__ import annotations

import pytest

from services.router.prices import litellm_price
from services.router.routing import (
    BudgetState,
    ModelStats,
    RoutingError,
    RoutingTable,
    choose,
    estimate_input_tokens,
    parse_routing_table,
)
from shared.events import ErrorCode, Step
from shared.settings import CONFIG_DIR
from shared.models.routing_table import load_routing_table


def table(*candidates: dict, **extra) -> RoutingTable:
    return parse_routing_table({
        "default": {"candidates": [{"model": "goalrail/offline-writer"}]},
        "task_types": {"write": {"candidates": list(candidates), "expected_output_tokens": 100}},
        **extra,
    })


def priced(model: str, per_token: float, **limits) -> dict:
    return {"model": model, "input_cost_per_token": per_token, "output_cost_per_token": per_token, **limits}


def step(data_classes: list[str] | None = None, step_id: str = "w") -> Step:
    return Step(id=step_id, task_type="write", instruction="Write it", data_classes=data_classes or [])


def stats(calls: int = 10, errors: int = 0, latency_ms: float = 100.0, cost: float = 0.0, **kw) -> ModelStats:
    return ModelStats(calls=calls, errors=errors, latencies_ms=(latency_ms,) * (calls - errors),
                      cost_usd_total=cost * (calls - errors), **kw)


# --- preference ----------------------------------------------------------------------------


def test_cheapest_candidate_meeting_the_limits_wins_and_the_rest_are_fallbacks():
    t = table(priced("acme/big", 1e-5), priced("acme/small", 1e-7), priced("acme/mid", 1e-6))
    binding = choose(step(), t)
    assert (binding.model, binding.fallbacks) == ("acme/small", ["acme/mid", "acme/big"])
    assert binding.estimated_cost_usd == pytest.approx((estimate_input_tokens(step(), {}) + 100) * 1e-7)
    assert binding.reason.startswith("task type write: acme/small, cheapest of 3 candidate(s) meeting the limits")
    assert "(priced)" in binding.reason


def test_unknown_prices_keep_table_order_after_known_ones():
    t = table({"model": "acme/unknown-a"}, priced("acme/known", 1e-5), {"model": "acme/unknown-b"})
    binding = choose(step(), t)
    assert (binding.model, binding.fallbacks) == ("acme/known", ["acme/unknown-a", "acme/unknown-b"])


def test_learned_cost_replaces_the_price_estimate():
    t = table(priced("acme/a", 1e-7), priced("acme/b", 1e-6))
    learned = {"acme/a": stats(cost=0.5), "acme/b": stats(cost=0.01)}
    binding = choose(step(), t, stats=learned)
    assert binding.model == "acme/b" and "$0.010000 (learned)" in binding.reason


def test_learned_latency_beyond_the_limit_puts_a_candidate_last():
    t = table(priced("acme/cheap", 1e-7, max_latency_s=1.0), priced("acme/fast", 1e-5, max_latency_s=1.0))
    binding = choose(step(), t, stats={"acme/cheap": stats(latency_ms=2500)})
    assert (binding.model, binding.fallbacks) == ("acme/fast", ["acme/cheap"])
    # too few samples: the limit does not count yet
    binding = choose(step(), t, stats={"acme/cheap": stats(calls=2, latency_ms=2500)})
    assert binding.model == "acme/cheap"


def test_table_order_breaks_ties():
    t = table({"model": "goalrail/one"}, {"model": "goalrail/two"})
    assert choose(step(), t).model == "goalrail/one"


def test_litellm_prices_come_from_its_cost_map():
    t = table({"model": "openai/gpt-4o"}, {"model": "openai/gpt-4o-mini"})
    binding = choose(step(), t, price=litellm_price)
    assert (binding.model, binding.fallbacks) == ("openai/gpt-4o-mini", ["openai/gpt-4o"])


# --- limits and health -----------------------------------------------------------------------


def test_max_cost_per_call_excludes_a_candidate():
    t = table(priced("acme/pricey", 1e-3, max_cost_usd=0.01), priced("acme/ok", 1e-3))
    binding = choose(step(), t)
    assert (binding.model, binding.fallbacks) == ("acme/ok", [])
    assert "acme/pricey (expected $" in binding.reason and "> max_cost_usd $0.01" in binding.reason


def test_max_context_excludes_a_candidate_too_small_for_the_inputs():
    t = table(priced("acme/small-ctx", 1e-7, max_context_tokens=200), priced("acme/large-ctx", 1e-6))
    big = {"rows": ["x" * 100] * 20}
    binding = choose(step(), t, inputs=big)
    assert binding.model == "acme/large-ctx"
    assert "max_context_tokens 200" in binding.reason
    assert choose(step(), t, inputs={}).model == "acme/small-ctx"


def test_unhealthy_models_are_skipped_until_they_have_rested():
    t = table(priced("acme/cheap", 1e-7), priced("acme/spare", 1e-6))
    sick = {"acme/cheap": ModelStats(calls=3, errors=3, consecutive_errors=3, last_error_at=1000.0)}
    assert choose(step(), t, stats=sick, now=1010.0).model == "acme/spare"
    assert choose(step(), t, stats=sick, now=1000.0 + t.router.unhealthy_for_s).model == "acme/cheap"


# --- policy ----------------------------------------------------------------------------------


def test_pii_goes_only_to_models_cleared_for_it():
    t = table(priced("cloud/cheap", 1e-9), priced("onprem/llm", 1e-6, data_classes=["public", "internal", "pii"]))
    binding = choose(step(["pii"]), t)
    assert (binding.model, binding.fallbacks) == ("onprem/llm", [])
    assert "cleared for ['pii'] (restricted: ['pii'])" in binding.reason
    assert choose(step(["internal"]), t).model == "cloud/cheap"


def test_no_cleared_model_is_a_policy_violation():
    t = table(priced("cloud/cheap", 1e-9))
    with pytest.raises(RoutingError) as info:
        choose(step(["pii"]), t)
    assert info.value.error.code is ErrorCode.POLICY_VIOLATION and not info.value.error.retryable


def test_no_healthy_cleared_model_is_a_retryable_policy_violation():
    t = table(priced("cloud/cheap", 1e-9), priced("onprem/llm", 1e-6, data_classes=["pii"]))
    sick = {"onprem/llm": ModelStats(calls=5, errors=5, consecutive_errors=5, last_error_at=1.0)}
    with pytest.raises(RoutingError) as info:
        choose(step(["pii"]), t, stats=sick, now=2.0)
    error = info.value.error
    assert error.code is ErrorCode.POLICY_VIOLATION and error.retryable
    assert error.details["rejected"] == {"onprem/llm": "unhealthy (5 failures in a row)"}
    assert "cloud/cheap" not in error.message


# --- budgets ---------------------------------------------------------------------------------


def test_a_step_that_would_exceed_the_goal_budget_is_refused():
    t = table(priced("acme/a", 1e-4))
    with pytest.raises(RoutingError) as info:
        choose(step(), t, budget=BudgetState(goal_limit_usd=0.05, goal_spent_usd=0.04))
    error = info.value.error
    assert error.code is ErrorCode.BUDGET_EXCEEDED
    assert error.details["budget"] == "goal" and error.details["remaining_usd"] == pytest.approx(0.01)


def test_budget_picks_a_cheaper_candidate_that_still_fits():
    t = table(priced("acme/fast", 1e-7, max_latency_s=1), priced("acme/slow", 1e-9, max_latency_s=1))
    learned = {"acme/slow": stats(latency_ms=5000)}  # slow: last choice…
    assert choose(step(), t, stats=learned).model == "acme/fast"
    tight = BudgetState(goal_limit_usd=1.0, goal_spent_usd=1.0 - 1e-5)  # …but the only one that fits
    binding = choose(step(), t, stats=learned, budget=tight)
    assert (binding.model, binding.fallbacks) == ("acme/slow", [])
    assert "left of the goal budget" in binding.reason


def test_the_tighter_of_goal_and_tenant_budget_applies():
    budget = BudgetState(goal_limit_usd=10, goal_spent_usd=1, tenant_limit_usd=100, tenant_spent_usd=99.5)
    assert budget.remaining() == ("tenant", pytest.approx(0.5))
    assert BudgetState().remaining() is None


def test_free_offline_steps_pass_a_zero_budget_until_it_is_overspent():
    t = table({"model": "goalrail/offline-writer"})
    assert choose(step(), t, budget=BudgetState(goal_limit_usd=0.0)).model == "goalrail/offline-writer"
    with pytest.raises(RoutingError):
        choose(step(), t, budget=BudgetState(goal_limit_usd=0.0, goal_spent_usd=0.01))


def test_tenant_budgets_come_from_the_table():
    t = table({"model": "goalrail/x"}, budgets={"tenants": {"acme": 5}, "default_tenant_usd": 1})
    assert (t.budgets.tenant_limit("acme"), t.budgets.tenant_limit("other")) == (5, 1)


# --- statistics ------------------------------------------------------------------------------


def test_stats_learn_latency_errors_and_cost():
    s = ModelStats().succeeded(100, 0.01).succeeded(300, 0.03).failed(at=5.0)
    assert (s.calls, s.errors, s.successes, s.consecutive_errors) == (3, 1, 2, 1)
    assert s.mean_cost_usd == pytest.approx(0.02) and s.mean_latency_s == pytest.approx(0.2)
    assert s.p95_latency_s == pytest.approx(0.3) and s.error_rate == pytest.approx(1 / 3)
    assert s.succeeded(50, 0).consecutive_errors == 0
    assert ModelStats.from_document(s.to_document()) == s


# --- the table -------------------------------------------------------------------------------


def test_builtin_table_is_valid_and_offline():
    t = load_routing_table(CONFIG_DIR / "routing.yaml")
    assert all(c.offline for c in t.candidates().values())
    assert t.restricted_data_classes == ["pii"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task_types": {}}, "default route: Field required"),
        (
            {"default": {"candidates": [{"model": "goalrail/x"}]},
             "task_types": {"write": {"candidates": [{"model": "openai/gpt-4o", "max_cost_usd": -1}]}}},
            "task type 'write', candidate 1 (openai/gpt-4o), max_cost_usd: Input should be greater than or equal to 0",
        ),
        (
            {"default": {"candidates": [{"model": "goalrail/x", "max_cost": 1}]}},
            "default route, candidate 1 (goalrail/x), max_cost: unknown field",
        ),
        (
            {"default": {"candidates": [{"model": "goalrail/x"}]},
             "task_types": {"wirte": {"candidates": [{"model": "goalrail/x"}]}}},
            "unknown task type(s) ['wirte']",
        ),
        (
            {"default": {"candidates": [{"model": "goalrail/x"}, {"model": "goalrail/x"}]}},
            "default route, candidates: model 'goalrail/x' is listed twice",
        ),
        (
            {"default": {"candidates": [{"model": "goalrail/x"}]}, "default_data_classes": ["public", "pii"]},
            "table: default_data_classes must not contain restricted classes ['pii']",
        ),
        (
            {"default": {"candidates": [{"model": "goalrail/x"}]}, "budgets": {"tenants": {"acme": -5}}},
            "budget of tenant 'acme' must be >= 0",
        ),
    ],
)
def test_validation_errors_name_the_task_type_candidate_and_field(raw, message):
    with pytest.raises(ValueError) as info:
        parse_routing_table(raw, "routing.yaml")
    assert str(info.value).startswith("routing table routing.yaml is invalid:")
    assert message in str(info.value)


def test_fallback_only_candidates_come_last_however_cheap():
    t = table({"model": "goalrail/offline-writer", "fallback_only": True}, priced("openai/x", 1e-6),
              priced("openai/y", 1e-5))
    binding = choose(step(), t)
    assert (binding.model, binding.fallbacks) == ("openai/x", ["openai/y", "goalrail/offline-writer"])
    sick = {"openai/x": ModelStats(calls=3, errors=3, consecutive_errors=3, last_error_at=0.0),
            "openai/y": ModelStats(calls=3, errors=3, consecutive_errors=3, last_error_at=0.0)}
    assert choose(step(), t, stats=sick, now=1.0).model == "goalrail/offline-writer"
