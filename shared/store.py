"""One async collection API over MongoDB (pymongo's AsyncMongoClient) and the embedded store.

Repositories are written once against `pymongo.asynchronous` collection semantics. The embedded
default is litemongo (mongomock over one SQLite file per collection): several processes can open
the same folder and see each other's writes, and data survives a service restart. It is
synchronous, so its calls run on one worker thread per process, which also keeps SQLite's
connections on the thread that made them.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

__all__ = [
    "Collection",
    "Database",
    "DuplicateKeyError",
    "ReturnDocument",
    "open_database",
]


class Collection(Protocol):
    async def insert_one(self, document: dict[str, Any]) -> Any: ...
    async def find_one(self, filter: dict[str, Any], *args: Any, **kwargs: Any) -> dict | None: ...
    async def find_one_and_update(self, filter: dict, update: dict, **kwargs: Any) -> dict | None: ...
    async def update_one(self, filter: dict, update: dict, **kwargs: Any) -> Any: ...
    async def replace_one(self, filter: dict, replacement: dict, **kwargs: Any) -> Any: ...
    async def count_documents(self, filter: dict, **kwargs: Any) -> int: ...
    async def create_index(self, keys: Any, **kwargs: Any) -> str: ...
    def find(self, filter: dict | None = None, *args: Any, **kwargs: Any) -> Any: ...


class Database(Protocol):
    def __getitem__(self, name: str) -> Collection: ...


class _ThreadCursor:
    def __init__(self, run: Any, cursor_factory: Any) -> None:
        self._run = run
        self._cursor_factory = cursor_factory

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        def fetch() -> list[dict[str, Any]]:
            cursor = self._cursor_factory()
            return list(cursor if length is None else cursor.limit(length))

        return await self._run(fetch)


class _ThreadCollection:
    """Async facade over a synchronous pymongo-compatible collection."""

    _ASYNC_METHODS = {
        "insert_one",
        "insert_many",
        "find_one",
        "find_one_and_update",
        "update_one",
        "update_many",
        "replace_one",
        "delete_many",
        "count_documents",
        "create_index",
        "distinct",
    }

    def __init__(self, collection: Any, executor: ThreadPoolExecutor) -> None:
        self._collection = collection
        self._executor = executor

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def find(self, *args: Any, **kwargs: Any) -> _ThreadCursor:
        return _ThreadCursor(self._run, lambda: self._collection.find(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        if name not in self._ASYNC_METHODS:
            raise AttributeError(name)
        method = getattr(self._collection, name)
        return functools.partial(self._run, method)


class _ThreadDatabase:
    def __init__(self, database: Any, executor: ThreadPoolExecutor) -> None:
        self._database = database
        self._executor = executor

    def __getitem__(self, name: str) -> _ThreadCollection:
        return _ThreadCollection(self._database[name], self._executor)


@functools.cache
def _store_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="goalrail-store")


@functools.cache
def _embedded_client(url: str) -> Any:
    if url.startswith("memory://"):
        import mongomock

        return mongomock.MongoClient()
    import litemongo

    path = Path(url.removeprefix("embedded://")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    # The client's constructor touches SQLite: make it on the store thread like every later call.
    return _store_executor().submit(litemongo.connect, str(path)).result()


@functools.cache
def _mongo_client(url: str) -> Any:
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(url, tz_aware=True)


def embedded_store_url(workdir: Path) -> str:
    """The store URL of an embedded stack (demo, `up`, bench, tests) that runs in `workdir`."""
    return f"embedded://{workdir / 'store'}"


def open_database(url: str, name: str) -> Database:
    """The database `name` at `url` (mongodb://…, embedded://PATH or memory://)."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return _mongo_client(url)[name]
    return _ThreadDatabase(_embedded_client(url)[name], _store_executor())


def reset_memory_stores() -> None:
    """Forget in-process memory:// stores (tests)."""
    _embedded_client.cache_clear()
