"""Data boundaries: which tools, tool sources and data classes a goal type may ground on, and
which personal data may leave for a model or a web-facing tool.

A *goal type* is where a goal's plan came from (`Plan.source`: `playbook:<name>`,
`model:<model>`). The tool policy (`shared/config/tool_policy.yaml`, `goal_types:`) gives goal
types a boundary; the planner refuses a plan that leaves it, the executor refuses the call, and
the auditor flags any event that breaks it. Pure: no I/O.

Personal data: before a model call the executor sends only the kinds the bound model (and every
fallback) is cleared for in the routing table; before a call to a web-facing tool (OpenAPI, MCP)
only the kinds the tool's `data_classes` clear. Everything else is redacted as
`[REDACTED:<kind>]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import ErrorCode, Plan, Step, TypedError
from shared.governance.pii import find_in_value, redact_value
from shared.models.routing_table import RoutingTable
from shared.tools.registry import ToolSpec

ANY_GOAL_TYPE = "*"
WEB_FACING_SOURCES = ("openapi:", "mcp:")
"""Tool sources whose calls leave the process for another system over the network."""


class GoalTypeBoundary(BaseModel):
    """What one goal type may ground on. Unset = not restricted by the goal type."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] | None = Field(None, description="Tool names (globs, `sales.*`) its steps may call.")
    sources: list[str] | None = Field(
        None, description="Tool sources (globs: python, openapi:<name>, mcp:<name>) its tools may come from."
    )
    data_classes: list[str] | None = Field(
        None, description="Data classes its tools and steps may touch (e.g. public, internal, pii)."
    )

    @field_validator("tools", "sources", "data_classes")
    @classmethod
    def _names(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        for value in values:
            if not value.strip():
                raise ValueError("entries must be non-empty names")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"{duplicates} listed twice")
        return values


def boundary_for(
    goal_types: Mapping[str, GoalTypeBoundary], goal_type: str | None
) -> tuple[str, GoalTypeBoundary] | None:
    """The boundary (and its key) of a goal type: its exact entry, else the first glob that
    matches (`playbook:*`), else `*`; None when none applies."""
    if goal_type is None:
        return None
    if goal_type in goal_types:
        return goal_type, goal_types[goal_type]
    for key, boundary in goal_types.items():
        if key != ANY_GOAL_TYPE and fnmatchcase(goal_type, key):
            return key, boundary
    if ANY_GOAL_TYPE in goal_types:
        return ANY_GOAL_TYPE, goal_types[ANY_GOAL_TYPE]
    return None


def tool_boundary_error(
    goal_types: Mapping[str, GoalTypeBoundary], spec: ToolSpec, goal_type: str | None
) -> TypedError | None:
    """PERMISSION_DENIED when the goal type may not ground on this tool, its source or its data
    classes; None when it may (or no boundary applies)."""
    found = boundary_for(goal_types, goal_type)
    if found is None:
        return None
    key, boundary = found
    base: dict[str, Any] = {"tool": spec.name, "goal_type": goal_type, "boundary": key}
    hint = f"add it to goal type {key!r} in the tool policy (goal_types), or plan without it"
    if boundary.tools is not None and not any(fnmatchcase(spec.name, p) for p in boundary.tools):
        return _outside(f"tool {spec.name!r} is outside the data boundary of goal type {goal_type!r}",
                        {**base, "allowed_tools": boundary.tools}, hint)
    if boundary.sources is not None and not any(fnmatchcase(spec.source, p) for p in boundary.sources):
        return _outside(f"tool {spec.name!r} comes from source {spec.source!r}, outside the data boundary of "
                        f"goal type {goal_type!r}", {**base, "source": spec.source, "allowed_sources": boundary.sources},
                        hint)
    if boundary.data_classes is not None:
        forbidden = sorted(set(spec.data_classes) - set(boundary.data_classes))
        if forbidden:
            return _outside(f"tool {spec.name!r} touches data classes {forbidden}, outside the data boundary of "
                            f"goal type {goal_type!r}", {**base, "data_classes": forbidden,
                                                         "allowed_data_classes": boundary.data_classes}, hint)
    return None


