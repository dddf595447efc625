"""The embedded store behaves like MongoDB where Goalrail relies on it, across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid

import pytest

from services.planner.store import GoalRecord, PlanStore
from shared.events import GoalSpec
from shared.store import DuplicateKeyError, ReturnDocument, open_database, reset_memory_stores
from tests.factories import NOW
from tests.integration.test_repository_contract import database  # noqa: F401 — the fixture

pytestmark = pytest.mark.integration


async def test_unique_index_and_conditional_update(database):  # noqa: F811
    collection = database["items"]
    await collection.create_index("key", unique=True)
    await collection.insert_one({"_id": "a", "key": "k1", "version": 0})
    with pytest.raises(DuplicateKeyError):
        await collection.insert_one({"_id": "b", "key": "k1", "version": 0})

    updated = await collection.find_one_and_update(
        {"_id": "a", "version": 0}, {"$set": {"version": 1}}, return_document=ReturnDocument.AFTER
    )
    assert updated["version"] == 1
    stale = await collection.replace_one({"_id": "a", "version": 0}, {"key": "k1", "version": 5})
    assert stale.modified_count == 0
    assert (await collection.find_one({"_id": "a"}))["version"] == 1
    assert [d["_id"] for d in await collection.find({}, sort=[("_id", 1)]).to_list()] == ["a"]


def test_embedded_store_is_shared_by_processes_and_survives_them(tmp_path):
    url = f"embedded://{tmp_path / 'store'}"
    writer = textwrap.dedent(
        f"""
        import asyncio
        from shared.store import open_database
        async def main():
            goals = open_database({url!r}, "goalrail_planner")["goals"]
            await goals.create_index("goal_id", unique=True)
            await goals.insert_one({{"_id": "g1", "goal_id": "g1", "status": "running"}})
        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)

    async def read_then_conflict():
        goals = open_database(url, "goalrail_planner")["goals"]
        document = await goals.find_one({"_id": "g1"})
        with pytest.raises(DuplicateKeyError):  # the index made by the other process holds here
            await goals.insert_one({"_id": "g2", "goal_id": "g1"})
        return document

    document = asyncio.run(read_then_conflict())
    assert document == {"_id": "g1", "goal_id": "g1", "status": "running"}


def test_the_services_databases_are_separate_files_in_one_folder(tmp_path):
    url = f"embedded://{tmp_path / 'store'}"

    async def write() -> None:
        for name in ("goalrail_planner", "goalrail_auditor"):
            await open_database(url, name)["items"].insert_one({"_id": name})

    asyncio.run(write())
    assert sorted(p.name for p in (tmp_path / "store").glob("*.sqlite3")) == [
        "goalrail_auditor.sqlite3", "goalrail_planner.sqlite3"]


def test_reset_forgets_memory_stores_only(tmp_path):
    embedded = f"embedded://{tmp_path / 'store'}"

    async def put(url: str) -> None:
        await open_database(url, "db")["items"].insert_one({"_id": 1})

    async def count(url: str) -> int:
        return await open_database(url, "db")["items"].count_documents({})

    memory = f"memory://{uuid.uuid4().hex}"
    asyncio.run(put(memory))
    asyncio.run(put(embedded))
    assert asyncio.run(count(memory)) == 1  # kept across event loops (tests run one per test)
    reset_memory_stores()
    assert asyncio.run(count(memory)) == 0
    assert asyncio.run(count(embedded)) == 1


def test_two_processes_saving_one_goal_version_conflict_instead_of_overwriting(tmp_path):
    """The planner's optimistic save (replace_one on _id and version) across processes: of two
    writers that read the same version, exactly one wins."""
    url = f"embedded://{tmp_path / 'store'}"
    saver = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from services.planner.store import PlanStore
        from shared.store import open_database
        async def main():
            store = PlanStore(open_database({url!r}, "goalrail_planner"))
            record = await store.get("g1")
            (Path({str(tmp_path)!r}) / ("read-" + sys.argv[1])).touch()
            while len(list(Path({str(tmp_path)!r}).glob("read-*"))) < 2:  # both read version 0
                time.sleep(0.005)
            record.status = "completed-by-" + sys.argv[1]
            print(await store.save(record))
        asyncio.run(main())
        """
    )
    async def create() -> None:
        store = PlanStore(open_database(url, "goalrail_planner"))
        await store.init()
        await store.create(GoalRecord(goal_id="g1", tenant="acme", submitted_at=NOW,
                                      goal=GoalSpec(text="Prepare the report", requester="cfo")))

    asyncio.run(create())
    savers = [subprocess.Popen([sys.executable, "-c", saver, name], stdout=subprocess.PIPE, text=True)
              for name in ("a", "b")]
    results = [p.communicate(timeout=60)[0].strip() for p in savers]
    assert sorted(results) == ["False", "True"]

    async def read() -> GoalRecord:
        return await PlanStore(open_database(url, "goalrail_planner")).get("g1")

    saved = asyncio.run(read())
    assert saved.version == 1 and saved.status == f"completed-by-{'ab'[results.index('True')]}"


async def test_a_goal_replays_its_outbox_also_from_a_record_stored_before_outboxes_were_json(database):  # noqa: F811
    from tests.factories import goal_events

    store = PlanStore(database)
    await store.init()
    submitted, planned, *_ = goal_events("g-outbox")
    record = GoalRecord(goal_id="g-outbox", tenant="acme", goal=submitted.goal, submitted_at=NOW)
    record.record(submitted.id, [planned])
    assert await store.create(record)
    stored = await store.get("g-outbox")
    assert stored is not None and stored.outbox_for(submitted.id) == [planned]
    assert stored.outbox_for("never-seen") is None

    # a record of an older version keeps each event as a document
    older = {**record.model_dump(mode="json"), "goal_id": "g-older",
             "applied": [{"event_id": submitted.id, "outbox": [planned.model_dump(mode="json")]}]}
    await database["goals"].insert_one({"_id": "g-older", **older})
    loaded = await store.get("g-older")
    assert loaded is not None and loaded.outbox_for(submitted.id) == [planned]
    assert await store.save(loaded)  # and it is written back in the current form
    assert isinstance((await database["goals"].find_one({"_id": "g-older"}))["applied"][0]["outbox"][0], str)
