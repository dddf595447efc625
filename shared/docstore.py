"""A small pymongo-compatible document store over SQLite: the embedded store behind shared.store.

One SQLite file per database (WAL, so several processes share it and readers never wait for a
writer); one table per collection holding each document as BSON. An index is a set of columns
holding the values of its fields, extracted in Python whenever a document is written, plus an
SQLite index over them, so a query narrows its candidates in SQL and only those are decoded. The
full filter is then applied to each candidate by mongomock, so matching keeps MongoDB's semantics
while SQL only decides which documents are worth looking at. Every read-modify-write runs in one
`BEGIN IMMEDIATE` transaction: two processes cannot lose each other's updates.

Limits (raised, never silently wrong): no multikey indexes (an array at an indexed path),
projection, collations or array filters. Values of types other than numbers, strings, null,
booleans, dates and ObjectIds sort in SQL by their BSON bytes, not exactly as MongoDB sorts them.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
from bson import CodecOptions, Decimal128, ObjectId
from bson.tz_util import utc
from mongomock.filtering import filter_applies, resolve_sort_key
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

__all__ = ["Client", "Collection", "Cursor", "Database", "Index"]

# What AsyncMongoClient(tz_aware=True) hands back: datetimes in UTC, aware.
CODEC = CodecOptions(tz_aware=True, tzinfo=utc)
# Pages are read through a memory map instead of a read() per page: with 10,000 goals stored the
# files outgrow SQLite's page cache, and syscalls made every lookup dearer as the store grew.
MMAP_BYTES = 256 * 1024 * 1024
BUSY_TIMEOUT_S = 30.0
_META = "docstore_indexes"
_TABLE_PREFIX = "docs:"
# Callers may pass these; they change nothing an embedded store does.
_HARMLESS_OPTIONS = {"session", "comment", "hint", "bypass_document_validation", "max_time_ms", "background"}


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field for field, _ in self.keys)


class Client:
    """Databases in `folder` (one `NAME.sqlite3` file each), or in memory when `folder` is None:
    then a database lives as long as this client and only this process sees it."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._databases: dict[str, Database] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Database:
        with self._lock:
            if name not in self._databases:
                if not name or any(c in name for c in '/\\. "$\0'):
                    raise ValueError(f"invalid database name {name!r}")
                path = None if self.folder is None else self.folder / f"{name}.sqlite3"
                self._databases[name] = Database(name, path)
            return self._databases[name]

    def close(self) -> None:
        for database in self._databases.values():
            database.close()


