"""One async collection API over MongoDB (pymongo's AsyncMongoClient) and the embedded store.

Repositories are written once against `pymongo.asynchronous` collection semantics and run on:

- `mongodb://…`: MongoDB itself;
- `embedded://PATH` (the default): shared.docstore, one SQLite file per database in the folder
  PATH, with real indexes; the four services open the same folder as separate processes, see
  each other's writes, and the data survives restarts and kill -9;
- `memory://[NAME]`: the same docstore on in-memory SQLite, for unit tests: one process, shared
  by everything opening the same URL until `reset_memory_stores()`.

The docstore is synchronous and its calls run right on the event loop. A call by key or index
takes tens of microseconds; handing it to a worker thread cost several times that, and under
load each hand-over waited for the GIL (up to its 5 ms switch interval), which made every
store call of a busy service slow. Each service writes its own database file, so a call waits
for another process's write lock only in the rare moments two processes write one file (a
CLI command, a second replica), and then for at most SQLite's busy timeout.

Concurrent handlers' writes to one database are committed together: the write calls made within
a turn of the event loop run in one SQLite transaction instead of one each (a commit was the
largest single cost of the auditor, which writes every event, and of the planner, which saves
its goal on every event). Each call runs in a savepoint of its own, so it succeeds or fails
alone, and its caller returns only once the transaction is committed: a stored document is
durable before anything acts on it, as with one transaction per call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared import docstore

__all__ = [
    "Collection",
    "Database",
    "DuplicateKeyError",
    "ReturnDocument",
    "embedded_database",
    "open_database",
    "reset_memory_stores",
]


class Collection(Protocol):
    async def insert_one(self, document: dict[str, Any]) -> Any: ...
    async def insert_many(self, documents: list[dict[str, Any]], **kwargs: Any) -> Any: ...
    async def find_one(self, filter: dict[str, Any], *args: Any, **kwargs: Any) -> dict | None: ...
    async def find_one_and_update(self, filter: dict, update: dict, **kwargs: Any) -> dict | None: ...
    async def update_one(self, filter: dict, update: dict, **kwargs: Any) -> Any: ...
    async def update_many(self, filter: dict, update: dict, **kwargs: Any) -> Any: ...
    async def replace_one(self, filter: dict, replacement: dict, **kwargs: Any) -> Any: ...
    async def delete_one(self, filter: dict, **kwargs: Any) -> Any: ...
    async def delete_many(self, filter: dict, **kwargs: Any) -> Any: ...
    async def count_documents(self, filter: dict, **kwargs: Any) -> int: ...
    async def distinct(self, key: str, filter: dict | None = None, **kwargs: Any) -> list[Any]: ...
    async def create_index(self, keys: Any, **kwargs: Any) -> str: ...
    async def index_information(self) -> dict[str, Any]: ...
    def find(self, filter: dict | None = None, *args: Any, **kwargs: Any) -> Any: ...


class Database(Protocol):
    def __getitem__(self, name: str) -> Collection: ...


class _AsyncCursor:
    def __init__(self, cursor_factory: Any) -> None:
        self._cursor_factory = cursor_factory

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        cursor = self._cursor_factory()
        return list(cursor if length is None else cursor.limit(length))


class _TurnWrites:
    """The write calls made on one database within a turn of the event loop, run in one
    transaction when the turn ends (see the module's docstring). Each call runs in a savepoint of
    its own, so it succeeds or fails alone; its caller hears of it only after the commit."""

    def __init__(self, database: docstore.Database) -> None:
        self._database = database
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    async def run(self, call: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call, done))
        if len(self._pending) == 1:
            loop.call_soon(self._write)
        return await done

    def _write(self) -> None:
        # a caller cancelled before the turn ended has its write left unmade
        batch, self._pending = [(c, d) for c, d in self._pending if not d.done()], []
        outcomes: list[tuple[asyncio.Future[Any], Any, Exception | None]] = []
        try:
            with self._database.transaction():
                for call, done in batch:
                    try:
                        outcomes.append((done, call(), None))
                    except Exception as exc:  # noqa: BLE001 — the caller's own failure, raised where it awaits
                        outcomes.append((done, None, exc))
        except Exception as exc:  # noqa: BLE001 — the commit failed: none of the writes is stored
            outcomes = [(done, None, exc) for _, done in batch]
        for done, result, error in outcomes:
            if done.done():
                continue
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)


class _AsyncCollection:
    """pymongo's async collection API over a synchronous docstore collection."""

    _WRITES = {
        "insert_one",
        "insert_many",
        "replace_one",
        "update_one",
        "update_many",
        "find_one_and_update",
        "delete_one",
        "delete_many",
    }
    _AT_ONCE = {  # reads, and DDL: an index changes the schema every later write reads
        "find_one",
        "count_documents",
        "create_index",
        "distinct",
        "index_information",
    }

    def __init__(self, collection: Any, writes: _TurnWrites) -> None:
        self._collection = collection
        self._writes = writes

    def find(self, *args: Any, **kwargs: Any) -> _AsyncCursor:
        return _AsyncCursor(lambda: self._collection.find(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._collection, name) if name in self._WRITES | self._AT_ONCE else None
        if method is None:
            raise AttributeError(name)
        writes = self._writes

        async def at_once(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        async def write(*args: Any, **kwargs: Any) -> Any:
            return await writes.run(functools.partial(method, *args, **kwargs))

        call = write if name in self._WRITES else at_once
        setattr(self, name, call)  # made once per method: every store call comes through here
        return call


class _AsyncDatabase:
    def __init__(self, database: docstore.Database) -> None:
        self._database = database
        self._writes = _TurnWrites(database)

    def __getitem__(self, name: str) -> _AsyncCollection:
        return _AsyncCollection(self._database[name], self._writes)


_embedded_clients: dict[str, docstore.Client] = {}
_embedded_clients_lock = threading.Lock()


def _embedded_client(url: str) -> docstore.Client:
    # Opening costs nothing: SQLite is first touched by a call.
    with _embedded_clients_lock:
        if url not in _embedded_clients:
            if url.startswith("memory://"):
                _embedded_clients[url] = docstore.Client()
            else:
                path = Path(url.removeprefix("embedded://")).expanduser().resolve()
                path.mkdir(parents=True, exist_ok=True)
                _embedded_clients[url] = docstore.Client(path)
        return _embedded_clients[url]


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
    return _AsyncDatabase(embedded_database(url, name))


def embedded_database(url: str, name: str) -> docstore.Database:
    """The synchronous docstore database behind an embedded:// or memory:// URL (tests, tools)."""
    if not url.startswith(("embedded://", "memory://")):
        raise ValueError(f"not an embedded store URL: {url}")
    return _embedded_client(url)[name]


def reset_memory_stores() -> None:
    """Forget in-process memory:// stores (tests)."""
    with _embedded_clients_lock:
        for url in [u for u in _embedded_clients if u.startswith("memory://")]:
            del _embedded_clients[url]
