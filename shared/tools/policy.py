"""Which tools a goal may use: its tenant's scopes (a validated YAML policy) narrowed by the
goal's own `constraints.allowed_tools` and by the data boundary of its goal type (`goal_types`:
plan source -> tools, tool sources, data classes; see shared.governance.boundaries). The executor
asks this before every call, so a plan that names a forbidden tool is refused even if the planner
and router let it through."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.events import ErrorCode, TypedError
from shared.governance.boundaries import ANY_GOAL_TYPE, GoalTypeBoundary, boundary_for, tool_boundary_error
from shared.tools.registry import ToolSpec

ANY_TENANT = "*"
GOAL_TYPE_PREFIXES = ("playbook:", "model:")


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(description="Permission scopes granted; glob patterns allowed (`sales.*`).")
    data_classes: list[str] | None = Field(
        None, description="Data classes the tenant's tools may touch; unset = any."
    )
    deny_tools: list[str] = Field(default_factory=list, description="Tool names (globs) refused anyway.")


class ToolPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    tenants: dict[str, TenantPolicy] = Field(
        description=f"Tenant -> policy; {ANY_TENANT!r} applies to tenants not listed (none = refused)."
    )
    goal_types: dict[str, GoalTypeBoundary] = Field(
        default_factory=dict,
        description="Goal type (plan source, globs: `playbook:quarterly-sales-report`, `model:*`, `*`) -> its "
        "data boundary; a goal type no entry matches is bounded by its tenant only.",
    )

    @field_validator("goal_types")
    @classmethod
    def _goal_type_keys(cls, goal_types: dict[str, GoalTypeBoundary]) -> dict[str, GoalTypeBoundary]:
        for key in goal_types:
            if key != ANY_GOAL_TYPE and not key.startswith(GOAL_TYPE_PREFIXES):
                raise ValueError(f"goal type {key!r} must be a plan source: playbook:<name>, model:<model> "
                                 f"(globs allowed) or {ANY_GOAL_TYPE!r}")
        return goal_types

    @classmethod
    def load(cls, path: Path) -> "ToolPolicy":
        try:
            raw = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, OSError) as exc:
            raise ValueError(f"tool policy {path} is invalid: {exc}") from exc
        return parse_tool_policy(raw, str(path))

    def boundary(self, goal_type: str | None) -> tuple[str, GoalTypeBoundary] | None:
        return boundary_for(self.goal_types, goal_type)

    def for_tenant(self, tenant: str) -> TenantPolicy | None:
        return self.tenants.get(tenant) or self.tenants.get(ANY_TENANT)

    def check(
        self, spec: ToolSpec, tenant: str, allowed_tools: list[str] | None = None, goal_type: str | None = None
    ) -> TypedError | None:
        """None when `tenant` (and the goal's allowed_tools, and its goal type's data boundary)
        may call the tool, else the error."""
        policy = self.for_tenant(tenant)
        base = {"tool": spec.name, "tenant": tenant, "permission_scope": spec.permission_scope}
        if policy is None:
            return _denied(f"tenant {tenant!r} has no tool policy", base,
                           "add the tenant (or '*') to the tool policy")
        if allowed_tools is not None and spec.name not in allowed_tools:
            return _denied(f"the goal does not allow tool {spec.name!r}", {**base, "allowed_tools": allowed_tools},
                           "add the tool to the goal's constraints.allowed_tools, or plan without it")
        if any(fnmatchcase(spec.name, pattern) for pattern in policy.deny_tools):
            return _denied(f"tool {spec.name!r} is denied to tenant {tenant!r}", base, "ask an administrator")
        if not any(fnmatchcase(spec.permission_scope, pattern) for pattern in policy.scopes):
            return _denied(f"tenant {tenant!r} lacks scope {spec.permission_scope!r} for tool {spec.name!r}",
                           {**base, "granted_scopes": policy.scopes},
                           "grant the scope to the tenant in the tool policy")
        if policy.data_classes is not None:
            forbidden = sorted(set(spec.data_classes) - set(policy.data_classes))
            if forbidden:
                return _denied(f"tool {spec.name!r} touches data classes {forbidden} not allowed for tenant "
                               f"{tenant!r}", {**base, "data_classes": forbidden}, "ask an administrator")
        return tool_boundary_error(self.goal_types, spec, goal_type)

    def allowed(self, specs: list[ToolSpec], tenant: str) -> list[ToolSpec]:
        return [spec for spec in specs if self.check(spec, tenant) is None]


def parse_tool_policy(raw: Any, where: str = "<policy>") -> ToolPolicy:
    """The validated policy; errors name the tenant or goal type and the field."""
    try:
        return ToolPolicy.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(error)}" for error in exc.errors())
        raise ValueError(f"tool policy {where} is invalid:\n{lines}") from exc


def _describe(error: Any) -> str:
    """E.g. `goal type 'playbook:x', tools.0: Input should be a valid string`."""
    loc = [str(part) for part in error["loc"]]
    where: list[str] = []
    if loc[:1] == ["tenants"] and len(loc) >= 2:
        where, loc = [f"tenant {loc[1]!r}"], loc[2:]
    elif loc[:1] == ["goal_types"] and len(loc) >= 2:
        where, loc = [f"goal type {loc[1]!r}"], loc[2:]
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field (value {error.get('input')!r})"
    field = ".".join(loc)
    return ", ".join(where + ([field] if field else []) or ["policy"]) + f": {message.removeprefix('Value error, ')}"


def _denied(message: str, details: dict[str, object], hint: str) -> TypedError:
    return TypedError(code=ErrorCode.PERMISSION_DENIED, message=message, details={**details, "hint": hint})
