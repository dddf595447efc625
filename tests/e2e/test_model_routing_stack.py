"""Model routing across the real service processes: the routing table sends the demo goal's
summary to models on a fake OpenAI-compatible server; litellm falls back past a rate-limited one,
litellm's cost reaches the outcome, and the router learns from the results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.router.store import RouterStore
from shared.client import GoalrailClient
from shared.embedded.stack import EmbeddedStack, fresh_workdir
from shared.events import GoalCompleted, StepDispatched, parse_event
from shared.store import open_database
from tests.fakes.openai_server import FakeOpenAI, Reply, Status

pytestmark = pytest.mark.e2e

DEMO_GOAL = "Prepare the Q3 sales report for the board"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def routing_table(path: Path, server: FakeOpenAI) -> Path:
    def fake(name: str, price: float) -> dict:
        return {"model": f"openai/{name}", "api_base": server.base_url, "api_key_env": "FAKE_OPENAI_KEY",
                "input_cost_per_token": price, "output_cost_per_token": price}

    table = {
        "router": {"num_retries": 0},
        "default": {"candidates": [{"model": "goalrail/offline-writer"}]},
        "task_types": {"summarise": {"candidates": [fake("writer", 2e-6), fake("limited", 1e-6)]}},
    }
    path.write_text(yaml.safe_dump(table))
    return path


async def test_a_goal_routes_its_model_step_through_litellm_fallbacks(tmp_path, fake_openai):
    fake_openai.script("limited", [Status(429, retry_after=0)])
    fake_openai.script("writer", [Reply("Q3 summary from the fake writer", prompt_tokens=400, completion_tokens=100)])
    workdir = fresh_workdir(tmp_path / "stack")
    env = {"GOALRAIL_ROUTING_TABLE": str(routing_table(tmp_path / "routing.yaml", fake_openai)),
           "FAKE_OPENAI_KEY": "test"}
    stack = EmbeddedStack(workdir, extra_env=env)
    await stack.start()
    try:
        async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
            outcome = await client.submit_and_wait(DEMO_GOAL, requester="cfo@acme.example", timeout=60)
        assert isinstance(outcome, GoalCompleted), outcome
        assert outcome.outputs["summary"] == "Q3 summary from the fake writer"
        # 500 tokens at 2e-6 USD, priced by litellm from the deployment's prices
        assert outcome.usage.cost_usd == pytest.approx(0.001)
        assert (fake_openai.count("limited"), fake_openai.count("writer")) == (1, 1)

        store = RouterStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], "goalrail_router"))
        decisions = await store.decisions.find({"goal_id": outcome.goal_id}).to_list(None)
        dispatched = [parse_event(json.dumps(e)) for d in decisions for e in d["outbox"]]
        (summary,) = [e for e in dispatched if isinstance(e, StepDispatched) and e.binding.kind == "model"]
        assert (summary.binding.model, summary.binding.fallbacks) == ("openai/limited", ["openai/writer"])
        assert "cheapest of 2" in summary.binding.reason

        # the router consumes the result asynchronously: wait for what it learned
        for _ in range(100):
            stats = await store.stats()
            if "openai/writer" in stats:
                break
            await asyncio.sleep(0.1)
        assert stats["openai/limited"].errors == 1 and stats["openai/writer"].successes == 1
        assert await store.spent(outcome.goal_id, "acme") == (pytest.approx(0.001), pytest.approx(0.001))
    finally:
        await stack.stop()
