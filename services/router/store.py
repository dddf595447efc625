"""The router's repository: decisions (one outbox per StepReady or ApprovalDecided), steps held
for an approval, learned model statistics, spend per goal and per tenant, and which results were
already observed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from services.router.routing import ModelStats
from shared.events import Binding, StepReady
from shared.store import Collection, Database


class RouterStore:
    def __init__(self, database: Database) -> None:
        self.decisions: Collection = database["decisions"]
        self.observed: Collection = database["observed"]
        self._stats: Collection = database["model_stats"]
        self._spend: Collection = database["spend"]
        self._holds: Collection = database["holds"]

    async def init(self) -> None:
        await self.decisions.create_index("goal_id")
        await self._holds.create_index("goal_id")

    async def hold(self, approval_id: str, ready: StepReady, binding: Binding) -> None:
        """Keep a step (with its unredacted inputs) until a person decides; idempotent."""
        document = {"goal_id": ready.goal_id, "status": "pending", "ready": ready.model_dump(mode="json"),
                    "binding": binding.model_dump(mode="json"), "held_at": ready.time.timestamp()}
        await self._holds.update_one({"_id": approval_id}, {"$setOnInsert": document}, upsert=True)

    async def held(self, approval_id: str) -> dict[str, Any] | None:
        return await self._holds.find_one({"_id": approval_id})

    async def settle(self, approval_id: str, decision_id: str, status: str) -> bool:
        """Record the decision of a pending hold; True also when `decision_id` settled it before
        (a redelivery), False when another decision came first or the goal ended."""
        await self._holds.update_one({"_id": approval_id, "status": "pending"},
                                     {"$set": {"status": status, "decision_id": decision_id}})
        document = await self._holds.find_one({"_id": approval_id})
        return document is not None and document.get("decision_id") == decision_id

    async def close_holds(self, goal_id: str, before: datetime) -> int:
        """The goal ended: its steps still waiting (held before `before`) will never run."""
        pending = await self._holds.find({"goal_id": goal_id, "status": "pending"}).to_list(None)
        closed = 0
        for document in pending:
            if document.get("held_at", 0) <= before.timestamp():
                await self._holds.update_one({"_id": document["_id"], "status": "pending"},
                                             {"$set": {"status": "closed"}})
                closed += 1
        return closed

    async def stats(self, models: Iterable[str] | None = None) -> dict[str, ModelStats]:
        query = {} if models is None else {"_id": {"$in": list(models)}}
        documents = await self._stats.find(query).to_list(None)
        return {d["_id"]: ModelStats.from_document(d) for d in documents}

    async def save_stats(self, model: str, stats: ModelStats) -> None:
        await self._stats.replace_one({"_id": model}, {"_id": model, **stats.to_document()}, upsert=True)

    async def spent(self, goal_id: str, tenant: str) -> tuple[float, float]:
        """Committed spend of the goal and the tenant: charged costs plus the estimates of calls
        dispatched but not finished, so steps running in parallel cannot overrun a budget together."""
        documents = await self._spend.find({"_id": {"$in": [_goal(goal_id), _tenant(tenant)]}}).to_list(None)
        by_id = {d["_id"]: float(d.get("cost_usd", 0.0)) + max(float(d.get("reserved_usd", 0.0)), 0.0)
                 for d in documents}
        return by_id.get(_goal(goal_id), 0.0), by_id.get(_tenant(tenant), 0.0)

    async def reserve(self, goal_id: str, tenant: str, estimate_usd: float) -> None:
        await self._add(goal_id, tenant, {"reserved_usd": estimate_usd})

    async def charge(self, goal_id: str, tenant: str, cost_usd: float, release_usd: float = 0.0) -> None:
        """Charge a finished call's cost and release what its dispatch reserved."""
        await self._add(goal_id, tenant, {"cost_usd": cost_usd, "reserved_usd": -release_usd})

    async def _add(self, goal_id: str, tenant: str, amounts: dict[str, float]) -> None:
        amounts = {k: v for k, v in amounts.items() if v}
        if not amounts:
            return
        for key in (_goal(goal_id), _tenant(tenant)):
            await self._spend.update_one({"_id": key}, {"$inc": amounts}, upsert=True)


def _goal(goal_id: str) -> str:
    return f"goal:{goal_id}"


def _tenant(tenant: str) -> str:
    return f"tenant:{tenant}"
