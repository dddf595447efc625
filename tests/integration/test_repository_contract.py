"""The repositories' contract, on every store they run on: the embedded store (a folder, and
memory://) always, and MongoDB when GOALRAIL_TEST_MONGO_URL names one (e.g.
GOALRAIL_TEST_MONGO_URL=mongodb://localhost:27017). The same assertions on both are what lets
the repositories be written once against pymongo's async API."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from services.auditor.audit import PolicyFlag, chain
from services.auditor.store import AuditStore
from services.executor.execution import execution_key
from services.executor.handlers import ExecutorDeps, handle
from services.planner.store import GoalRecord, PlanStore
from services.router.routing import ModelStats
from services.router.store import RouterStore
from shared.events import Binding, GoalSpec, Step, StepDispatched, StepReady
from shared.outbox import handle_once
from shared.store import open_database
from tests.factories import AUDIT_T0, NOW, goal_events, goal_submitted, succeeded

pytestmark = pytest.mark.integration

MONGO_URL = os.environ.get("GOALRAIL_TEST_MONGO_URL")


@pytest.fixture(params=["embedded", "memory", "mongodb"])
async def database(request, tmp_path):
    """A fresh, empty database on each store."""
    name = f"contract_{uuid.uuid4().hex[:12]}"
    if request.param == "embedded":
        yield open_database(f"embedded://{tmp_path / 'store'}", name)
    elif request.param == "memory":
        yield open_database(f"memory://{name}", name)
    else:
        if not MONGO_URL:
            pytest.skip("MongoDB not configured: set GOALRAIL_TEST_MONGO_URL=mongodb://… to run this contract on it")
        from pymongo import AsyncMongoClient

        # what open_database makes of a mongodb:// URL, on this test's own event loop
        client = AsyncMongoClient(MONGO_URL, tz_aware=True, serverSelectionTimeoutMS=5000)
        try:
            yield client[name]
        finally:
            await client.drop_database(name)
            await client.close()


def test_a_mongodb_url_opens_pymongos_async_client_with_aware_datetimes():
    database = open_database("mongodb://127.0.0.1:1", "goalrail_planner")  # no connection is made
    assert type(database).__module__.startswith("pymongo.asynchronous")
    assert database.codec_options.tz_aware


# --- planner --------------------------------------------------------------------------------


def goal_record(goal_id: str, **fields) -> GoalRecord:
    return GoalRecord(goal_id=goal_id, tenant="acme", goal=GoalSpec(text="Prepare the report", requester="cfo"),
                      submitted_at=NOW, **fields)


async def test_plan_store_creates_once_saves_only_unchanged_records_and_finds_overdue_goals(database):
    store = PlanStore(database)
    await store.init()
    await store.init()  # every service start runs it again
    assert await store.create(goal_record("g1")) is True
    assert await store.create(goal_record("g1")) is False

    mine, theirs = await store.get("g1"), await store.get("g1")
    mine.status = "completed"
    assert await store.save(mine) is True and mine.version == 1
    theirs.status = "failed"
    assert await store.save(theirs) is False  # read before mine was written
    assert (await store.get("g1")).status == "completed"
    assert await store.get("nope") is None

    now = NOW.timestamp()
    await store.create(goal_record("late", expires_at=now - 1))
    await store.create(goal_record("early", expires_at=now + 60))
    await store.create(goal_record("no-deadline"))
    await store.create(goal_record("ended-late", status="completed", expires_at=now - 1))
    await store.create(goal_record("unpublished", status="failed", has_unpublished=True,
                                   unpublished=[{"type": "x"}]))
    assert sorted(r.goal_id for r in await store.overdue(now)) == ["late", "unpublished"]
    assert len(await store.overdue(now, limit=1)) == 1


async def test_plan_store_hands_out_the_record_it_last_wrote_once_and_a_write_elsewhere_makes_it_conflict(database):
    store, replica = PlanStore(database), PlanStore(database)
    await store.init()
    record = goal_record("g1")
    assert await store.create(record)
    kept = await store.get("g1")
    assert kept is record  # kept from the write: no read
    assert (await store.get("g1")) is not record  # handed out once: the next caller reads its own copy
    kept.replans = 1
    assert await store.save(kept) and await store.get("g1") is kept

    # another writer (a replica that had the goal during a rebalance) changes it meanwhile
    theirs = await replica.get("g1")
    theirs.retries = 7
    assert await replica.save(theirs)
    kept.retries = 1
    assert await store.save(kept) is False  # the kept record was stale: its conditional write fails
    fresh = await store.get("g1")
    assert fresh is not kept and (fresh.version, fresh.retries) == (2, 7)

    fresh.status = "completed"  # an ended goal is not kept
    assert await store.save(fresh)
    assert (await store.get("g1")) is not fresh


# --- router ---------------------------------------------------------------------------------


def ready(goal_id: str, step_id: str, time: datetime = NOW) -> StepReady:
    return goal_submitted("Prepare the report", goal_id=goal_id).derive(
        StepReady, f"{goal_id}:{step_id}:1:ready", "planner", plan_id="p", attempt=1, resolved_inputs={"amount": 5},
        step=Step(id=step_id, task_type="act", tool="vendor.pay"), time=time)


TOOL = Binding(kind="tool", tool="vendor.pay", reason="test")


async def test_router_store_holds_once_settles_once_and_closes_a_goals_pending_holds(database):
    store = RouterStore(database)
    await store.init()
    await store.hold("g:pay:1:approval", ready("g", "pay"), TOOL)
    await store.hold("g:pay:1:approval", ready("g", "pay", time=NOW + timedelta(hours=1)), TOOL)  # redelivery
    held = await store.held("g:pay:1:approval")
    assert held["status"] == "pending" and held["held_at"] == NOW.timestamp()
    assert held["ready"]["resolved_inputs"] == {"amount": 5}

    assert await store.settle("g:pay:1:approval", "decision-1", "approved") is True
    assert await store.settle("g:pay:1:approval", "decision-1", "approved") is True  # a redelivery
    assert await store.settle("g:pay:1:approval", "decision-2", "rejected") is False
    assert await store.settle("nope", "decision-3", "approved") is False

    await store.hold("g:a:1:approval", ready("g", "a"), TOOL)
    await store.hold("g:b:1:approval", ready("g", "b", time=NOW + timedelta(minutes=5)), TOOL)
    await store.hold("other:a:1:approval", ready("other", "a"), TOOL)
    assert await store.close_holds("g", before=NOW + timedelta(minutes=1)) == 1
    assert (await store.held("g:a:1:approval"))["status"] == "closed"
    assert (await store.held("g:b:1:approval"))["status"] == "pending"  # held after the goal ended
    assert (await store.held("other:a:1:approval"))["status"] == "pending"
    assert (await store.held("g:pay:1:approval"))["status"] == "approved"


async def test_router_store_spend_reservations_and_model_statistics(database):
    store = RouterStore(database)
    await store.init()
    assert await store.spent("g", "acme") == (0.0, 0.0)
    await store.reserve("g", "acme", 0.25)
    await store.reserve("h", "acme", 0.5)
    assert await store.spent("g", "acme") == (0.25, 0.75)
    await store.charge("g", "acme", cost_usd=0.1, release_usd=0.25)
    assert await store.spent("g", "acme") == pytest.approx((0.1, 0.6))

    assert await store.stats() == {}
    learned = ModelStats().succeeded(120.0, 0.01)
    await store.save_stats("openai/gpt-4o-mini", learned)
    await store.save_stats("openai/gpt-4o-mini", learned.succeeded(80.0, 0.02))
    await store.save_stats("goalrail/offline-writer", ModelStats().failed(NOW.timestamp()))
    stats = await store.stats(["openai/gpt-4o-mini", "unknown/model"])
    assert list(stats) == ["openai/gpt-4o-mini"] and stats["openai/gpt-4o-mini"].calls == 2
    assert set(await store.stats()) == {"openai/gpt-4o-mini", "goalrail/offline-writer"}


# --- auditor --------------------------------------------------------------------------------


async def append_trail(store: AuditStore, goal_id: str) -> list:
    records, previous = [], None
    for event in goal_events(goal_id):
        previous = chain(event, previous)
        assert await store.append(previous, [event] if event.type == "goalrail.plan.created" else [])
        records.append(previous)
    return records


async def test_audit_store_keeps_one_chain_per_goal(database):
    store = AuditStore(database)
    await store.init()
    await store.init()
    trail = await append_trail(store, "goal-1")
    await append_trail(store, "goal-2")

    assert await store.records("goal-1") == trail
    assert await store.head("goal-1") == trail[-1]
    assert await store.head("nope") is None
    assert (await store.latest_plan("goal-1"))["plan_id"] == "p"
    assert await store.latest_plan("nope") is None
    assert [e.id for e in await store.outbox_of("goal-1:plan")] == ["goal-1:plan"]
    assert await store.outbox_of("nope") is None

    # a second writer racing for a place in the chain collides, and so does a redelivered event
    racing = chain(goal_events("goal-1")[1].model_copy(update={"id": "goal-1:other"}), trail[0])
    assert await store.append(racing, []) is False
    assert await store.append(trail[2], []) is False
    assert len(await store.records("goal-1")) == 5

    everything = await store.all_records()
    assert [(r.goal_id, r.seq) for r in everything] == [(g, s) for g in ("goal-1", "goal-2") for s in range(1, 6)]
    plans = await store.all_records(["goalrail.plan.created", "goalrail.goal.completed"])
    assert [(r.goal_id, r.event_type) for r in plans] == [
        (g, t) for g in ("goal-1", "goal-2") for t in ("goalrail.plan.created", "goalrail.goal.completed")]


async def test_audit_store_flags_are_stored_once_in_time_order(database):
    store = AuditStore(database)
    await store.init()

    def flag(flag_id: str, minutes: int, goal_id: str = "goal-1") -> PolicyFlag:
        return PolicyFlag(flag_id=flag_id, goal_id=goal_id, event_id="e", event_type="goalrail.step.succeeded",
                          rule="pii", status="open", message="m", time=AUDIT_T0 + timedelta(minutes=minutes))

    await store.add_flags([flag("b", 2), flag("a", 1), flag("c", 2), flag("x", 0, goal_id="goal-2")])
    await store.add_flags([flag("a", 1)])  # a redelivered event
    assert [f.flag_id for f in await store.flags("goal-1")] == ["a", "b", "c"]
    assert await store.flags("nope") == []


# --- handle once: the router's decisions, its observations and the executor's executions ------


async def test_handle_once_stores_the_first_outbox_and_concurrent_deliveries_publish_it(database):
    collection = database["decisions"]
    await collection.create_index("goal_id")
    computed = []
    both_computing = asyncio.Barrier(2)

    def compute(event_id: str):
        async def run():
            computed.append(event_id)
            await both_computing.wait()  # two deliveries of one event, both past the lookup
            return [goal_submitted("Prepare the report", goal_id=event_id)]
        return run

    first, second = await asyncio.gather(handle_once(collection, "key", compute("a"), {"goal_id": "g"}),
                                         handle_once(collection, "key", compute("b"), {"goal_id": "g"}))
    assert first == second and len(computed) == 2
    assert await handle_once(collection, "key", compute("never")) == first
    assert computed == ["a", "b"]
    assert [d["_id"] for d in await collection.find({"goal_id": "g"}).to_list(None)] == ["key"]
    assert await collection.count_documents({"goal_id": "g"}) == 1


class OneResultRunner:
    def __init__(self) -> None:
        self.runs = 0

    async def run(self, event: StepDispatched):
        self.runs += 1
        return succeeded(event, {"report_id": "r-1"})


async def test_the_executor_runs_a_dispatched_step_once_per_execution_key(database):
    executions = database["executions"]
    await executions.create_index("goal_id")
    runner = OneResultRunner()
    deps = ExecutorDeps(executions=executions, runner=runner)
    dispatched = goal_submitted("Prepare the report", goal_id="g").derive(
        StepDispatched, "g:write:1:dispatched", "router", plan_id="p", attempt=1, resolved_inputs={},
        step=Step(id="write", task_type="act", tool="report.write"), binding=TOOL)

    first = await handle(dispatched, deps)
    assert await handle(dispatched, deps) == first and runner.runs == 1
    stored = await executions.find_one({"_id": execution_key(dispatched)})
    assert (stored["goal_id"], stored["step_id"], stored["attempt"]) == ("g", "write", 1)
    assert [d["_id"] for d in await executions.find({"goal_id": "g"}).to_list(None)] == [execution_key(dispatched)]


# --- what the stores hand back -----------------------------------------------------------


async def test_datetimes_come_back_aware_and_in_utc(database):
    collection = database["times"]
    await collection.insert_one({"_id": 1, "at": datetime(2026, 3, 1, 12, 0, 0, 123456)})
    await collection.insert_one({"_id": 2, "at": datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=1)))})
    first = await collection.find_one({"_id": 1})
    assert first["at"] == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    assert first["at"].utcoffset() == timedelta(0)
    later = await collection.find({"at": {"$gt": datetime(2026, 3, 1, 12, 30)}}).to_list(None)
    assert [d["_id"] for d in later] == [2]