class Database:
    def __init__(self, name: str, path: Path | None) -> None:
        self.name = name
        self.path = path
        # documents decoded to answer queries, by collection: what the queries cost (tests)
        self.documents_examined: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._transactions = 0  # open transaction() blocks: a write inside is a savepoint
        self._connection: sqlite3.Connection | None = None
        self._schema_version: int | None = None
        self._indexes: dict[str, list[Index]] = {}  # by collection; a collection exists iff listed
        self._layouts: dict[str, _Layout] = {}

    def __getitem__(self, name: str) -> Collection:
        return Collection(self, name)

    def list_collection_names(self) -> list[str]:
        with self._reading():
            return sorted(self._indexes)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
                self._schema_version = None

    # --- connection, transactions and what the file says about collections and indexes ------

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            target = ":memory:" if self.path is None else str(self.path)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's
            connection = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            if self.path is not None:
                _enable_wal(connection)
                connection.execute("PRAGMA synchronous=NORMAL")  # WAL: still safe against kill -9
                connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            self._connection = connection
        return self._connection

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connect()
            self._refresh(connection)
            yield connection

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit the writes made inside together, as one SQLite transaction: a commit is the
        dearest part of a small write. Each write still succeeds or fails alone (it runs in a
        savepoint of its own); nothing inside is durable, or visible to other processes, before
        the block ends without an error."""
        with self._writing():
            self._transactions += 1
            try:
                yield
            finally:
                self._transactions -= 1

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds SQLite's write lock from its first statement; inside
        `transaction()`, a savepoint of it."""
        with self._lock:
            connection = self._connect()
            nested = self._transactions > 0
            connection.execute("SAVEPOINT write" if nested else "BEGIN IMMEDIATE")
            try:
                # inside a transaction only this connection can change the schema, and its cache
                # is dropped when a write of it fails (a rollback may take a new collection along)
                if not nested or self._schema_version is None:
                    self._refresh(connection)
                yield connection
            except BaseException:
                if nested:
                    connection.execute("ROLLBACK TO write")
                    connection.execute("RELEASE write")
                elif connection.in_transaction:
                    connection.execute("ROLLBACK")
                # what this transaction created (a collection, an index) is gone with it: read the
                # schema again rather than believe the cache
                self._schema_version = None
                raise
            connection.execute("RELEASE write" if nested else "COMMIT")

    def _refresh(self, connection: sqlite3.Connection) -> None:
        """Reload collections and indexes when any process changed the schema (every index change
        is DDL, so SQLite's schema version tells)."""
        version = connection.execute("PRAGMA schema_version").fetchone()[0]
        if version == self._schema_version:
            return
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        indexes: dict[str, list[Index]] = {
            name.removeprefix(_TABLE_PREFIX): [] for name in tables if name.startswith(_TABLE_PREFIX)
        }
        if _META in tables:
            rows = connection.execute(f"SELECT collection, name, keys, is_unique FROM {_META} ORDER BY rowid")
            for collection, name, keys, unique in rows:
                indexes.setdefault(collection, []).append(
                    Index(name, tuple((field, direction) for field, direction in json.loads(keys)), bool(unique)))
        self._indexes = indexes
        self._layouts.clear()
        self._schema_version = version

    def _layout(self, collection: str) -> _Layout:
        if collection not in self._layouts:
            self._layouts[collection] = _Layout.of(collection, self._indexes.get(collection, []))
        return self._layouts[collection]

    def _add_index(self, collection: str, index: Index) -> None:
        self._indexes.setdefault(collection, []).append(index)
        self._layouts.pop(collection, None)

    def _ensure_collection(self, connection: sqlite3.Connection, name: str) -> None:
        if name in self._indexes:
            return
        if not name or "\0" in name or name.startswith("$"):
            raise ValueError(f"invalid collection name {name!r}")
        connection.execute(f"CREATE TABLE IF NOT EXISTS {_META} (collection TEXT NOT NULL, name TEXT NOT NULL, "
                           "keys TEXT NOT NULL, is_unique INTEGER NOT NULL, PRIMARY KEY (collection, name))")
        table = _quote(_TABLE_PREFIX + name)
        connection.execute(f"CREATE TABLE IF NOT EXISTS {table} (doc BLOB NOT NULL, {_column('_id')})")
        _create_sql_index(connection, name, Index("_id_", (("_id", 1),), unique=True))
        connection.execute(f"INSERT OR IGNORE INTO {_META} VALUES (?, '_id_', '[[\"_id\", 1]]', 1)", (name,))
        self._add_index(name, Index("_id_", (("_id", 1),), unique=True))


@dataclass(frozen=True)
class _Layout:
    """How a collection's documents are written, from its indexes: one column per indexed field."""

    indexes: tuple[Index, ...]
    columns: dict[str, str]  # field -> its quoted column
    insert_sql: str
    update_sql: str

    @classmethod
    def of(cls, collection: str, indexes: Iterable[Index]) -> _Layout:
        indexes = tuple(indexes)
        columns = {field: _column(field) for index in indexes for field in index.fields}
        table = _quote(_TABLE_PREFIX + collection)
        names = ", ".join(["doc", *columns.values()])
        marks = ", ".join("?" * (len(columns) + 1))
        assignments = ", ".join(["doc = ?", *(f"{column} = ?" for column in columns.values())])
        return cls(indexes, columns, f"INSERT INTO {table} ({names}) VALUES ({marks})",
                   f"UPDATE {table} SET {assignments} WHERE rowid = ?")


