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

Concurrent handlers' `insert_one` calls on one collection are written together: the calls made
within a turn of the event loop become one `insert_many`, one SQLite transaction instead of one
each (a commit was the largest single cost of the auditor, which writes every event). Each
caller still returns only once its own document is stored, or gets its own DuplicateKeyError.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any, Protocol

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError
from pymongo.results import InsertOneResult

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


class _AsyncCollection:
    """pymongo's async collection API over a synchronous docstore collection."""

    _ASYNC_METHODS = {
        "insert_many",
        "find_one",
        "find_one_and_update",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
        "count_documents",
        "create_index",
        "distinct",
        "index_information",
    }

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self._inserts: list[tuple[dict[str, Any], asyncio.Future[InsertOneResult]]] = []

    async def insert_one(self, document: dict[str, Any], **options: Any) -> InsertOneResult:
        """Stored together with the other inserts of this turn of the event loop (see above)."""
        if options:
            return self._collection.insert_one(document, **options)
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[InsertOneResult] = loop.create_future()
        self._inserts.append((document, stored))
        if len(self._inserts) == 1:
            loop.call_soon(self._write_inserts)
        return await stored

    def _write_inserts(self) -> None:
        batch, self._inserts = self._inserts, []
        if len(batch) == 1:
            _settle_alone(self._collection, *batch[0])
            return
        try:
            self._collection.insert_many([document for document, _ in batch], ordered=False)
            refused: dict[int, dict[str, Any]] = {}
        except BulkWriteError as exc:
            refused = {error["index"]: error for error in exc.details.get("writeErrors", [])}
        except Exception:  # noqa: BLE001 — one bad document must not fail the others: each alone
            for document, stored in batch:
                _settle_alone(self._collection, document, stored)
            return
        for index, (document, stored) in enumerate(batch):
            if stored.done():  # its caller was cancelled
                continue
            error = refused.get(index)
            if error is None:
                stored.set_result(InsertOneResult(document["_id"], True))
            else:
                kind = DuplicateKeyError if error.get("code") == DUPLICATE_KEY else WriteError
                stored.set_exception(kind(str(error.get("errmsg")), error.get("code"), error))

    def find(self, *args: Any, **kwargs: Any) -> _AsyncCursor:
        return _AsyncCursor(lambda: self._collection.find(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        if name not in self._ASYNC_METHODS:
            raise AttributeError(name)
        method = getattr(self._collection, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        setattr(self, name, call)  # made once per method: every store call comes through here
        return call


DUPLICATE_KEY = 11000


def _settle_alone(collection: Any, document: dict[str, Any], stored: asyncio.Future[InsertOneResult]) -> None:
    if stored.done():
        return
    try:
        stored.set_result(collection.insert_one(document))
    except Exception as exc:  # noqa: BLE001 — the caller's own failure, raised where it awaits
        stored.set_exception(exc)


class _AsyncDatabase:
    def __init__(self, database: Any) -> None:
        self._database = database

    def __getitem__(self, name: str) -> _AsyncCollection:
        return _AsyncCollection(self._database[name])


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
