"""Heavy libraries load only in the processes and code paths that use them: a service started
with the default (offline) settings imports no litellm, matplotlib or mcp — litellm alone would
add some 200 MB to a process. And the offline provider answers the same whether ModelClient
calls it directly or litellm serves it as `goalrail/<name>`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry import trace

from shared.models.client import ModelClient
from shared.models.prompts import build_messages, build_plan_messages

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("litellm", "matplotlib", "mcp", "openpyxl")

# What a service does from its start to its first offline model call, then which heavy modules it holds.
START_A_SERVICE = """
import asyncio, json, sys
from importlib import import_module
from opentelemetry import trace
from shared.settings import Settings

settings = Settings()
import_module(f"services.{sys.argv[1]}.app").create_app(settings)
if sys.argv[1] in ("planner", "executor"):
    from shared.models.client import ModelClient
    from shared.models.routing_table import load_routing_table

    async def first_model_call():
        models = ModelClient(trace.get_tracer("test"), table=load_routing_table(settings.routing_table))
        await models.warm_up()
        await models.complete("goalrail/offline-writer", "summarise", "Summarise", {"revenue": 1})

    asyncio.run(first_model_call())
if sys.argv[1] == "router":
    from services.router.prices import litellm_price
    from services.router.routing import Candidate

    assert litellm_price(Candidate(model="openai/gpt-4o-mini")) is not None
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in sys.argv[2:])))
"""


def loaded_heavy_modules(service: str) -> set[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GOALRAIL_")}
    env.update(GOALRAIL_MONGO_URL="memory://", LITELLM_LOCAL_MODEL_COST_MAP="True")
    run = subprocess.run([sys.executable, "-c", START_A_SERVICE, service, *HEAVY], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return {name.split(".")[0] for name in json.loads(run.stdout.splitlines()[-1])}


@pytest.mark.parametrize("service", ["planner", "router", "executor", "auditor"])
def test_a_service_on_offline_settings_imports_no_heavy_library(service):
    assert loaded_heavy_modules(service) == set()


WRITE = build_messages("summarise", "Summarise Q3 2026 sales",
                       {"figures": {"totals": {"revenue": 4_200_000, "target": 4_000_000}}})
CLASSIFY = build_messages("classify", "Route this", {"labels": ["billing", "tech_support"], "text": "my support ticket"})
PLAN = build_plan_messages("Publish a report of Q2 sales figures", {
    "goal": {"text": "Publish a report of Q2 sales figures"},
    "tools": [{"name": "sales.get_figures", "description": "Sales figures by quarter", "side_effect": "read",
               "input_schema": {"type": "object", "properties": {"quarter": {"type": "string"}}}},
              {"name": "reports.publish", "description": "Publish a report", "side_effect": "write",
               "input_schema": {"type": "object", "properties": {"title": {"type": "string"},
                                                                 "body": {"type": "string"}}}}],
})


@pytest.mark.parametrize("model, messages", [("goalrail/offline-writer", WRITE), ("goalrail/offline-writer", CLASSIFY),
                                             ("goalrail/offline-planner", PLAN)], ids=["write", "classify", "plan"])
async def test_the_direct_offline_call_answers_as_the_provider_registered_with_litellm(model, messages):
    direct = await ModelClient(trace.get_tracer("test")).complete(model, "", "", {}, messages=messages)

    from shared.models.litellm_models import litellm

    served = litellm.completion(model=model, messages=messages)
    assert direct.text == served.choices[0].message.content
    assert (direct.usage.input_tokens, direct.usage.output_tokens) == (
        served.usage.prompt_tokens, served.usage.completion_tokens)
    assert direct.model == model and direct.usage.cost_usd == 0.0


def test_warm_up_loads_litellm_only_for_a_routing_table_that_names_a_real_model():
    from shared.models.routing_table import parse_routing_table

    offline = parse_routing_table({"default": {"candidates": [{"model": "goalrail/offline-writer"}]}})
    mixed = parse_routing_table({"default": {"candidates": [{"model": "openai/gpt-4o-mini"},
                                                            {"model": "goalrail/offline-writer"}]}})
    assert not ModelClient(trace.get_tracer("test"), table=offline).needs_litellm()
    assert ModelClient(trace.get_tracer("test"), table=mixed).needs_litellm()