class Collection:
    """The synchronous pymongo Collection methods Goalrail's repositories use."""

    def __init__(self, database: Database, name: str) -> None:
        self.database = database
        self.name = name
        self._table = _quote(_TABLE_PREFIX + name)

    # --- reads ---------------------------------------------------------------------------------

    def find(self, filter: Mapping[str, Any] | None = None, projection: Any = None, skip: int = 0,
             limit: int = 0, sort: Any = None, **options: Any) -> Cursor:
        _refuse(options)
        if projection is not None:
            raise NotImplementedError("docstore: projection")
        return Cursor(self, dict(filter or {}), _sort_keys(sort), skip, limit)

    def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        if filter is not None and not isinstance(filter, Mapping):
            filter = {"_id": filter}
        return next(iter(self.find(filter, *args, **kwargs).limit(1)), None)

    def count_documents(self, filter: Mapping[str, Any], skip: int = 0, limit: int = 0, **options: Any) -> int:
        _refuse(options)
        with self.database._reading() as connection:
            if self.name not in self.database._indexes:
                return 0
            if not filter:
                total = connection.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0]
                return max(0, min(total - skip, limit) if limit else total - skip)
            return len(self._matching(connection, filter, skip=skip, limit=limit))

    def distinct(self, key: str, filter: Mapping[str, Any] | None = None, **options: Any) -> list[Any]:
        _refuse(options)
        values: list[Any] = []
        with self.database._reading() as connection:
            if self.name in self.database._indexes:
                for _, document, _ in self._matching(connection, filter or {}):
                    value = _get_path(document, key)
                    for item in value if isinstance(value, list) else [value]:
                        if item is not _MISSING and item not in values:
                            values.append(item)
        return values

    def index_information(self) -> dict[str, dict[str, Any]]:
        with self.database._reading():
            return {index.name: {"key": list(index.keys), **({"unique": True} if index.unique else {})}
                    for index in self.database._indexes.get(self.name, [])}

    def query_plan(self, filter: Mapping[str, Any], sort: Any = None) -> list[str]:
        """SQLite's EXPLAIN QUERY PLAN of the candidate query for `filter` (tests, debugging)."""
        with self.database._reading() as connection:
            if self.name not in self.database._indexes:
                return []
            sql, params = self._select_sql(_normalize(filter), self._order_by(_sort_keys(sort)) or "")
            return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]

    # --- writes --------------------------------------------------------------------------------

    def insert_one(self, document: dict[str, Any], **options: Any) -> InsertOneResult:
        _refuse(options)
        if "_id" not in document:
            document["_id"] = ObjectId()  # as pymongo: the caller's document learns its _id
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            self._insert(connection, document)
        return InsertOneResult(document["_id"], True)

    def insert_many(self, documents: Iterable[dict[str, Any]], ordered: bool = True,
                    **options: Any) -> InsertManyResult:
        """All in one transaction; a duplicate stops an ordered insert there (the documents before
        it stay inserted) and raises BulkWriteError, as MongoDB does."""
        _refuse(options)
        documents = list(documents)
        errors: list[dict[str, Any]] = []
        inserted = 0
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            for number, document in enumerate(documents):
                if "_id" not in document:
                    document["_id"] = ObjectId()
                try:
                    self._insert(connection, document)
                    inserted += 1
                except DuplicateKeyError as error:
                    errors.append({"index": number, "code": 11000, "errmsg": str(error), "op": document})
                    if ordered:
                        break
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": inserted, "writeConcernErrors": [],
                                  "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0, "upserted": []})
        return InsertManyResult([d["_id"] for d in documents], True)

    def update_one(self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False,
                   **options: Any) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=False, options=options)

    def update_many(self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False,
                    **options: Any) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=True, options=options)

    def replace_one(self, filter: Mapping[str, Any], replacement: Mapping[str, Any], upsert: bool = False,
                    **options: Any) -> UpdateResult:
        _refuse(options)
        if any(str(key).startswith("$") for key in replacement):
            raise ValueError("replacement can not include $ operators")
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            for rowid, old, raw in self._matching(connection, filter, limit=1):
                new = {"_id": old["_id"], **replacement}
                _keep_id(old, new)
                changed = self._rewrite(connection, rowid, new, raw)
                return UpdateResult({"n": 1, "nModified": int(changed)}, True)
            if not upsert:
                return UpdateResult({"n": 0, "nModified": 0}, True)
            new = _with_id(dict(replacement), _upsert_seed(filter).get("_id", _MISSING))
            self._insert(connection, new)
            return UpdateResult({"n": 1, "nModified": 0, "upserted": new["_id"]}, True)

    def find_one_and_update(self, filter: Mapping[str, Any], update: Mapping[str, Any], projection: Any = None,
                            sort: Any = None, upsert: bool = False,
                            return_document: bool = ReturnDocument.BEFORE, **options: Any) -> dict[str, Any] | None:
        _refuse(options)
        if projection is not None:
            raise NotImplementedError("docstore: projection")
        _check_update(update)
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            for rowid, old, raw in self._matching(connection, filter, _sort_keys(sort), limit=1):
                new = _apply_update(old, update, inserting=False)
                self._rewrite(connection, rowid, new, raw)
                return _decode(bson.encode(new)) if return_document else old
            if not upsert:
                return None
            new = self._upsert(connection, filter, update)
            return _decode(bson.encode(new)) if return_document else None

    def delete_one(self, filter: Mapping[str, Any], **options: Any) -> DeleteResult:
        return self._delete(filter, many=False, options=options)

    def delete_many(self, filter: Mapping[str, Any], **options: Any) -> DeleteResult:
        return self._delete(filter, many=True, options=options)

    def create_index(self, keys: Any, unique: bool = False, name: str | None = None, **options: Any) -> str:
        """Add the index's columns (filled from the stored documents) and its SQLite index; an
        index already made, by any process, is left as it is."""
        _refuse(options)
        index_keys = _index_keys(keys)
        index = Index(name or "_".join(f"{field}_{direction}" for field, direction in index_keys), index_keys,
                      bool(unique))
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            existing = {i.name: i for i in self.database._indexes[self.name]}
            if index.name in existing:
                if existing[index.name] != index:
                    raise OperationFailure(f"an index named {index.name} exists with other keys or options", 85)
                return index.name
            new_fields = [f for f in dict.fromkeys(index.fields) if f not in self._columns()]
            for field in new_fields:
                connection.execute(f"ALTER TABLE {self._table} ADD COLUMN {_column(field)}")
            if new_fields:
                self._backfill(connection, new_fields)
            if index.unique:
                self._refuse_existing_duplicates(connection, index)
            _create_sql_index(connection, self.name, index)
            connection.execute(f"INSERT INTO {_META} VALUES (?, ?, ?, ?)",
                               (self.name, index.name, json.dumps(index.keys), int(index.unique)))
            self.database._add_index(self.name, index)
        return index.name

    # --- the query path ------------------------------------------------------------------------

    def _columns(self) -> dict[str, str]:
        """Field -> SQL column, for every field some index of this collection covers."""
        return self.database._layout(self.name).columns

    def _select_sql(self, filter: Mapping[str, Any], order_by: str) -> tuple[str, list[Any]]:
        narrowed = _where(filter, self._columns())
        where, params = narrowed if narrowed else ("1", [])
        return f"SELECT rowid, doc FROM {self._table} WHERE {where} {order_by}", params

    def _matching(self, connection: sqlite3.Connection, filter: Mapping[str, Any],
                  sort: list[tuple[str, int]] | None = None, skip: int = 0,
                  limit: int = 0) -> list[_Match]:
        """(rowid, document, stored BSON) of the matching documents, in `sort` order. With an SQL order (or
        none) the candidates stream and reading stops at `limit`; else all matches are sorted."""
        order_by = self._order_by(sort)
        matches = self._candidates(connection, _normalize(filter), order_by or "")
        try:
            if sort and order_by is None:
                return _sorted(list(matches), sort)[skip:skip + limit if limit else None]
            return list(itertools.islice(matches, skip, skip + limit if limit else None))
        finally:
            matches.close()  # closes the SQL cursor: an open one would pin a WAL snapshot

    def _candidates(self, connection: sqlite3.Connection, filter: Mapping[str, Any],
                    order_by: str) -> Iterator[_Match]:
        sql, params = self._select_sql(filter, order_by)
        cursor = connection.execute(sql, params)
        try:
            for rowid, raw in cursor:
                document = _decode(raw)
                self.database.documents_examined[self.name] += 1
                matched = _plainly_matches(filter, document)
                if matched or (matched is None and filter_applies(filter, document)):
                    yield rowid, document, raw
        finally:
            cursor.close()

    def _order_by(self, sort: list[tuple[str, int]] | None) -> str | None:
        """ORDER BY over index columns, or None when some sort field has no column."""
        if not sort:
            return ""
        columns = self._columns()
        if any(field not in columns for field, _ in sort):
            return None
        return "ORDER BY " + ", ".join(f"{columns[f]} {'DESC' if d < 0 else 'ASC'}" for f, d in sort)

    def _find(self, filter: Mapping[str, Any], sort: list[tuple[str, int]] | None, skip: int,
              limit: int) -> list[dict[str, Any]]:
        with self.database._reading() as connection:
            if self.name not in self.database._indexes:
                return []
            return [document for _, document, _ in self._matching(connection, filter, sort, skip, limit)]

    # --- the write path ------------------------------------------------------------------------

    def _keys(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return {field: _index_value(field, _get_path(document, field)) for field in self._columns()}

    def _insert(self, connection: sqlite3.Connection, document: Mapping[str, Any]) -> None:
        raw = bson.encode(document)
        keys = self._keys(document)
        if None in keys.values():
            self._check_unique(connection, keys, rowid=None, only_nulls=True)
        try:
            connection.execute(self.database._layout(self.name).insert_sql, [raw, *keys.values()])
        except sqlite3.IntegrityError:
            self._check_unique(connection, keys, rowid=None, only_nulls=False)
            raise

    def _rewrite(self, connection: sqlite3.Connection, rowid: int, new: Mapping[str, Any],
                 old_raw: bytes) -> bool:
        """Store `new` in place of the document stored as `old_raw`; False (and nothing written)
        when it is the same document."""
        raw = bson.encode(new)
        if raw == old_raw:
            return False
        keys = self._keys(new)
        if None in keys.values():
            self._check_unique(connection, keys, rowid=rowid, only_nulls=True)
        try:
            connection.execute(self.database._layout(self.name).update_sql, [raw, *keys.values(), rowid])
        except sqlite3.IntegrityError:
            self._check_unique(connection, keys, rowid=rowid, only_nulls=False)
            raise
        return True

    def _check_unique(self, connection: sqlite3.Connection, keys: Mapping[str, Any], rowid: int | None,
                      only_nulls: bool) -> None:
        """Raise DuplicateKeyError when another document has this key in a unique index. SQLite lets
        NULLs repeat in a UNIQUE index and MongoDB does not (a missing field is null there), so keys
        with a null are always checked here; the others only to name the index SQLite refused."""
        columns = self._columns()
        for index in self.database._layout(self.name).indexes:
            values = [keys[f] for f in index.fields]
            if not index.unique or (only_nulls and None not in values):
                continue
            condition = " AND ".join(f"{columns[f]} IS ?" for f in index.fields)
            clash = connection.execute(f"SELECT 1 FROM {self._table} WHERE {condition} AND rowid IS NOT ? LIMIT 1",
                                       [*values, rowid]).fetchone()
            if clash:
                key = {f: keys[f] for f in index.fields}
                message = (f"E11000 duplicate key error collection: {self.database.name}.{self.name} "
                           f"index: {index.name} dup key: {key}")
                raise DuplicateKeyError(message, 11000, {"code": 11000, "errmsg": message, "keyValue": key,
                                                         "keyPattern": dict(index.keys)})

    def _update(self, filter: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool, many: bool,
                options: dict[str, Any]) -> UpdateResult:
        _refuse(options)
        _check_update(update)
        matched = modified = 0
        with self.database._writing() as connection:
            self.database._ensure_collection(connection, self.name)
            # all read before the first rewrite: a cursor walking rows being rewritten could revisit them
            for rowid, old, raw in self._matching(connection, filter, limit=0 if many else 1):
                matched += 1
                modified += self._rewrite(connection, rowid, _apply_update(old, update, inserting=False), raw)
            if matched or not upsert:
                return UpdateResult({"n": matched, "nModified": modified}, True)
            new = self._upsert(connection, filter, update)
            return UpdateResult({"n": 1, "nModified": 0, "upserted": new["_id"]}, True)

    def _upsert(self, connection: sqlite3.Connection, filter: Mapping[str, Any],
                update: Mapping[str, Any]) -> dict[str, Any]:
        new = _with_id(_apply_update(_upsert_seed(filter), update, inserting=True))
        self._insert(connection, new)
        return new

    def _delete(self, filter: Mapping[str, Any], many: bool, options: dict[str, Any]) -> DeleteResult:
        _refuse(options)
        with self.database._writing() as connection:
            if self.name not in self.database._indexes:
                return DeleteResult({"n": 0}, True)
            rowids = [rowid for rowid, _, _ in self._matching(connection, filter, limit=0 if many else 1)]
            connection.executemany(f"DELETE FROM {self._table} WHERE rowid = ?", [(r,) for r in rowids])
        return DeleteResult({"n": len(rowids)}, True)

    def _backfill(self, connection: sqlite3.Connection, fields: list[str]) -> None:
        columns = self._columns() | {f: _column(f) for f in fields}
        assignments = ", ".join(f"{columns[f]} = ?" for f in fields)
        rows = connection.execute(f"SELECT rowid, doc FROM {self._table}").fetchall()
        connection.executemany(
            f"UPDATE {self._table} SET {assignments} WHERE rowid = ?",
            [[*(_index_value(f, _get_path(_decode(raw), f)) for f in fields), rowid] for rowid, raw in rows])

    def _refuse_existing_duplicates(self, connection: sqlite3.Connection, index: Index) -> None:
        # GROUP BY puts NULLs together, as MongoDB's unique indexes do
        columns = ", ".join(_column(f) for f in index.fields)
        clash = connection.execute(f"SELECT {columns} FROM {self._table} GROUP BY {columns} HAVING count(*) > 1 "
                                   "LIMIT 1").fetchone()
        if clash:
            key = dict(zip(index.fields, clash))
            raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.database.name}.{self.name} "
                                    f"index: {index.name} dup key: {key}", 11000)