def step_boundary_error(
    goal_types: Mapping[str, GoalTypeBoundary], step: Step, goal_type: str | None
) -> TypedError | None:
    """PERMISSION_DENIED when a step declares data classes its goal type may not touch."""
    found = boundary_for(goal_types, goal_type)
    if found is None or found[1].data_classes is None:
        return None
    key, boundary = found
    forbidden = sorted(set(step.data_classes) - set(boundary.data_classes or ()))
    if not forbidden:
        return None
    return _outside(
        f"step {step.id!r} declares data classes {forbidden}, outside the data boundary of goal type {goal_type!r}",
        {"step_id": step.id, "goal_type": goal_type, "boundary": key, "data_classes": forbidden,
         "allowed_data_classes": boundary.data_classes},
        f"add the classes to goal type {key!r} in the tool policy, or keep the step to its boundary",
    )


def plan_boundary_problems(
    goal_types: Mapping[str, GoalTypeBoundary], steps: Iterable[Step], tools: Mapping[str, ToolSpec],
    goal_type: str | None,
) -> list[TypedError]:
    """Every step of a plan that leaves its goal type's boundary (unknown tools are another
    check's business)."""
    errors: list[TypedError] = []
    for step in steps:
        error = step_boundary_error(goal_types, step, goal_type)
        if error is None and step.tool is not None and step.tool in tools:
            error = tool_boundary_error(goal_types, tools[step.tool], goal_type)
        if error is not None:
            errors.append(error.model_copy(update={"details": {**error.details, "step_id": step.id}}))
    return errors


def _outside(message: str, details: dict[str, Any], hint: str) -> TypedError:
    return TypedError(code=ErrorCode.PERMISSION_DENIED, message=message,
                      details={**details, "reason": "data_boundary", "hint": hint})


# --- personal data on its way out ----------------------------------------------------------


def is_web_facing(spec: ToolSpec) -> bool:
    """A tool whose call sends its input to another system (an HTTP API, an MCP server)."""
    return spec.source.startswith(WEB_FACING_SOURCES)


def cleared_classes(models: Iterable[str], clearances: Mapping[str, Iterable[str] | None]) -> list[str]:
    """The data classes every one of `models` (a binding's model and its fallbacks, any of which
    may answer) is cleared for; a model the table does not know is cleared for nothing."""
    common: set[str] | None = None
    for model in models:
        classes = set(clearances.get(model) or ())
        common = classes if common is None else common & classes
    return sorted(common or ())


def redact_outgoing(value: Any, allowed_classes: Iterable[str]) -> tuple[Any, list[str]]:
    """`value` with every kind of personal data not in `allowed_classes` redacted, and where
    (`$.path: kind`) something was."""
    allowed = list(allowed_classes)
    found = find_in_value(value, allowed)
    if not found:
        return value, []
    return redact_value(value, allowed), sorted({f"{path}: {finding.kind}" for path, finding in found})


@dataclass(frozen=True)
class PlanBoundary:
    """The planner's check of a whole plan against its goal type's boundary (the plan's source)."""

    goal_types: Mapping[str, GoalTypeBoundary]
    tools: Mapping[str, ToolSpec]

    def error(self, plan: Plan) -> TypedError | None:
        """One PERMISSION_DENIED naming every step outside the boundary, or None."""
        problems = plan_boundary_problems(self.goal_types, plan.steps, self.tools, plan.source)
        if not problems:
            return None
        return TypedError(
            code=ErrorCode.PERMISSION_DENIED,
            message=f"plan {plan.source} leaves its data boundary: " + "; ".join(p.message for p in problems),
            details={"goal_type": plan.source, "reason": "data_boundary",
                     "problems": [p.details | {"message": p.message} for p in problems]},
        )


def model_clearances(table: RoutingTable) -> dict[str, list[str]]:
    """Model -> the data classes the routing table clears it for; a model listed under several
    task types gets only what every listing clears."""
    cleared: dict[str, set[str]] = {}
    for route in (*table.task_types.values(), table.default):
        for candidate in route.candidates:
            classes = set(candidate.data_classes or ())
            cleared[candidate.model] = cleared[candidate.model] & classes if candidate.model in cleared else classes
    return {model: sorted(classes) for model, classes in cleared.items()}
