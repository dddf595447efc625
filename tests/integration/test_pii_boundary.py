"""Personal data never leaves for a model or a web-facing tool not cleared for it.

A goal carries a valid card number and an e-mail address in its input (the demo playbook puts it
into the summary step's instruction and the published report's audience), and the fake model
even writes the card number back into its summary. Two levels:

- across the four real service processes (broker, store, demo API): the model server and the
  business API (behind a recording proxy) receive no card digits in any spacing, the outcome and
  the audit trail hold redacted copies, and the auditor records mitigated policy flags while the
  goal still completes;
- the executor alone, against the same fake model server through litellm and a loopback HTTP
  tool imported from its OpenAPI document, including a tool cleared for `pii` (which gets it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request, Response
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from services.auditor.app import DATABASE as AUDIT_DATABASE
from services.auditor.store import AuditStore
from services.executor.execution import StepRunner
from shared.client import GoalrailClient
from shared.embedded.stack import EmbeddedStack, free_port, fresh_workdir
from shared.events import Binding, GoalCompleted, GoalSpec, GoalSubmitted, Step, StepDispatched, StepSucceeded
from shared.governance.boundaries import model_clearances
from shared.models.client import ModelClient
from shared.models.routing_table import parse_routing_table
from shared.store import open_database
from shared.tools.openapi import OpenAPISource, load_document, openapi_tools
from shared.tools.registry import ToolRegistry
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.integration.tool_servers import LoopbackServer

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@acme.example"
# the card's digits however they are spaced or dashed
CARD_ANYHOW = re.compile(r"4\D{0,3}1\D{0,3}1\D{0,3}1(?:\D{0,3}1){12}")
DEMO_GOAL = "Prepare the Q3 sales report for the board"


def leaks(text: str) -> list[str]:
    found = CARD_ANYHOW.findall(text)
    return found + ([EMAIL] if EMAIL in text else [])


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def recording_proxy(target: str) -> tuple[FastAPI, list[dict[str, Any]]]:
    """Forwards every request to `target` and keeps what it received."""
    app, received = FastAPI(), []

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        received.append({"method": request.method, "url": str(request.url), "body": body.decode(errors="replace")})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient() as http:
            answer = await http.request(request.method, f"{target}/{path}", params=request.query_params,
                                        content=body, headers=headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    return app, received


def fake_writer(server: FakeOpenAI) -> dict[str, Any]:
    # not cleared for pii: the table's default classes (public, internal)
    return {"model": "openai/writer", "api_base": server.base_url, "api_key_env": "FAKE_OPENAI_KEY",
            "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}


@pytest.mark.e2e
async def test_a_card_number_in_a_goal_never_reaches_the_model_or_the_business_api(tmp_path, fake_openai):
    # a careless model copies the card into its summary, which goes on to reports.publish
    fake_openai.script("writer", [Reply(f"Q3 was strong. Card on file {CARD}, contact {EMAIL}.")])
    table = {"router": {"num_retries": 0}, "default": {"candidates": [{"model": "goalrail/offline-writer"}]},
             "task_types": {"summarise": {"candidates": [fake_writer(fake_openai)]}}}
    (tmp_path / "routing.yaml").write_text(yaml.safe_dump(table))
    demo_port = free_port()
    app, received = recording_proxy(f"http://127.0.0.1:{demo_port}")
    with LoopbackServer(app) as proxy:
        env = {"GOALRAIL_ROUTING_TABLE": str(tmp_path / "routing.yaml"), "FAKE_OPENAI_KEY": "test",
               "GOALRAIL_DEMO_API_URL": proxy.url}
        stack = EmbeddedStack(fresh_workdir(tmp_path / "stack"), extra_env=env, demo_api_port=demo_port)
        try:  # stopped even when it fails to start, so no process outlives the test
            await stack.start()
            async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
                outcome = await client.submit_and_wait(
                    DEMO_GOAL, requester="cfo@acme.example", timeout=90,
                    input={"audience": f"board (card {CARD}, {EMAIL})"},
                )
            audit = AuditStore(open_database(stack.env()["GOALRAIL_MONGO_URL"], AUDIT_DATABASE))
            records = await audit.records(outcome.goal_id)
            flags = await audit.flags(outcome.goal_id)
        finally:
            await stack.stop()

    # the model server: one request, card and e-mail redacted from the instruction
    (request,) = fake_openai.requests_for("writer")
    assert leaks(json.dumps(request)) == [], request
    assert "[REDACTED:card]" in json.dumps(request)
    # the business API: every request it received (figures, accounts, the published report)
    assert {r["url"].split("?")[0].rsplit("/", 1)[-1] for r in received} >= {"reports"}
    assert all(leaks(json.dumps(r)) == [] for r in received), received
    published = next(r for r in received if r["method"] == "POST")
    assert "[REDACTED:card]" in published["body"] and "[REDACTED:email]" in published["body"]

    # the outcome: completed (every flag mitigated), its outputs redacted
    assert isinstance(outcome, GoalCompleted), outcome
    assert leaks(outcome.model_dump_json()) == []
    assert "[REDACTED:card]" in outcome.outputs["summary"]
    # the audit trail keeps redacted copies only
    assert records and all(leaks(json.dumps(r.event)) == [] for r in records)
    # the auditor saw the personal data on its way out and recorded that it was redacted
    rules = {(f.rule, f.status) for f in flags}
    assert ("pii_to_model", "mitigated") in rules
    assert ("pii_headed_to_web_tool", "mitigated") in rules
    assert ("pii_to_web_tool", "mitigated") in rules
    assert not [f for f in flags if f.status == "open"]
    assert all(leaks(f.model_dump_json()) == [] for f in flags)


# --- the executor alone ------------------------------------------------------------------------


class Note(BaseModel):
    text: str
    by: str


def tool_api() -> tuple[FastAPI, list[dict[str, Any]]]:
    app, received = FastAPI(title="Notes", version="1.0.0"), []

    @app.post("/notes", operation_id="add_note")
    async def add_note(note: Note, request: Request) -> dict[str, Any]:
        received.append(json.loads(await request.body()))
        return {"ok": True}

    return app, received


def notes_tools(server: LoopbackServer, data_classes: list[str]) -> ToolRegistry:
    url = f"{server.url}/openapi.json"
    config = OpenAPISource(name="notes", document=url, base_url=server.url,
                           defaults={"data_classes": data_classes},
                           operations={"add_note": {"tool": "notes.add", "side_effect": "write"}})
    tools, _ = openapi_tools(load_document(url), config, document_url=url)
    registry = ToolRegistry()
    registry.extend(tools)
    return registry


def dispatched(step: Step, inputs: dict[str, Any], binding: Binding) -> StepDispatched:
    root = GoalSubmitted(id="g:submitted", goal_id="g", tenant="acme", goal=GoalSpec(text="goal", requester="r"))
    return root.derive(StepDispatched, f"g:{step.id}:1:dispatched", "router", plan_id="g:plan", step=step,
                       resolved_inputs=inputs, binding=binding)


@pytest.mark.parametrize("cleared, redacted", [([], True), (["internal", "pii"], False)])
async def test_the_executor_redacts_for_a_web_tool_unless_it_is_cleared(cleared, redacted):
    app, received = tool_api()
    with LoopbackServer(app) as server:
        tools = notes_tools(server, cleared)
        async with httpx.AsyncClient() as http:
            runner = StepRunner(tools=tools, models=None, http=http,  # type: ignore[arg-type]
                                tracer=TracerProvider().get_tracer("t"), tool_config={})
            step = Step(id="note", task_type="act", tool="notes.add", side_effect="write")
            result = await runner.run(dispatched(step, {"text": f"pay with {CARD}", "by": EMAIL},
                                                 Binding(kind="tool", tool="notes.add", reason="t")))
    assert isinstance(result, StepSucceeded), result
    (body,) = received
    if redacted:
        assert leaks(json.dumps(body)) == [] and body["text"] == "pay with [REDACTED:card]"
    else:
        assert body == {"text": f"pay with {CARD}", "by": EMAIL}


async def test_the_executor_sends_a_model_only_what_it_and_its_fallbacks_are_cleared_for(fake_openai, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "test")
    fake_openai.script("writer", [Reply("fine")])
    fake_openai.script("local", [Reply("fine")])
    local = {**fake_writer(fake_openai), "model": "openai/local", "data_classes": ["public", "internal", "pii"]}
    table = parse_routing_table({"router": {"num_retries": 0}, "default": {"candidates": [fake_writer(fake_openai)]},
                                 "task_types": {"write": {"candidates": [local]}}})
    models = ModelClient(TracerProvider().get_tracer("t"), 10, table=table)
    async with httpx.AsyncClient() as http:
        runner = StepRunner(tools=ToolRegistry(), models=models, http=http, tracer=TracerProvider().get_tracer("t"),
                            tool_config={}, clearances=model_clearances(table))
        step = Step(id="w", task_type="write", instruction=f"Write to {EMAIL} about card {CARD.replace(' ', '-')}")
        inputs = {"customer": {"card": CARD, "email": EMAIL}}
        plain = await runner.run(dispatched(step, inputs, Binding(kind="model", model="openai/writer", reason="t")))
        cleared = await runner.run(dispatched(step.model_copy(update={"id": "v"}), inputs,
                                              Binding(kind="model", model="openai/local", reason="t")))
        # a pii-cleared model with an uncleared fallback: the chain gets only what all may see
        chained = await runner.run(dispatched(step.model_copy(update={"id": "u"}), inputs,
                                              Binding(kind="model", model="openai/local", fallbacks=["openai/writer"],
                                                      reason="t")))
    assert all(isinstance(r, StepSucceeded) for r in (plain, cleared, chained)), (plain, cleared, chained)
    writer_request, = fake_openai.requests_for("writer")
    first_local, second_local = fake_openai.requests_for("local")
    assert leaks(json.dumps(writer_request)) == [] and "[REDACTED:card]" in json.dumps(writer_request)
    assert CARD in json.dumps(first_local) and EMAIL in json.dumps(first_local)
    assert leaks(json.dumps(second_local)) == []