class Cursor:
    """A lazy find(): runs when iterated."""

    def __init__(self, collection: Collection, filter: dict[str, Any], sort: list[tuple[str, int]] | None,
                 skip: int, limit: int) -> None:
        self._collection = collection
        self._filter = filter
        self._sort = sort
        self._skip = skip
        self._limit = abs(limit)

    def sort(self, key_or_list: Any, direction: int | None = None) -> Cursor:
        self._sort = _sort_keys(key_or_list if direction is None else [(key_or_list, direction)])
        return self

    def limit(self, limit: int) -> Cursor:
        self._limit = abs(limit)
        return self

    def skip(self, skip: int) -> Cursor:
        self._skip = skip
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._collection._find(self._filter, self._sort, self._skip, self._limit))


# --- index values: how a field's value is kept in an SQL column ----------------------------------

# SQLite orders NULL < numbers < text < blobs. Nulls, numbers and strings are stored as they are
# (1 and 1.0 compare equal, as in MongoDB); other types become blobs that start with a tag in
# MongoDB's order of types, so an SQL ORDER BY sorts across types as MongoDB does.
_TAG_OBJECT, _TAG_BINARY, _TAG_OBJECT_ID, _TAG_BOOL, _TAG_DATE, _TAG_TIMESTAMP, _TAG_REGEX, _TAG_OTHER = (
    20, 30, 35, 40, 45, 47, 50, 60)
