"""Which tools a goal may use: its tenant's scopes (a validated YAML policy) narrowed by the
goal's own `constraints.allowed_tools`. The executor asks this before every call, so a plan that
names a forbidden tool is refused even if the planner and router let it through."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.events import ErrorCode, TypedError
from shared.tools.registry import ToolSpec

ANY_TENANT = "*"


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

    @classmethod
    def load(cls, path: Path) -> "ToolPolicy":
        return cls.model_validate(yaml.safe_load(path.read_text()))

    def for_tenant(self, tenant: str) -> TenantPolicy | None:
        return self.tenants.get(tenant) or self.tenants.get(ANY_TENANT)

    def check(self, spec: ToolSpec, tenant: str, allowed_tools: list[str] | None = None) -> TypedError | None:
        """None when `tenant` (and the goal's allowed_tools) may call the tool, else the error."""
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
        return None

    def allowed(self, specs: list[ToolSpec], tenant: str) -> list[ToolSpec]:
        return [spec for spec in specs if self.check(spec, tenant) is None]


def _denied(message: str, details: dict[str, object], hint: str) -> TypedError:
    return TypedError(code=ErrorCode.PERMISSION_DENIED, message=message, details={**details, "hint": hint})
