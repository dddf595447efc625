"""Handle an event once per event id: the events it produced are stored under its id, so a
redelivered event republishes exactly what the first run published."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shared.events import EVENT_ADAPTER, Event
from shared.store import Collection, DuplicateKeyError


async def stored_outbox(collection: Collection, key: str) -> list[Event] | None:
    document = await collection.find_one({"_id": key})
    if document is None:
        return None
    return [EVENT_ADAPTER.validate_python(e) for e in document["outbox"]]


async def handle_once(
    collection: Collection,
    key: str,
    compute: Callable[[], Awaitable[Sequence[Event]]],
    extra: dict[str, Any] | None = None,
) -> list[Event]:
    """Return the stored outbox of `key`, or compute, store and return it."""
    stored = await stored_outbox(collection, key)
    if stored is not None:
        return stored
    outbox = list(await compute())
    document = {"_id": key, "outbox": [e.model_dump(mode="json") for e in outbox], **(extra or {})}
    try:
        await collection.insert_one(document)
    except DuplicateKeyError:
        # a concurrent delivery finished first: publish what it stored
        return await stored_outbox(collection, key) or []
    return outbox