_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


_Match = tuple[int, dict[str, Any], bytes]  # rowid, document, the document as stored


def _plainly_matches(filter: Mapping[str, Any], document: Mapping[str, Any]) -> bool | None:
    """Whether `document` matches a filter of plain equalities on top-level fields whose stored
    values are strings, numbers or booleans of the same kind (a goal by id and version, say);
    None when the filter or the values need MongoDB's full rules (mongomock decides then).
    Saves the filter machinery on the store's most frequent question."""
    for field, wanted in filter.items():
        kind = _PLAIN_KINDS.get(type(wanted))
        if kind is None or "." in field or field.startswith("$"):
            return None
        stored = document.get(field, _MISSING)
        if _PLAIN_KINDS.get(type(stored)) != kind:
            return None  # missing, null, an array, a document, or another type: the full rules
        if stored != wanted:
            return None if stored != stored or wanted != wanted else False  # NaN matches NaN in MongoDB
    return True


# bool apart from numbers: MongoDB never finds true by 1; int and float compare as numbers
_PLAIN_KINDS: dict[type, str] = {str: "string", int: "number", float: "number", bool: "bool"}


class _Unusable(Exception):
    """A query value the indexes cannot narrow on (the filter alone decides)."""


def _index_value(field: str, value: Any) -> Any:
    if isinstance(value, list):
        raise NotImplementedError(f"docstore: field {field!r} is indexed and holds an array (multikey indexes)")
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool):
        return bytes([_TAG_BOOL, value])
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) else value  # SQLite keeps NaN as NULL anyway
    if isinstance(value, Decimal128):
        number = float(value.to_decimal())
        return None if math.isnan(number) else number
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return bytes([_TAG_DATE]) + (_millis(value) + 2**63).to_bytes(8, "big")
    if isinstance(value, ObjectId):
        return bytes([_TAG_OBJECT_ID]) + value.binary
    tag = {dict: _TAG_OBJECT, bytes: _TAG_BINARY, bson.Binary: _TAG_BINARY, bson.Timestamp: _TAG_TIMESTAMP,
           bson.Regex: _TAG_REGEX}.get(type(value), _TAG_OBJECT if isinstance(value, Mapping) else _TAG_OTHER)
    return bytes([tag]) + bson.encode({"": value})


