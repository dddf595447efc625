"""Router domain: the routing table and the choice of a binding for a step. Pure: no I/O."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from shared.events import Binding, ErrorCode, Step, TypedError


class Candidate(BaseModel):
    model: str = Field(min_length=3, description="Any litellm model string, e.g. openai/gpt-4o-mini.")
    max_cost_usd: float | None = Field(None, ge=0)
    max_latency_s: float | None = Field(None, gt=0)
    max_context_tokens: int | None = Field(None, gt=0)
    data_classes: list[str] = Field(default_factory=lambda: ["public", "internal"])


class Route(BaseModel):
    candidates: list[Candidate] = Field(min_length=1)


class RoutingTable(BaseModel):
    version: int = 1
    default: Route
    task_types: dict[str, Route] = Field(default_factory=dict)

    def route(self, task_type: str) -> Route:
        return self.task_types.get(task_type, self.default)


class RoutingError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


def load_routing_table(path: Path) -> RoutingTable:
    try:
        return RoutingTable.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError, OSError) as exc:
        raise ValueError(f"routing table {path} is invalid: {exc}") from exc


def choose(step: Step, table: RoutingTable) -> Binding:
    """Tool steps run their tool; model steps get the first candidate cleared for the step's
    data classes, with the other cleared candidates as fallbacks."""
    if step.tool is not None:
        return Binding(kind="tool", tool=step.tool, reason=f"step names tool {step.tool}")
    route = table.route(step.task_type)
    needed = set(step.data_classes)
    cleared = [c for c in route.candidates if needed <= set(c.data_classes)]
    if not cleared:
        raise RoutingError(
            TypedError(
                code=ErrorCode.POLICY_VIOLATION,
                message=f"no model for task type {step.task_type!r} may receive data classes {sorted(needed)}",
                details={"task_type": step.task_type, "data_classes": sorted(needed),
                         "candidates": [c.model for c in route.candidates]},
            )
        )
    chosen, *fallbacks = cleared
    source = "task type" if step.task_type in table.task_types else "default route"
    reason = f"{source} {step.task_type}: first candidate cleared for {sorted(needed) or ['no restricted data']}"
    return Binding(kind="model", model=chosen.model, fallbacks=[c.model for c in fallbacks], reason=reason)
