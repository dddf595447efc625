"""The embedded store behaves like MongoDB where Goalrail relies on it, across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from shared.store import DuplicateKeyError, ReturnDocument, open_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "embedded"])
def store_url(request, tmp_path):
    return "memory://" if request.param == "memory" else f"embedded://{tmp_path / 'store'}"


async def test_unique_index_and_conditional_update(store_url):
    collection = open_database(store_url, f"t_{uuid.uuid4().hex[:8]}")["items"]
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

    import asyncio

    async def read_then_conflict():
        goals = open_database(url, "goalrail_planner")["goals"]
        document = await goals.find_one({"_id": "g1"})
        with pytest.raises(DuplicateKeyError):  # the index made by the other process holds here
            await goals.insert_one({"_id": "g2", "goal_id": "g1"})
        return document

    document = asyncio.run(read_then_conflict())
    assert document == {"_id": "g1", "goal_id": "g1", "status": "running"}
