"""Model routing through litellm's real HTTP path, against a fake OpenAI-compatible server on
loopback that answers with canned responses, 429s, 500s and slow responses.

The router decides (policy, limits, budget, learned statistics); the executor's ModelClient calls
through litellm's Router, whose retries, fallbacks and cooldowns are what is exercised here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.router.handlers import RouterDeps, handle
from services.router.prices import litellm_price
from services.router.routing import RoutingTable, parse_routing_table
from services.router.store import RouterStore
from shared.events import (
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Step,
    StepDispatched,
    StepFailed,
    StepReady,
    StepSucceeded,
)
from shared.models.client import ModelClient, ModelError
from shared.store import open_database
from tests.fakes.openai_server import FakeOpenAI, Reply, Slow, Status

IN_PRICE, OUT_PRICE = 1e-6, 2e-6


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", "test")
    with FakeOpenAI() as fake:
        yield fake


def candidate(server: FakeOpenAI, name: str, **limits: Any) -> dict[str, Any]:
    return {
        "model": f"openai/{name}",
        "api_base": server.base_url,
        "api_key_env": "FAKE_OPENAI_KEY",
        "input_cost_per_token": IN_PRICE,
        "output_cost_per_token": OUT_PRICE,
        **limits,
    }


def make_table(server: FakeOpenAI, *candidates: dict[str, Any], **router: Any) -> RoutingTable:
    return parse_routing_table({
        "router": {"num_retries": 0, "allowed_fails": 1, "cooldown_s": 60, **router},
        "default": {"candidates": [candidate(server, "default")]},
        "task_types": {"write": {"candidates": list(candidates)}},
    })


def client(table: RoutingTable) -> ModelClient:
    return ModelClient(TracerProvider().get_tracer("test"), timeout_s=10, table=table)


# --- litellm's fallbacks, timeouts and cooldowns --------------------------------------------


@pytest.mark.parametrize("failure", [Status(429, retry_after=0), Status(500)], ids=["429", "500"])
async def test_a_failing_model_falls_back_to_the_next_candidate(server, failure):
    server.script("first", [failure]).script("second", ["written by second"])
    table = make_table(server, candidate(server, "first"), candidate(server, "second"))
    result = await client(table).complete("openai/first", "write", "Write it", {"x": 1}, ["openai/second"])
    assert (result.text, result.model) == ("written by second", "openai/second")
    assert (server.count("first"), server.count("second")) == (1, 1)
    assert result.usage.cost_usd > 0


async def test_a_failing_real_model_falls_back_to_the_offline_provider_through_litellm(server):
    server.script("down", [Status(500)])
    table = make_table(server, candidate(server, "down"), {"model": "goalrail/offline-writer", "fallback_only": True})
    data = {"figures": {"totals": {"revenue": 4_200_000}}}
    result = await client(table).complete("openai/down", "summarise", "Summarise Q3", data, ["goalrail/offline-writer"])
    offline = await client(table).complete("goalrail/offline-writer", "summarise", "Summarise Q3", data)
    assert (result.model, result.text) == ("goalrail/offline-writer", offline.text)
    assert result.usage.cost_usd == 0.0 and server.count("down") == 1


async def test_a_slow_model_is_cut_at_its_max_latency_and_falls_back(server):
    server.script("slow", [Slow(3.0, "too late")]).script("quick", ["on time"])
    table = make_table(server, candidate(server, "slow", max_latency_s=0.5), candidate(server, "quick"))
    models = client(table)
    await models.warm_up()  # litellm's import is not the model's latency
    started = time.perf_counter()
    result = await models.complete("openai/slow", "write", "Write it", {}, ["openai/quick"])
    assert (result.text, result.model) == ("on time", "openai/quick")
    assert time.perf_counter() - started < 2.5
    assert server.count("slow") == 1


async def test_a_model_failing_without_fallbacks_is_a_typed_retryable_error(server):
    server.script("down", [Status(500)])
    table = make_table(server, candidate(server, "down"))
    with pytest.raises(ModelError) as info:
        await client(table).complete("openai/down", "write", "Write it", {})
    assert info.value.error.code is ErrorCode.MODEL_ERROR and info.value.error.retryable
    assert info.value.error.details["status"] == 500


async def test_a_repeatedly_failing_deployment_is_cooled_down(server):
    server.script("flaky", [Status(500)]).script("steady", ["steady answer"])
    table = make_table(server, candidate(server, "flaky"), candidate(server, "steady"), allowed_fails=1)
    models = client(table)
    for _ in range(5):
        result = await models.complete("openai/flaky", "write", "Write it", {}, ["openai/steady"])
        assert result.model == "openai/steady"
    # two failures (more than allowed_fails=1) put it in cooldown: later calls skip it
    assert server.count("flaky") == 2
    assert server.count("steady") == 5


async def test_litellm_retries_a_deployment_before_falling_back(server):
    server.script("bumpy", [Status(500), "second try worked"])
    table = make_table(server, candidate(server, "bumpy"), candidate(server, "spare"), num_retries=1, allowed_fails=5)
    result = await client(table).complete("openai/bumpy", "write", "Write it", {}, ["openai/spare"])
    assert (result.text, result.model) == ("second try worked", "openai/bumpy")
    assert (server.count("bumpy"), server.count("spare")) == (2, 0)


# --- the router's decisions, then the call, then what the router learns ---------------------


def root(budget: float | None = None) -> GoalSubmitted:
    goal = GoalSpec(text="Write the report", requester="r", constraints={"budget": {"max_cost_usd": budget}})
    return GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", goal=goal)


def ready(step: Step, budget: float | None = None, inputs: dict | None = None) -> StepReady:
    return root(budget).derive(StepReady, f"g:{step.id}:1:ready", "planner", plan_id="g:plan", step=step,
                               resolved_inputs=inputs or {"topic": "sales"}, goal_budget_usd=budget)


def router_deps(table: RoutingTable) -> RouterDeps:
    store = RouterStore(open_database("memory://", f"router_{uuid.uuid4().hex}"))
    return RouterDeps(decisions=store.decisions, table=table, store=store, price=litellm_price)


async def run_step(models: ModelClient, dispatched: StepDispatched) -> StepSucceeded | StepFailed:
    """What the executor does with a model binding, reduced to the model call."""
    binding = dispatched.binding
    try:
        result = await models.complete(binding.model, dispatched.step.task_type, dispatched.step.instruction or "",
                                       dispatched.resolved_inputs, binding.fallbacks)
    except ModelError as exc:
        return dispatched.derive(StepFailed, f"{dispatched.id}:failed", "executor", plan_id=dispatched.plan_id,
                                 step_id=dispatched.step.id, attempt=1, error=exc.error, binding=binding)
    return dispatched.derive(
        StepSucceeded, f"{dispatched.id}:succeeded", "executor", plan_id=dispatched.plan_id,
        step_id=dispatched.step.id, attempt=1, output={"text": result.text, "model": result.model},
        binding=binding, usage=result.usage, duration_ms=result.duration_ms,
    )


def write_step(step_id: str, data_classes: list[str] | None = None) -> Step:
    return Step(id=step_id, task_type="write", instruction="Write the summary", data_classes=data_classes or [])


async def test_litellm_cost_is_charged_and_a_step_beyond_the_goal_budget_is_not_dispatched(server):
    # 1000 prompt + 500 completion tokens at 1e-6 / 2e-6 USD = 0.002 USD per call
    server.script("writer", [Reply("the summary", prompt_tokens=1000, completion_tokens=500)])
    table = make_table(server, candidate(server, "writer"))
    deps, models = router_deps(table), client(table)

    (first,) = await handle(ready(write_step("one"), budget=0.003), deps)
    assert isinstance(first, StepDispatched) and first.binding.model == "openai/writer"
    result = await run_step(models, first)
    assert isinstance(result, StepSucceeded)
    assert result.usage.cost_usd == pytest.approx(0.002)
    assert await handle(result, deps) == []
    assert await deps.store.spent("g", "acme") == (pytest.approx(0.002), pytest.approx(0.002))

    # the learned cost of a call (0.002) no longer fits the 0.001 left: refused, never sent
    (second,) = await handle(ready(write_step("two"), budget=0.003), deps)
    assert isinstance(second, StepFailed) and second.error.code is ErrorCode.BUDGET_EXCEEDED
    assert second.error.details["budget"] == "goal"
    assert "left of the goal budget" in second.error.message
    assert server.count("writer") == 1


async def test_tenant_budget_refuses_steps_across_goals(server):
    server.script("writer", [Reply("text", prompt_tokens=1000, completion_tokens=500)])
    table = make_table(server, candidate(server, "writer"))
    table = table.model_copy(update={"budgets": table.budgets.model_copy(update={"tenants": {"acme": 0.001}})})
    deps = router_deps(table)
    await deps.store.charge("earlier-goal", "acme", 0.0009)
    (refused,) = await handle(ready(write_step("one")), deps)
    assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.BUDGET_EXCEEDED
    assert refused.error.details["budget"] == "tenant"
    assert server.count("writer") == 0


async def test_pii_steps_only_reach_models_cleared_for_pii(server):
    server.script("cloud", ["cloud text"]).script("onprem", ["on-prem text"])
    table = make_table(
        server,
        candidate(server, "cloud", input_cost_per_token=1e-9, output_cost_per_token=1e-9),  # cheapest
        candidate(server, "onprem", data_classes=["public", "internal", "pii"]),
    )
    deps, models = router_deps(table), client(table)

    (public,) = await handle(ready(write_step("public")), deps)
    assert (public.binding.model, public.binding.fallbacks) == ("openai/cloud", ["openai/onprem"])

    (pii,) = await handle(ready(write_step("private", ["pii"])), deps)
    assert (pii.binding.model, pii.binding.fallbacks) == ("openai/onprem", [])
    assert "restricted: ['pii']" in pii.binding.reason and "openai/cloud" not in pii.binding.fallbacks
    result = await run_step(models, pii)
    assert result.output["text"] == "on-prem text"
    assert (server.count("cloud"), server.count("onprem")) == (0, 1)


async def test_pii_step_fails_with_policy_violation_when_its_only_model_is_unhealthy(server):
    server.script("onprem", [Status(500)]).script("cloud", ["cloud text"])
    table = make_table(
        server,
        candidate(server, "cloud"),
        candidate(server, "onprem", data_classes=["public", "internal", "pii"]),
        allowed_fails=100,
    )
    deps, models = router_deps(table), client(table)
    for n in range(table.router.unhealthy_after):
        (dispatched,) = await handle(ready(write_step(f"s{n}", ["pii"])), deps)
        failed = await run_step(models, dispatched)
        assert isinstance(failed, StepFailed) and failed.error.code is ErrorCode.MODEL_ERROR
        await handle(failed, deps)
    (refused,) = await handle(ready(write_step("after", ["pii"])), deps)
    assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.POLICY_VIOLATION
    assert refused.error.retryable  # the model may recover
    assert "unhealthy" in refused.error.details["rejected"]["openai/onprem"]
    assert server.count("cloud") == 0  # never sent to a model not cleared for pii


async def test_the_router_learns_from_fallbacks_and_prefers_the_model_that_works(server):
    server.script("cheap", [Status(500)]).script("pricier", ["answer"])
    table = make_table(
        server,
        candidate(server, "pricier", input_cost_per_token=1e-5, output_cost_per_token=1e-5),
        candidate(server, "cheap", input_cost_per_token=1e-7, output_cost_per_token=1e-7),
        allowed_fails=100,
    )
    deps, models = router_deps(table), client(table)
    (first,) = await handle(ready(write_step("one")), deps)
    assert (first.binding.model, first.binding.fallbacks) == ("openai/cheap", ["openai/pricier"])
    assert "cheapest of 2" in first.binding.reason
    for n in range(table.router.unhealthy_after):
        (dispatched,) = await handle(ready(write_step(f"s{n}")), deps)
        await handle(await run_step(models, dispatched), deps)
    stats = await deps.store.stats()
    assert stats["openai/cheap"].consecutive_errors == table.router.unhealthy_after
    assert stats["openai/pricier"].successes == table.router.unhealthy_after
    (later,) = await handle(ready(write_step("later")), deps)
    assert (later.binding.model, later.binding.fallbacks) == ("openai/pricier", [])
    assert "openai/cheap (unhealthy" in later.binding.reason


async def test_dispatched_steps_reserve_their_estimate_until_their_result_arrives(server):
    server.script("writer", [Reply("text", prompt_tokens=100, completion_tokens=100)])
    table = make_table(server, candidate(server, "writer"))
    deps, models = router_deps(table), client(table)
    (first,) = await handle(ready(write_step("one"), budget=0.0015), deps)
    estimate = first.binding.estimated_cost_usd
    assert isinstance(first, StepDispatched) and 0.0008 < estimate < 0.0015
    # a parallel step: the first one's estimate is reserved, two would not fit
    (parallel,) = await handle(ready(write_step("two"), budget=0.0015), deps)
    assert isinstance(parallel, StepFailed) and parallel.error.code is ErrorCode.BUDGET_EXCEEDED
    # the result replaces the estimate with litellm's cost (100 * 1e-6 + 100 * 2e-6)
    await handle(await run_step(models, first), deps)
    assert (await deps.store.spent("g", "acme"))[0] == pytest.approx(0.0003)
    (later,) = await handle(ready(write_step("three"), budget=0.0015), deps)
    assert isinstance(later, StepDispatched)


async def test_personal_data_in_inputs_routes_an_undeclared_step_as_pii(server):
    server.script("cloud", ["cloud text"]).script("onprem", ["on-prem text"])
    table = make_table(
        server,
        candidate(server, "cloud", input_cost_per_token=1e-9, output_cost_per_token=1e-9),
        candidate(server, "onprem", data_classes=["public", "internal", "pii"]),
    )
    deps = router_deps(table)
    inputs = {"customer": {"name": "Ada", "contact": "ada.lovelace@example.com"}}
    (dispatched,) = await handle(ready(write_step("mail"), inputs=inputs), deps)
    assert (dispatched.binding.model, dispatched.binding.fallbacks) == ("openai/onprem", [])
    assert "pii detected in inputs at ['$.customer.contact']" in dispatched.binding.reason
    assert dispatched.step.data_classes == []  # the step stays as planned

    cloud_only = make_table(server, candidate(server, "cloud"))
    (refused,) = await handle(ready(write_step("mail2"), inputs=inputs), router_deps(cloud_only))
    assert isinstance(refused, StepFailed) and refused.error.code is ErrorCode.POLICY_VIOLATION
    assert refused.error.details["pii_detected_at"] == ["$.customer.contact"]