def _query_value(value: Any) -> Any:
    """The column value a document equal to `value` holds; _Unusable for values whose MongoDB
    equality is not the column's (subdocuments, arrays, regexes…)."""
    if value is None or isinstance(value, (bool, int, str, dt.datetime, ObjectId)):
        return _index_value("", value)
    if isinstance(value, float) and not math.isnan(value):
        return value
    raise _Unusable


def _type_bracket(key: Any) -> tuple[Any, Any]:
    """Column values of the same MongoDB type as `key` lie in [low, high) (low None: from NULL)."""
    if isinstance(key, (int, float)):
        return None, ""
    if isinstance(key, str):
        return "", b""
    return key[:1], bytes([key[0] + 1])


def _millis(value: dt.datetime) -> int:
    """Milliseconds since the epoch, as BSON stores a datetime (naive ones are UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return (value - dt.datetime(1970, 1, 1)) // dt.timedelta(milliseconds=1)


# --- filters: what SQL can narrow, and normalizing what Python compares ---------------------------


def _where(filter: Mapping[str, Any], columns: Mapping[str, str]) -> tuple[str, list[Any]] | None:
    """An SQL condition every document matching `filter` meets, over the index columns; None when
    no indexed predicate narrows it. It may let through more than match: the filter runs after."""
    terms: list[str] = []
    params: list[Any] = []
    for field, condition in filter.items():
        if field == "$and" and isinstance(condition, list):
            parts = [p for p in (_where(c, columns) for c in condition) if p]
        elif field == "$or" and isinstance(condition, list) and condition:
            branches = [_where(c, columns) for c in condition]
            if not all(branches):
                continue  # a branch no index narrows may match any document: so may the $or
            narrowed = [branch for branch in branches if branch]
            parts = [("(" + " OR ".join(f"({sql})" for sql, _ in narrowed) + ")",
                      [value for _, values in narrowed for value in values])]
        elif field in columns:
            parts = _field_terms(columns[field], condition)
        else:
            continue
        for sql, values in parts:
            terms.append(sql)
            params.extend(values)
    return (" AND ".join(terms), params) if terms else None


def _field_terms(column: str, condition: Any) -> list[tuple[str, list[Any]]]:
    is_operators = isinstance(condition, Mapping) and condition and all(str(k).startswith("$") for k in condition)
    terms: list[tuple[str, list[Any]]] = []
    for operator, operand in (condition.items() if is_operators else [("$eq", condition)]):
        try:
            if operator == "$eq":
                key = _query_value(operand)
                terms.append((f"{column} IS NULL", []) if key is None else (f"{column} = ?", [key]))
            elif operator == "$in" and isinstance(operand, (list, tuple)):
                keys = [_query_value(v) for v in operand]
                present = [k for k in keys if k is not None]
                alternatives = [f"{column} IN ({', '.join('?' * len(present))})"] if present else []
                if len(present) < len(keys):
                    alternatives.append(f"{column} IS NULL")
                terms.append(("(" + (" OR ".join(alternatives) or "0") + ")", present))
            elif operator in ("$gt", "$gte", "$lt", "$lte") and operand is not None:
                key = _query_value(operand)
                low, high = _type_bracket(key)
                # non-strict bounds: a superset is enough, the filter decides the edges
                if operator in ("$gt", "$gte"):
                    terms.append((f"{column} >= ? AND {column} < ?", [key, high]))
                elif low is None:
                    terms.append((f"{column} <= ?", [key]))
                else:
                    terms.append((f"{column} <= ? AND {column} >= ?", [key, low]))
        except _Unusable:
            continue
    return terms


def _normalize(value: Any) -> Any:
    """Query values as a stored document holds them: datetimes aware, in UTC, to the millisecond
    (so comparing with stored ones neither fails on naive datetimes nor differs from MongoDB)."""
    if isinstance(value, dt.datetime):
        millis = _millis(value)
        return dt.datetime(1970, 1, 1, tzinfo=utc) + dt.timedelta(milliseconds=millis)
    if isinstance(value, Mapping):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    return value


def _sorted(matches: list[_Match], sort: list[tuple[str, int]]) -> list[_Match]:
    for field, direction in reversed(sort):  # stable sorts, last key first
        matches.sort(key=lambda match: resolve_sort_key(field, match[1]), reverse=direction < 0)
    return matches


# --- updates ---------------------------------------------------------------------------------


def _check_update(update: Mapping[str, Any]) -> None:
    if not update or not all(str(key).startswith("$") for key in update):
        raise ValueError("update only works with $ operators")


def _apply_update(document: Mapping[str, Any], update: Mapping[str, Any], inserting: bool) -> dict[str, Any]:
    new = copy.deepcopy(dict(document))
    for operator, changes in update.items():
        if operator == "$setOnInsert" and not inserting:
            continue
        apply = _UPDATE_OPERATORS.get(operator)
        if apply is None:
            raise NotImplementedError(f"docstore: update operator {operator}")
        for path, value in changes.items():
            apply(new, path, copy.deepcopy(value))
    _keep_id(document, new)
    return new


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    parent, key = _parent(document, path, create=True)
    if isinstance(parent, list):
        parent.extend([None] * (int(key) + 1 - len(parent)))
        parent[int(key)] = value
    else:
        parent[key] = value


def _unset(document: dict[str, Any], path: str, _: Any) -> None:
    parent, key = _parent(document, path, create=False)
    if isinstance(parent, dict):
        parent.pop(key, None)
    elif isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        parent[int(key)] = None  # as MongoDB: $unset of an array element leaves a null


def _inc(document: dict[str, Any], path: str, amount: Any) -> None:
    current = _get_path(document, path)
    if not _is_number(amount) or (current is not _MISSING and not _is_number(current)):
        raise WriteError(f"Cannot apply $inc to {path!r}: both must be numbers", 14)
    _set(document, path, amount if current is _MISSING else current + amount)


def _push(document: dict[str, Any], path: str, value: Any, unique: bool = False) -> None:
    current = _get_path(document, path)
    if current is _MISSING:
        current = []
    elif not isinstance(current, list):
        raise WriteError(f"The field {path!r} must be an array", 2)
    if isinstance(value, Mapping) and "$each" in value:
        if set(value) - {"$each"}:
            raise NotImplementedError(f"docstore: {sorted(set(value) - {'$each'})} in $push/$addToSet")
        items = list(value["$each"])
    else:
        items = [value]
    for item in items:
        if not unique or item not in current:
            current.append(item)
    _set(document, path, current)


_UPDATE_OPERATORS: dict[str, Callable[[dict[str, Any], str, Any], None]] = {
    "$set": _set,
    "$setOnInsert": _set,
    "$unset": _unset,
    "$inc": _inc,
    "$push": _push,
    "$addToSet": lambda document, path, value: _push(document, path, value, unique=True),
}


def _keep_id(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    if "_id" in old and bson.encode({"": new.get("_id")}) != bson.encode({"": old["_id"]}):
        raise WriteError("Performing an update on the path '_id' would modify the immutable field '_id'", 66)


def _with_id(document: dict[str, Any], default: Any = _MISSING) -> dict[str, Any]:
    """`document` with its _id first (MongoDB's order): its own, else `default`, else a new one."""
    identifier = document.pop("_id", default)
    return {"_id": ObjectId() if identifier is _MISSING else identifier, **document}


def _upsert_seed(filter: Mapping[str, Any]) -> dict[str, Any]:
    """The document an upsert starts from: the filter's equality conditions."""
    seed: dict[str, Any] = {}
    for field, condition in filter.items():
        if field == "$and":
            for part in condition:
                seed.update(_upsert_seed(part))
        elif str(field).startswith("$"):
            continue
        elif isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            if "$eq" in condition:
                _set(seed, field, copy.deepcopy(condition["$eq"]))
        else:
            _set(seed, field, copy.deepcopy(condition))
    return seed


# --- small helpers ---------------------------------------------------------------------------


def _get_path(document: Any, path: str) -> Any:
    """The value at a dotted path, _MISSING when there is none; walking into an array of
    subdocuments gives their values as a list (an indexed path then refuses it)."""
    value = document
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list):
            if part.isdigit():
                value = value[int(part)] if int(part) < len(value) else _MISSING
            else:
                values = [_get_path(item, part) for item in value if isinstance(item, Mapping)]
                value = [v for v in values if v is not _MISSING]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _parent(document: dict[str, Any], path: str, create: bool) -> tuple[Any, str]:
    parts = path.split(".")
    node: Any = document
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)] if int(part) < len(node) else None
        elif isinstance(node, dict):
            if part not in node and create:
                node[part] = {}
            node = node.get(part)
        else:
            node = None
        if node is None:
            if create:
                raise WriteError(f"Cannot create field in element {{{part}: null}} for path {path!r}", 28)
            return None, parts[-1]
    return node, parts[-1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool)


