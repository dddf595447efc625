"""The auditor keeps redacted copies: stored records and GoalCompleted outputs carry no personal
data, the chain verifies over what is stored, a redelivered event is stored once, and the
auditor subscribes to every topic."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.auditor.app import DATABASE, create_app
from services.auditor.audit import verify_chain
from services.auditor.handlers import AuditorDeps, handle
from services.auditor.store import AuditStore
from shared.events import GoalCompleted, GoalSpec, GoalSubmitted, PlanFinished, Topic
from shared.settings import Settings
from shared.store import open_database, reset_memory_stores

NOW = datetime(2026, 11, 2, 9, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
async def deps():
    reset_memory_stores()
    store = AuditStore(open_database("memory://", DATABASE))
    await store.init()
    yield AuditorDeps(store=store, clock=lambda: NOW)
    reset_memory_stores()


async def test_records_and_outcome_are_redacted_and_the_chain_verifies(deps):
    submitted = GoalSubmitted(
        id="g-pii:submitted", goal_id="g-pii", tenant="acme",
        goal=GoalSpec(text="Refund card 4111 1111 1111 1111 for jane@acme.example", requester="cfo@acme.example",
                      input={"iban": "GB82WEST12345698765432", "phones": ["+44 20 7946 0958"]}),
    )
    finished = submitted.derive(
        PlanFinished, "g-pii:plan:finished", "goalrail/planner", plan_id="p", status="completed",
        outputs={"letter": "Dear Jane (SSN 536-22-1234), refunded to GB82WEST12345698765432.", "count": 1},
        submitted_at=datetime(2026, 11, 2, 9, 0, 0, tzinfo=timezone.utc),
    )
    assert await handle(submitted, deps) == []
    [outcome] = await handle(finished, deps)

    assert isinstance(outcome, GoalCompleted)
    assert outcome.outputs == {"letter": "Dear Jane (SSN [REDACTED:national_id]), refunded to [REDACTED:iban].",
                               "count": 1}
    records = await deps.store.records("g-pii")
    goal = records[0].event["goal"]
    assert goal["text"] == "Refund card [REDACTED:card] for [REDACTED:email]"
    assert goal["requester"] == "[REDACTED:email]"
    assert goal["input"] == {"iban": "[REDACTED:iban]", "phones": ["[REDACTED:phone]"]}
    assert records[0].event["goal_id"] == "g-pii" and records[0].event["id"] == "g-pii:submitted"
    assert "4111" not in str([r.model_dump() for r in records])
    assert verify_chain(records) is None

    # a redelivered event joins the chain once and republishes the same outcome
    assert await handle(finished, deps) == [outcome]
    assert len(await deps.store.records("g-pii")) == 2


def test_the_auditor_consumes_every_topic(monkeypatch):
    import shared.service

    setup = shared.service.setup_tracing  # keep this test process's global tracer provider untouched
    monkeypatch.setattr(shared.service, "setup_tracing", lambda name, endpoint: setup(name, endpoint, False))
    consumers: list[tuple[str, list[str]]] = []

    class RecordingConsumer:
        def __init__(self, settings, group_id, topics, *args, **kwargs) -> None:
            consumers.append((group_id, topics))

        async def stop(self) -> None: ...

    monkeypatch.setattr(shared.service, "KeyedConsumer", RecordingConsumer)
    create_app(Settings(auditor_http_port=0, mongo_url="memory://"))
    [(group_id, topics)] = consumers
    assert group_id == "auditor"
    assert set(topics) == {t.value for t in Topic}
