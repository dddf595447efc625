"""shared.docstore, the embedded store: MongoDB's semantics where the repositories rely on them,
indexes that keep a lookup's cost independent of the store's size, and several processes on
one folder."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bson import Decimal128, Int64, ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

from services.auditor.app import DATABASE as AUDIT_DATABASE
from services.auditor.audit import chain
from services.auditor.store import AuditStore
from services.planner.store import GoalRecord, PlanStore
from services.router.store import RouterStore
from shared import docstore
from shared.events import Binding, GoalSpec, Step, StepReady
from shared.outbox import handle_once
from shared.store import embedded_database, open_database
from tests.factories import NOW, goal_events, goal_submitted

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "file"])
def db(request, tmp_path) -> docstore.Database:
    client = docstore.Client(None if request.param == "memory" else tmp_path)
    yield client["test"]
    client.close()


# --- writes, ids and unique indexes --------------------------------------------------------


def test_insert_gives_an_object_id_and_refuses_a_second_document_with_the_same_id(db):
    items = db["items"]
    document = {"name": "a"}
    result = items.insert_one(document)
    assert isinstance(result.inserted_id, ObjectId) and document["_id"] == result.inserted_id
    items.insert_one({"_id": "x", "name": "b"})
    with pytest.raises(DuplicateKeyError, match="_id_"):
        items.insert_one({"_id": "x", "name": "c"})
    assert items.find_one({"_id": "x"}) == {"_id": "x", "name": "b"}
    assert items.find_one("x") == {"_id": "x", "name": "b"}  # a bare value means an _id, as in pymongo


def test_compound_unique_index_collides_on_the_pair_and_treats_missing_as_null(db):
    audit = db["audit"]
    assert audit.create_index([("goal_id", ASCENDING), ("seq", ASCENDING)], unique=True) == "goal_id_1_seq_1"
    audit.insert_one({"_id": "a:1", "goal_id": "a", "seq": 1})
    audit.insert_one({"_id": "a:2", "goal_id": "a", "seq": 2})
    audit.insert_one({"_id": "b:1", "goal_id": "b", "seq": 1})
    with pytest.raises(DuplicateKeyError, match="goal_id_1_seq_1") as info:
        audit.insert_one({"_id": "a:1bis", "goal_id": "a", "seq": 1.0})  # 1.0 == 1, as in MongoDB
    assert info.value.code == 11000
    # MongoDB indexes a missing field as null, and two nulls collide in a unique index
    audit.insert_one({"_id": "c", "goal_id": "c"})
    with pytest.raises(DuplicateKeyError):
        audit.insert_one({"_id": "c2", "goal_id": "c", "seq": None})
    # an update that would move a document onto another's key fails and changes nothing
    with pytest.raises(DuplicateKeyError):
        audit.update_one({"_id": "a:2"}, {"$set": {"seq": 1}})
    assert audit.find_one({"_id": "a:2"})["seq"] == 2
    assert audit.count_documents({}) == 4


def test_create_index_fills_from_stored_documents_and_refuses_existing_duplicates(db):
    items = db["items"]
    items.insert_many([{"_id": i, "kind": "even" if i % 2 == 0 else "odd", "n": i % 3} for i in range(10)])
    items.create_index("kind")
    assert any("USING INDEX" in step for step in items.query_plan({"kind": "odd"}))
    assert sorted(d["_id"] for d in items.find({"kind": "odd"})) == [1, 3, 5, 7, 9]
    with pytest.raises(DuplicateKeyError):
        items.create_index("n", unique=True)
    assert "n_1" not in items.index_information()  # the failed build left nothing behind
    assert items.create_index("kind") == "kind_1"  # again: nothing to do
    with pytest.raises(OperationFailure):
        items.create_index("kind", unique=True, name="kind_1")


def test_insert_many_stops_an_ordered_insert_at_the_first_duplicate(db):
    items = db["items"]
    items.insert_one({"_id": 2})
    with pytest.raises(BulkWriteError) as info:
        items.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}])
    assert info.value.details["nInserted"] == 1
    assert sorted(d["_id"] for d in items.find()) == [1, 2]


def test_an_array_at_an_indexed_path_is_refused_rather_than_indexed_wrongly(db):
    items = db["items"]
    items.create_index("tags")
    with pytest.raises(NotImplementedError, match="multikey"):
        items.insert_one({"_id": 1, "tags": ["a", "b"]})
    assert items.count_documents({}) == 0


# --- updates ----------------------------------------------------------------------------


def test_update_operators(db):
    items = db["items"]
    items.insert_one({"_id": "a", "n": 1, "tags": ["x"], "gone": True, "nested": {"keep": 1}})
    result = items.update_one({"_id": "a"}, {
        "$set": {"nested.deep.value": "v", "status": "done"},
        "$inc": {"n": 2, "fresh": 0.5},
        "$unset": {"gone": ""},
        "$push": {"tags": {"$each": ["y", "x"]}},
        "$addToSet": {"set": "s"},
        "$setOnInsert": {"created": True},  # not an insert: ignored
    })
    assert (result.matched_count, result.modified_count, result.upserted_id) == (1, 1, None)
    assert items.find_one({"_id": "a"}) == {
        "_id": "a", "n": 3, "tags": ["x", "y", "x"], "nested": {"keep": 1, "deep": {"value": "v"}},
        "status": "done", "fresh": 0.5, "set": ["s"]}
    items.update_one({"_id": "a"}, {"$addToSet": {"set": {"$each": ["s", "t"]}}})
    assert items.find_one({"_id": "a"})["set"] == ["s", "t"]

    same = items.update_one({"_id": "a"}, {"$set": {"status": "done"}})
    assert (same.matched_count, same.modified_count) == (1, 0)  # MongoDB counts real changes only
    missing = items.update_one({"_id": "nope"}, {"$set": {"status": "done"}})
    assert (missing.matched_count, missing.modified_count) == (0, 0)

    with pytest.raises(WriteError):
        items.update_one({"_id": "a"}, {"$inc": {"status": 1}})
    with pytest.raises(WriteError):
        items.update_one({"_id": "a"}, {"$set": {"_id": "b"}})
    with pytest.raises(ValueError):
        items.update_one({"_id": "a"}, {"status": "replacement, not an update"})
    with pytest.raises(NotImplementedError):
        items.update_one({"_id": "a"}, {"$rename": {"n": "m"}})


def test_update_many_and_deletes_count_what_they_touched(db):
    items = db["items"]
    items.create_index("goal_id")
    items.insert_many([{"_id": i, "goal_id": "g" if i < 3 else "h", "status": "pending"} for i in range(5)])
    result = items.update_many({"goal_id": "g"}, {"$set": {"status": "closed"}})
    assert (result.matched_count, result.modified_count) == (3, 3)
    assert items.count_documents({"status": "closed"}) == 3
    assert items.distinct("goal_id") == ["g", "h"]
    assert items.distinct("_id", {"status": "pending"}) == [3, 4]
    assert items.delete_one({"goal_id": "g"}).deleted_count == 1
    assert items.delete_many({"goal_id": "g"}).deleted_count == 2
    assert items.delete_many({"goal_id": "g"}).deleted_count == 0
    assert items.count_documents({}) == 2


def test_upserts_start_from_the_filter_equalities(db):
    items = db["items"]
    inserted = items.update_one({"_id": "k", "kind": "spend", "n": {"$gt": 5}},
                                {"$inc": {"cost": 1.5}, "$setOnInsert": {"created": "now"}}, upsert=True)
    assert inserted.upserted_id == "k" and inserted.matched_count == 0 and inserted.modified_count == 0
    assert items.find_one({"_id": "k"}) == {"_id": "k", "kind": "spend", "cost": 1.5, "created": "now"}
    again = items.update_one({"_id": "k"}, {"$inc": {"cost": 1.5}, "$setOnInsert": {"created": "later"}}, upsert=True)
    assert again.upserted_id is None and again.modified_count == 1
    assert items.find_one({"_id": "k"}) == {"_id": "k", "kind": "spend", "cost": 3.0, "created": "now"}

    no_id = items.update_one({"kind": "new"}, {"$set": {"n": 1}}, upsert=True)
    assert isinstance(no_id.upserted_id, ObjectId)

    replaced = items.replace_one({"_id": "r"}, {"value": 1}, upsert=True)
    assert replaced.upserted_id == "r" and items.find_one({"_id": "r"}) == {"_id": "r", "value": 1}
    assert items.replace_one({"_id": "r"}, {"value": 2}, upsert=True).modified_count == 1
    assert items.find_one({"_id": "r"}) == {"_id": "r", "value": 2}


def test_replace_one_is_conditional_on_the_whole_filter(db):
    goals = db["goals"]
    goals.insert_one({"_id": "g", "version": 0, "status": "running"})
    assert goals.replace_one({"_id": "g", "version": 0}, {"version": 1, "status": "done"}).modified_count == 1
    stale = goals.replace_one({"_id": "g", "version": 0}, {"version": 1, "status": "lost"})
    assert (stale.matched_count, stale.modified_count) == (0, 0)
    assert goals.find_one({"_id": "g"}) == {"_id": "g", "version": 1, "status": "done"}
    with pytest.raises(ValueError):
        goals.replace_one({"_id": "g"}, {"$set": {"status": "x"}})


_PLAIN_DOCUMENTS = [
    {"_id": "a", "v": 1}, {"_id": "b", "v": 1.0}, {"_id": "c", "v": True}, {"_id": "d", "v": [1, 2]},
    {"_id": "e", "v": None}, {"_id": "f"}, {"_id": "g", "v": "1"}, {"_id": "h", "v": float("nan")},
    {"_id": "i", "v": {"x": 1}}, {"_id": "j", "v": 2},
]


@pytest.mark.parametrize("wanted", [1, 1.0, True, False, "1", float("nan"), 2, 0])
def test_plain_equality_shortcut_agrees_with_mongodbs_rules(db, wanted):
    """The store answers `{field: scalar}` without mongomock when it safely can: the same
    documents must match as by the full rules (bool is not a number, 1 == 1.0, an array holding
    the value matches, NaN matches NaN)."""
    from mongomock.filtering import filter_applies

    items = db["items"]
    items.insert_many([dict(d) for d in _PLAIN_DOCUMENTS])
    expected = sorted(d["_id"] for d in _PLAIN_DOCUMENTS if filter_applies({"v": wanted}, d))
    assert sorted(d["_id"] for d in items.find({"v": wanted})) == expected
    assert sorted(d["_id"] for d in items.find({"_id": {"$in": expected}, "v": wanted})) == expected


def test_find_one_and_update_returns_before_or_after_and_takes_the_first_in_sort_order(db):
    jobs = db["jobs"]
    jobs.create_index("priority")
    jobs.insert_many([{"_id": "low", "priority": 1, "state": "new"}, {"_id": "high", "priority": 9, "state": "new"}])
    before = jobs.find_one_and_update({"state": "new"}, {"$set": {"state": "taken"}}, sort=[("priority", DESCENDING)])
    assert before == {"_id": "high", "priority": 9, "state": "new"}
    after = jobs.find_one_and_update({"state": "new"}, {"$set": {"state": "taken"}},
                                     return_document=ReturnDocument.AFTER)
    assert after == {"_id": "low", "priority": 1, "state": "taken"}
    assert jobs.find_one_and_update({"state": "new"}, {"$set": {"state": "taken"}}) is None
    assert jobs.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, upsert=True) is None
    assert jobs.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, upsert=True,
                                    return_document=ReturnDocument.AFTER) == {"_id": "c", "n": 2}


# --- queries ----------------------------------------------------------------------------


@pytest.fixture
def people(db) -> docstore.Collection:
    people = db["people"]
    people.create_index("age")
    people.create_index([("team", ASCENDING), ("age", ASCENDING)])
    people.insert_many([
        {"_id": "ann", "team": "a", "age": 30, "city": "Oslo"},
        {"_id": "bob", "team": "a", "age": 41.5, "city": "Rome"},
        {"_id": "cid", "team": "b", "age": 25, "city": "Oslo"},
        {"_id": "dan", "team": "b", "age": "unknown"},
        {"_id": "eve", "team": "c", "age": None},
        {"_id": "fay", "team": "c"},
    ])
    return people


def ids(documents) -> list:
    return [d["_id"] for d in documents]


@pytest.mark.parametrize(("query", "expected"), [
    ({"age": 30}, ["ann"]),
    ({"age": 30.0}, ["ann"]),
    ({"age": {"$in": [25, 41.5, "unknown"]}}, ["bob", "cid", "dan"]),
    ({"age": None}, ["eve", "fay"]),  # null matches a missing field too
    ({"age": {"$in": [None, 25]}}, ["cid", "eve", "fay"]),
    ({"age": {"$gt": 25}}, ["ann", "bob"]),  # ranges stay within a type: no strings, no nulls
    ({"age": {"$gte": 25, "$lt": 41.5}}, ["ann", "cid"]),
    ({"age": {"$lte": 30}}, ["ann", "cid"]),
    ({"age": {"$gte": "a"}}, ["dan"]),
    ({"team": "a", "age": {"$gt": 35}}, ["bob"]),
    ({"city": "Oslo"}, ["ann", "cid"]),  # no index: decided by the filter alone
    ({"age": {"$ne": 30}, "team": "a"}, ["bob"]),
    ({"age": {"$exists": False}}, ["fay"]),
    ({"$or": [{"team": "a", "age": {"$gt": 35}}, {"age": None}]}, ["bob", "eve", "fay"]),
    ({"$or": [{"age": 25}, {"city": "Rome"}]}, ["bob", "cid"]),  # one branch not indexed
    ({"$and": [{"team": {"$in": ["a", "b"]}}, {"city": {"$exists": True}}], "age": {"$lt": 40}}, ["ann", "cid"]),
    ({"age": {"$in": []}}, []),
])
def test_queries_match_as_mongodb_does(people, query, expected):
    assert sorted(ids(people.find(query))) == expected
    assert people.count_documents(query) == len(expected)


def test_sort_skip_and_limit(people):
    by_age = ids(people.find({}, sort=[("age", ASCENDING), ("_id", ASCENDING)]))
    # MongoDB's order across types: null and missing, then numbers, then strings
    assert by_age == ["eve", "fay", "cid", "ann", "bob", "dan"]
    assert ids(people.find({}, sort=[("age", DESCENDING), ("_id", ASCENDING)]).limit(2)) == ["dan", "bob"]
    assert ids(people.find({"team": "a"}, sort=[("city", DESCENDING)])) == ["bob", "ann"]  # sorted in Python
    assert ids(people.find({}, sort=[("_id", ASCENDING)], skip=1, limit=2)) == ["bob", "cid"]
    assert ids(people.find({}).sort("_id", DESCENDING).skip(4)) == ["bob", "ann"]


def test_sql_order_and_python_order_agree_across_types(db):
    """A sort on an indexed field runs in SQL, on another in Python: same values, same order."""
    values = [-3, 2.5, 7, "a", "b", ObjectId(), False, True, datetime(2026, 1, 1, tzinfo=timezone.utc),
              datetime(2025, 6, 1, tzinfo=timezone.utc), {"x": 1}, None]
    items = db["items"]
    items.create_index("indexed")
    items.insert_many([{"_id": i, "indexed": v, "plain": v} for i, v in enumerate(values)])
    for direction in (ASCENDING, DESCENDING):
        assert ids(items.find({}, sort=[("indexed", direction)])) == ids(items.find({}, sort=[("plain", direction)]))
    assert not any("TEMP B-TREE" in step for step in items.query_plan({}, sort=[("indexed", ASCENDING)]))


def test_datetimes_come_back_aware_in_utc_to_the_millisecond(db):
    events = db["events"]
    events.create_index("at")
    naive = datetime(2026, 3, 1, 12, 0, 0, 123456)
    paris = datetime(2026, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=1)))
    events.insert_many([{"_id": "naive", "at": naive}, {"_id": "paris", "at": paris}])
    stored = events.find_one({"_id": "naive"})["at"]
    assert stored == datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    assert stored.utcoffset() == timedelta(0)
    assert events.find_one({"_id": "paris"})["at"] == datetime(2026, 3, 1, 13, 30, tzinfo=timezone.utc)
    # naive query values mean UTC, as pymongo sends them
    assert ids(events.find({"at": {"$gt": datetime(2026, 3, 1, 12, 0, 1)}})) == ["paris"]
    assert ids(events.find({"at": naive})) == ["naive"]
    assert ids(events.find({}, sort=[("at", DESCENDING)])) == ["paris", "naive"]


def test_bson_types_round_trip(db):
    document = {"_id": ObjectId(), "int64": Int64(2**40), "decimal": Decimal128("1.10"), "bytes": b"\x00\xff",
                "nested": [{"a": (1, 2)}], "float": 0.1, "flag": False}
    db["items"].insert_one(document)
    stored = db["items"].find_one({"_id": document["_id"]})
    assert stored == {**document, "nested": [{"a": [1, 2]}]}  # BSON has arrays, not tuples
    assert isinstance(stored["int64"], Int64) and isinstance(stored["decimal"], Decimal128)


# --- several connections and processes on one folder -------------------------------------


def test_data_and_indexes_survive_reopening(tmp_path):
    first = docstore.Client(tmp_path)
    first["db"]["items"].create_index("key", unique=True)
    first["db"]["items"].insert_one({"_id": 1, "key": "k"})
    first.close()
    again = docstore.Client(tmp_path)["db"]["items"]
    assert again.find_one({"key": "k"}) == {"_id": 1, "key": "k"}
    assert "key_1" in again.index_information()
    with pytest.raises(DuplicateKeyError):
        again.insert_one({"_id": 2, "key": "k"})


def test_an_index_made_through_another_connection_is_kept_up_by_this_one(tmp_path):
    mine, theirs = docstore.Client(tmp_path)["db"]["items"], docstore.Client(tmp_path)["db"]["items"]
    mine.insert_one({"_id": 1, "key": "a"})  # this connection now knows the collection without the index
    theirs.create_index("key", unique=True)
    mine.insert_one({"_id": 2, "key": "b"})
    with pytest.raises(DuplicateKeyError):
        mine.insert_one({"_id": 3, "key": "a"})
    assert ids(theirs.find({"key": "b"})) == [2]  # written by `mine` with the index's column filled
    assert any("USING INDEX" in step for step in mine.query_plan({"key": "b"}))


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def test_two_processes_see_each_others_writes(tmp_path):
    code = """
        import sys, time
        from shared.docstore import Client
        items = Client(sys.argv[1])["db"]["items"]
        items.insert_one({"_id": sys.argv[2]})
        deadline = time.monotonic() + 30
        while items.find_one({"_id": sys.argv[3]}) is None:
            assert time.monotonic() < deadline, "never saw the other process's write"
            time.sleep(0.01)
        print(items.count_documents({}))
    """
    a, b = run_python(code, str(tmp_path), "a", "b"), run_python(code, str(tmp_path), "b", "a")
    assert finish(a).strip() in ("1", "2") and finish(b).strip() in ("1", "2")
    assert sorted(ids(docstore.Client(tmp_path)["db"]["items"].find())) == ["a", "b"]


def test_find_one_and_update_from_two_processes_loses_no_increment(tmp_path):
    code = """
        import sys, time
        from pathlib import Path
        from pymongo import ReturnDocument
        from shared.docstore import Client
        counters = Client(sys.argv[1])["db"]["counters"]
        while not (Path(sys.argv[1]) / "go").exists():  # start together
            time.sleep(0.005)
        seen = [counters.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, upsert=True,
                                             return_document=ReturnDocument.AFTER)["n"] for _ in range(200)]
        print(" ".join(map(str, seen)))
    """
    processes = [run_python(code, str(tmp_path)) for _ in range(2)]
    (tmp_path / "go").touch()
    seen = [int(n) for process in processes for n in finish(process).split()]
    assert sorted(seen) == list(range(1, 401))  # every increment applied once, none lost
    assert docstore.Client(tmp_path)["db"]["counters"].find_one({"_id": "c"}) == {"_id": "c", "n": 400}


def test_a_process_killed_mid_writes_leaves_its_committed_writes_and_a_sound_file(tmp_path):
    code = """
        import sys
        from shared.docstore import Client
        items = Client(sys.argv[1])["db"]["items"]
        items.create_index("key", unique=True)
        n = 0
        while True:
            items.insert_many([{"_id": n + i, "key": f"k{n + i}", "pad": "x" * 500} for i in range(50)])
            n += 50
            print(n, flush=True)
    """
    writer = run_python(code, str(tmp_path))
    committed = 0
    while committed < 2000:
        committed = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)

    items = docstore.Client(tmp_path)["db"]["items"]
    assert items.count_documents({}) >= committed
    assert items.find_one({"key": f"k{committed - 1}"})["_id"] == committed - 1
    with pytest.raises(DuplicateKeyError):
        items.insert_one({"_id": "again", "key": "k0"})
    items.insert_one({"_id": "after", "key": "new"})
    check = sqlite3.connect(tmp_path / "db.sqlite3")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    check.close()


# --- lookups examine the same documents however large the store ---------------------------


async def fill_repositories(url: str, other_goals: int) -> dict[str, int]:
    """One probe goal in each repository among `other_goals` others, then the documents each
    repository lookup of the probe goal examined."""
    audit = AuditStore(open_database(url, AUDIT_DATABASE))
    plans = PlanStore(open_database(url, "goalrail_planner"))
    router = RouterStore(open_database(url, "goalrail_router"))
    executions = open_database(url, "goalrail_executor")["executions"]
    for store in (audit, plans, router):
        await store.init()
    await executions.create_index("goal_id")

    previous = None
    trail = []
    for event in goal_events("probe"):
        previous = chain(event, previous)
        trail.append({"_id": previous.event_id, **previous.model_dump(mode="json"), "outbox": []})
    probe = GoalRecord(goal_id="probe", tenant="acme", goal=GoalSpec(text="Prepare the report", requester="r"), submitted_at=NOW)
    goal = {"_id": "probe", **probe.model_dump(mode="json")}
    hold = {"goal_id": "probe", "status": "pending", "ready": {}, "binding": {}, "held_at": 0.0}

    def others(template: dict, n: int, **fields) -> list[dict]:
        return [{**template, "_id": f"{template['_id']}-{i}", "goal_id": f"other-{i // n}", **fields}
                for i in range(other_goals * n)]

    await audit._records.insert_many([record for template in trail for record in others(template, 1)])
    await plans._goals.insert_many(others(goal, 1, status="completed", expires_at=1.0))
    await router._holds.insert_many(others({"_id": "hold", **hold}, 1))
    await executions.insert_many(others({"_id": "exec", "outbox": []}, 1))
    for record in trail:
        await audit._records.insert_one(record)
    await plans.create(probe)
    await router.hold("probe:hold", _ready(), _binding())

    examined = {}

    async def count(name: str, database: str, lookup) -> None:
        counter = embedded_database(url, database).documents_examined
        counter.clear()
        await lookup()
        examined[name] = sum(counter.values())

    await count("audit records", AUDIT_DATABASE, lambda: audit.records("probe"))
    await count("audit head", AUDIT_DATABASE, lambda: audit.head("probe"))
    await count("latest plan", AUDIT_DATABASE, lambda: audit.latest_plan("probe"))
    await count("outbox of", AUDIT_DATABASE, lambda: audit.outbox_of("probe:plan"))
    await count("flags", AUDIT_DATABASE, lambda: audit.flags("probe"))
    # a planner that did not write the goal itself (a restart, another replica) reads it
    await count("goal", "goalrail_planner", lambda: PlanStore(open_database(url, "goalrail_planner")).get("probe"))
    await count("overdue", "goalrail_planner", lambda: plans.overdue(NOW.timestamp()))
    await count("held", "goalrail_router", lambda: router.held("probe:hold"))
    await count("close holds", "goalrail_router", lambda: router.close_holds("probe", NOW))
    await count("spend", "goalrail_router", lambda: router.charge("probe", "acme", 0.5, 0.1))
    await count("spent", "goalrail_router", lambda: router.spent("probe", "acme"))
    await count("execution", "goalrail_executor", lambda: handle_once(executions, "exec-0", _nothing))
    await count("a goal's executions", "goalrail_executor",
                lambda: executions.find({"goal_id": "other-0"}).to_list(None))
    return examined


async def _nothing():
    return []


def _ready() -> StepReady:
    return goal_submitted("Prepare the report", goal_id="probe").derive(
        StepReady, "probe:s:1:ready", "planner", plan_id="p", step=Step(id="s", task_type="act", tool="vendor.pay"),
        attempt=1, resolved_inputs={})


def _binding() -> Binding:
    return Binding(kind="tool", tool="vendor.pay", reason="test")


async def test_repository_lookups_examine_as_many_documents_in_a_large_store_as_in_a_small_one(tmp_path):
    small = await fill_repositories(f"embedded://{tmp_path / 'small'}", other_goals=100)
    large = await fill_repositories(f"embedded://{tmp_path / 'large'}", other_goals=20_000)
    assert large == small
    assert small["audit records"] == 5 and small["audit head"] == 1 and small["goal"] == 1
    assert small["overdue"] == 0 and small["outbox of"] == 1


def test_repository_queries_use_the_indexes(tmp_path):
    url = f"embedded://{tmp_path}"
    audit, plans = embedded_database(url, AUDIT_DATABASE)["audit"], embedded_database(url, "goalrail_planner")["goals"]

    async def init():
        await AuditStore(open_database(url, AUDIT_DATABASE)).init()
        await PlanStore(open_database(url, "goalrail_planner")).init()

    asyncio.run(init())
    overdue = {"$or": [{"status": "running", "expires_at": {"$gt": 0, "$lte": 1.0}}, {"has_unpublished": True}]}
    plan = plans.query_plan(overdue)
    assert "MULTI-INDEX OR" in plan and not any(step.startswith("SCAN") for step in plan), plan
    for query, sort in [({"goal_id": "g"}, [("seq", ASCENDING)]), ({"goal_id": "g"}, [("seq", DESCENDING)]),
                        ({"goal_id": "g", "event_type": "goalrail.plan.created"}, [("seq", DESCENDING)])]:
        steps = audit.query_plan(query, sort)
        assert steps == ["SEARCH docs:audit USING INDEX index:audit:goal_id_1_seq_1 (key:goal_id=?)"], steps


def test_memory_stores_are_per_url_and_per_process(tmp_path):
    name = f"db_{uuid.uuid4().hex}"
    embedded_database("memory://one", name)["items"].insert_one({"_id": 1})
    assert embedded_database("memory://one", name)["items"].count_documents({}) == 1
    assert embedded_database("memory://two", name)["items"].count_documents({}) == 0


# --- the async facade commits a turn's writes together -----------------------------------------


def counted_database(monkeypatch) -> tuple[object, list[int]]:
    """An async database whose transactions are counted (writes per transaction)."""
    url = f"memory://{uuid.uuid4().hex}"
    database = open_database(url, "db")
    transactions: list[int] = []
    real_writing = docstore.Database._writing

    @contextmanager
    def counting(self):
        if self._transactions:  # a savepoint: one write of the open transaction
            transactions[-1] += 1
        with real_writing(self) as connection:
            yield connection

    real_transaction = docstore.Database.transaction

    @contextmanager
    def opening(self):
        transactions.append(0)
        with real_transaction(self):
            yield

    monkeypatch.setattr(docstore.Database, "_writing", counting)
    monkeypatch.setattr(docstore.Database, "transaction", opening)
    return database, transactions


async def test_inserts_made_at_once_are_one_transaction_and_each_caller_learns_its_own_fate(monkeypatch):
    database, transactions = counted_database(monkeypatch)
    items = database["items"]
    await items.create_index("key", unique=True)
    await items.insert_one({"_id": "a", "key": "k1"})
    results = await asyncio.gather(items.insert_one({"_id": "b", "key": "k2"}), items.insert_one({"_id": "a", "key": "k9"}),
                                   items.insert_one({"_id": "c", "key": "k1"}), items.insert_one({"key": "k3"}),
                                   return_exceptions=True)
    assert transactions == [1, 4]  # the first insert went alone, the four concurrent ones together
    assert results[0].inserted_id == "b" and isinstance(results[3].inserted_id, ObjectId)
    assert [type(r) for r in results[1:3]] == [DuplicateKeyError, DuplicateKeyError]  # _id, then the unique key
    assert sorted(d["key"] for d in await items.find({}).to_list()) == ["k1", "k2", "k3"]


async def test_a_document_that_cannot_be_stored_fails_only_its_own_insert(monkeypatch):
    database, transactions = counted_database(monkeypatch)
    items = database["items"]
    results = await asyncio.gather(items.insert_one({"_id": "ok"}), items.insert_one({"_id": "bad", "x": object()}),
                                   items.insert_one({"_id": "ok too"}), return_exceptions=True)
    assert transactions == [3]
    assert results[0].inserted_id == "ok" and isinstance(results[1], Exception) and results[2].inserted_id == "ok too"
    assert [d["_id"] for d in await items.find({}).to_list()] == ["ok", "ok too"]


async def test_conditional_saves_of_one_turn_share_a_transaction_and_still_conflict(monkeypatch):
    # the planner's save: replace the goal only if nobody changed its version since it was read
    database, transactions = counted_database(monkeypatch)
    goals, outboxes = database["goals"], database["outboxes"]
    await goals.insert_many([{"_id": "g1", "version": 0}, {"_id": "g2", "version": 0}])
    first, second, other, outbox = await asyncio.gather(
        goals.replace_one({"_id": "g1", "version": 0}, {"version": 1, "by": "first"}),
        goals.replace_one({"_id": "g1", "version": 0}, {"version": 1, "by": "second"}),
        goals.replace_one({"_id": "g2", "version": 0}, {"version": 1, "by": "other"}),
        outboxes.insert_one({"_id": "e1", "outbox": []}),
    )
    assert transactions == [1, 4]  # every kind of write, every collection of the database
    assert (first.modified_count, second.modified_count, other.modified_count) == (1, 0, 1)
    assert [d["by"] for d in await goals.find({}, sort=[("_id", ASCENDING)]).to_list()] == ["first", "other"]
    assert outbox.inserted_id == "e1"


async def test_when_the_commit_fails_every_caller_hears_of_it_and_nothing_is_stored(monkeypatch):
    database = open_database(f"memory://{uuid.uuid4().hex}", "db")
    items = database["items"]
    await items.insert_one({"_id": "before"})
    real_transaction = docstore.Database.transaction

    @contextmanager
    def failing_commit(self):
        with real_transaction(self):
            yield
            raise sqlite3.OperationalError("disk I/O error")  # at the end of the block: rolled back

    monkeypatch.setattr(docstore.Database, "transaction", failing_commit)
    results = await asyncio.gather(items.insert_one({"_id": "a"}),
                                   items.update_one({"_id": "before"}, {"$set": {"n": 1}}), return_exceptions=True)
    assert [type(r) for r in results] == [sqlite3.OperationalError, sqlite3.OperationalError]
    monkeypatch.undo()
    assert await items.find({}).to_list() == [{"_id": "before"}]


async def test_a_write_whose_caller_was_cancelled_before_the_turn_ended_is_not_made():
    items = open_database(f"memory://{uuid.uuid4().hex}", "db")["items"]
    cancelled = asyncio.ensure_future(items.insert_one({"_id": "cancelled"}))
    kept = asyncio.ensure_future(items.insert_one({"_id": "kept"}))
    await asyncio.sleep(0)  # both calls are queued
    cancelled.cancel()
    await asyncio.gather(cancelled, kept, return_exceptions=True)
    assert [d["_id"] for d in await items.find({}).to_list()] == ["kept"]


def test_a_failed_first_write_leaves_no_phantom_collection():
    # the failed insert created the collection's table in a transaction that was rolled back
    items = docstore.Client()["db"]["items"]
    with pytest.raises(Exception, match="cannot encode"):
        items.insert_one({"_id": "bad", "x": object()})
    items.insert_one({"_id": "ok"})
    assert [d["_id"] for d in items.find({})] == ["ok"]


async def test_a_collection_whose_first_write_failed_in_a_shared_transaction_works_for_the_next_write():
    # the failed insert created the collection's table in its savepoint, which was rolled back
    items = open_database(f"memory://{uuid.uuid4().hex}", "db")["items"]
    bad, good = await asyncio.gather(items.insert_one({"_id": "bad", "x": object()}), items.insert_one({"_id": "ok"}),
                                     return_exceptions=True)
    assert isinstance(bad, Exception) and good.inserted_id == "ok"
    assert [d["_id"] for d in await items.find({}).to_list()] == ["ok"]