def _index_keys(keys: Any) -> tuple[tuple[str, int], ...]:
    pairs = [(keys, 1)] if isinstance(keys, str) else list(keys.items() if isinstance(keys, Mapping) else keys)
    for field, direction in pairs:
        if direction not in (1, -1):
            raise NotImplementedError(f"docstore: index type {direction!r} on {field!r}")
    return tuple((str(field), int(direction)) for field, direction in pairs)


def _sort_keys(sort: Any) -> list[tuple[str, int]] | None:
    if not sort:
        return None
    if isinstance(sort, str):
        return [(sort, 1)]
    return [(str(f), int(d)) for f, d in (sort.items() if isinstance(sort, Mapping) else sort)]


def _refuse(options: Mapping[str, Any]) -> None:
    unsupported = set(options) - _HARMLESS_OPTIONS
    if unsupported:
        raise NotImplementedError(f"docstore: options {sorted(unsupported)}")


def _decode(raw: bytes) -> dict[str, Any]:
    return bson.decode(raw, CODEC)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _column(field: str) -> str:
    return _quote(f"key:{field}")


def _create_sql_index(connection: sqlite3.Connection, collection: str, index: Index) -> None:
    columns = ", ".join(f"{_column(f)} {'DESC' if d < 0 else 'ASC'}" for f, d in index.keys)
    connection.execute(f"CREATE {'UNIQUE ' if index.unique else ''}INDEX IF NOT EXISTS "
                       f"{_quote(f'index:{collection}:{index.name}')} ON {_quote(_TABLE_PREFIX + collection)} ({columns})")


def _enable_wal(connection: sqlite3.Connection) -> None:
    """WAL is a property of the file; switching needs a moment alone with it, which a process
    opening the store at the same time as another may not get at once."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
