"""Preloaded goals are what the four services would have stored: read back through their own
repositories, and handed to their own handlers as redeliveries, which replay what is stored."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from services.auditor.audit import AuditRecord, chain, verify_chain
from services.auditor.store import AuditStore
from services.auditor.handlers import AuditorDeps
from services.auditor.handlers import handle as audit
from services.executor.handlers import ExecutorDeps
from services.executor.handlers import handle as execute
from services.planner.handlers import PlannerDeps
from services.planner.handlers import handle as plan
from services.planner.planning import load_playbooks
from services.router.handlers import RouterDeps
from services.router.handlers import handle as route
from services.router.routing import load_routing_table
from shared.embedded import bench_preload
from shared.embedded.bench_goals import FAST_CHAIN_PLAYBOOK
from shared.embedded.bench_preload import (
    FinishedGoal,
    ServiceStores,
    audit_chain,
    audit_document,
    execution_document,
    finished_goal,
    outbox_document,
    preload,
)
from shared.events import GoalCompleted, GoalSubmitted, PlanCreated, PlanFinished, StepDispatched, StepReady, StepSucceeded
from shared.outbox import handle_once
from shared.settings import CONFIG_DIR
from shared.store import embedded_store_url, open_database

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
CHAIN = load_playbooks(CONFIG_DIR / "playbooks")[FAST_CHAIN_PLAYBOOK]


def memory_url() -> str:
    return f"memory://bench-{uuid.uuid4().hex}"


def goal(goal_id: str = "preload-000000") -> FinishedGoal:
    return finished_goal(goal_id, CHAIN, NOW)


def preloaded(url: str, goals: int = 2) -> ServiceStores:
    asyncio.run(preload(url, goals, CHAIN, lambda line: None))
    return ServiceStores.open(url)


# --- the events of a finished goal (pure) -----------------------------------------------------


def test_a_finished_goal_has_every_event_of_the_chain_in_order():
    events = goal().events()
    types = [type(event) for event in events]
    assert types == [GoalSubmitted, PlanCreated, *[StepReady, StepDispatched, StepSucceeded] * 5, PlanFinished,
                     GoalCompleted]
    assert [event.id for event in events[2:5]] == [
        "preload-000000:step_1:1:ready", "preload-000000:step_1:1:dispatched", "preload-000000:step_1:1:succeeded"]
    assert all(event.goal_id == "preload-000000" and event.tenant == "bench" for event in events)
    assert [event.time for event in events] == sorted(event.time for event in events)


def test_each_step_gets_the_output_of_the_one_before_and_the_goal_completes():
    finished = goal()
    step_2 = finished.steps[1]
    assert step_2.ready.resolved_inputs == {"previous": finished.steps[0].succeeded.output}
    step_4 = finished.steps[3]
    assert step_4.ready.resolved_inputs == {"previous": finished.steps[2].succeeded.output["text"]}
    assert finished.steps[2].dispatched.binding.kind == "model"  # the summarise step
    assert finished.outcome.steps == 5 and finished.outcome.id == "preload-000000:outcome"
    assert finished.finished.outputs == {"last": finished.steps[4].succeeded.output}


def test_the_planner_record_holds_each_outbox_and_a_completed_plan():
    record = goal().record
    assert record.status == "completed" and record.version == 5
    assert record.progress is not None and record.progress.finished and not record.progress.failed
    first = record.outbox_for("preload-000000:submitted")
    assert first is not None and [type(event) for event in first] == [PlanCreated, StepReady]
    last = record.outbox_for("preload-000000:step_5:1:succeeded")
    assert last is not None and [type(event) for event in last] == [PlanFinished]


# --- documents as the services store them ------------------------------------------------------


def test_outbox_documents_are_shaped_as_handle_once_stores_them():
    finished = goal()
    run = finished.steps[0]
    database = open_database(memory_url(), "outbox")
    extra = {"goal_id": finished.goal_id}

    async def compare() -> None:
        async def compute() -> list:
            return [run.dispatched]

        await handle_once(database["by_service"], run.ready.id, compute, extra)
        stored = await database["by_service"].find_one({"_id": run.ready.id})
        assert stored == outbox_document(run.ready.id, [run.dispatched], extra)

    asyncio.run(compare())


def test_audit_documents_are_shaped_as_audit_store_append_stores_them():
    finished = goal()
    record = chain(finished.finished, None)
    database = open_database(memory_url(), "auditor")

    async def compare() -> None:
        await AuditStore(database).append(record, [finished.outcome])
        stored = await database["audit"].find_one({"_id": record.event_id})
        assert stored == audit_document(record, [finished.outcome])

    asyncio.run(compare())


def test_the_audit_chain_links_every_event_and_settles_the_outcome_on_the_finished_plan():
    finished = goal()
    documents = audit_chain(finished)
    records = [AuditRecord.model_validate(document) for document in documents]
    assert [record.seq for record in records] == list(range(1, 20))
    assert verify_chain(records) is None
    assert [len(document["outbox"]) for document in documents] == [0] * 17 + [1, 0]
    assert documents[17]["outbox"][0]["id"] == finished.outcome.id


def test_an_execution_document_names_its_step_and_binding():
    run = goal().steps[0]
    document = execution_document(run)
    assert document["_id"] == "preload-000000:step_1:1"
    assert document["step_id"] == "step_1" and document["attempt"] == 1 and document["goal_id"] == "preload-000000"
    assert document["binding"] == {**run.dispatched.binding.model_dump(mode="json")}
    assert document["outbox"] == [run.succeeded.model_dump(mode="json")]


# --- preloading a store ------------------------------------------------------------------------


def test_a_preloaded_goal_reads_back_through_the_planner_and_auditor_repositories():
    stores = preloaded(memory_url())

    async def read() -> None:
        record = await stores.plans.get("preload-000001")
        assert record is not None and record.status == "completed" and record.plan is not None
        assert record.plan.source == "playbook:benchmark-chain"
        records = await stores.audit.records("preload-000001")
        assert len(records) == 19 and verify_chain(records) is None
        assert records[0].event_type == "goalrail.goal.submitted" and records[-1].event_type == "goalrail.goal.completed"
        outcome = await stores.audit.outbox_of("preload-000001:plan:finished")
        assert outcome is not None and isinstance(outcome[0], GoalCompleted)
        assert await stores.router.decisions.count_documents({"goal_id": "preload-000001"}) == 5
        assert await stores.executions.count_documents({"goal_id": "preload-000001"}) == 5

    asyncio.run(read())


def test_the_services_handlers_replay_a_preloaded_goal_as_their_own():
    url = memory_url()
    stores = preloaded(url, goals=1)
    finished = goal()  # the same ids as the preloaded goal preload-000000 (not the same times)
    last = finished.steps[-1]

    async def redeliver() -> None:
        planner = PlannerDeps(store=stores.plans, playbooks={CHAIN.name: CHAIN}, tool_names=frozenset({"noop.echo"}),
                              clock=lambda: NOW)
        assert [e.id for e in await plan(last.succeeded, planner)] == [finished.finished.id]
        assert [e.id for e in await plan(finished.submitted, planner)] == [finished.created.id, finished.steps[0].ready.id]
        router = RouterDeps(decisions=stores.router.decisions, table=load_routing_table(CONFIG_DIR / "routing.yaml"))
        assert [e.id for e in await route(last.ready, router)] == [last.dispatched.id]
        executor = ExecutorDeps(executions=stores.executions, runner=None)  # type: ignore[arg-type]  # never runs
        assert [e.id for e in await execute(last.dispatched, executor)] == [last.succeeded.id]
        auditor = AuditorDeps(store=stores.audit, clock=lambda: NOW)
        assert [e.id for e in await audit(finished.finished, auditor)] == [finished.outcome.id]

    asyncio.run(redeliver())


def test_preloading_the_same_goals_twice_is_refused():
    url = memory_url()
    preloaded(url, goals=1)
    with pytest.raises(ValueError, match="holds preloaded goals already"):
        preloaded(url, goals=1)


def test_preload_reports_its_progress_batch_by_batch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bench_preload, "BATCH_GOALS", 2)
    lines: list[str] = []
    seconds = asyncio.run(preload(memory_url(), 6, CHAIN, lines.append))
    assert seconds > 0
    assert [line.split(" goals stored")[0] for line in lines] == [
        "  preload: 2/6", "  preload: 4/6", "  preload: 6/6"]
    assert "left" in lines[0] and "left" not in lines[-1]


def test_preload_writes_an_embedded_store_on_disk(tmp_path: Path):
    stores = preloaded(embedded_store_url(tmp_path), goals=2)

    async def read() -> None:
        record = await stores.plans.get("preload-000000")
        assert record is not None and record.status == "completed"
        assert len(await stores.audit.records("preload-000001")) == 19

    asyncio.run(read())
    assert any((tmp_path / "store").iterdir())
