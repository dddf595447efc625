"""The routing table: task type -> ordered candidate models with their limits.

Read by the router (which candidate a step gets), the executor (the litellm Router's deployments,
the offline provider's time limits) and the CLI (`goalrail routes explain`). Validation errors
name the task type, the candidate and the field, so a wrong table fails at start-up with a
message a person can act on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.events import TaskType

TASK_TYPES: tuple[str, ...] = get_args(TaskType)
OFFLINE_PROVIDER = "goalrail"


def provider_of(model: str) -> str:
    """A litellm model string's provider; a bare model name is OpenAI's, as in litellm."""
    return model.split("/", 1)[0] if "/" in model else "openai"


def is_offline(model: str) -> bool:
    """Served by the offline provider (deterministic local code), not by a real model."""
    return provider_of(model) == OFFLINE_PROVIDER


class Candidate(BaseModel):
    """One model a task type may go to, with the limits it must meet to be chosen."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=3, description="Any litellm model string, e.g. openai/gpt-4o-mini.")
    max_cost_usd: float | None = Field(None, ge=0, description="Most one call may cost (estimated).")
    max_latency_s: float | None = Field(
        None, gt=0, description="Slowest acceptable call: the litellm timeout, and the learned p95 limit."
    )
    max_context_tokens: int | None = Field(None, gt=0, description="Largest prompt + answer, in tokens.")
    data_classes: list[str] | None = Field(
        None, description="Data classes the model may receive; unset = the table's default_data_classes."
    )
    fallback_only: bool = Field(
        False, description="Never the first choice, however cheap (e.g. the offline provider as a last resort)."
    )
    api_base: str | None = Field(None, description="Provider endpoint (Ollama, Azure, a proxy, a local server).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    api_version: str | None = Field(None, description="Azure OpenAI API version.")
    input_cost_per_token: float | None = Field(None, ge=0, description="Price override (USD per input token).")
    output_cost_per_token: float | None = Field(None, ge=0, description="Price override (USD per output token).")

    @property
    def provider(self) -> str:
        return provider_of(self.model)

    @property
    def offline(self) -> bool:
        return is_offline(self.model)

    def litellm_params(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The deployment's `litellm_params` for litellm's Router."""
        params: dict[str, Any] = {"model": self.model}
        if self.api_base:
            params["api_base"] = self.api_base
        if self.api_key_env and os.environ.get(self.api_key_env):
            params["api_key"] = os.environ[self.api_key_env]  # unset: litellm's provider default applies
        if self.api_version:
            params["api_version"] = self.api_version
        if self.input_cost_per_token is not None:
            params["input_cost_per_token"] = self.input_cost_per_token
        if self.output_cost_per_token is not None:
            params["output_cost_per_token"] = self.output_cost_per_token
        timeout = self.max_latency_s or timeout_s
        if timeout:
            params["timeout"] = timeout
        if not self.offline:
            params["max_retries"] = 0  # retries are the litellm Router's, not the provider SDK's
        return params


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: list[Candidate] = Field(min_length=1)
    expected_output_tokens: int = Field(
        500, gt=0, description="Answer size assumed when estimating a call's cost and context."
    )

    @field_validator("candidates")
    @classmethod
    def _distinct_models(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for candidate in candidates:
            if candidate.model in seen:
                raise ValueError(f"model {candidate.model!r} is listed twice")
            seen.add(candidate.model)
        return candidates


class RouterSettings(BaseModel):
    """litellm Router behaviour: retries, fallbacks and cooldowns are litellm's."""

    model_config = ConfigDict(extra="forbid")

    num_retries: int = Field(1, ge=0, le=10, description="Retries of one deployment before falling back.")
    allowed_fails: int = Field(
        2, ge=0, description="Failures per minute a deployment may have before it is cooled down."
    )
    cooldown_s: float = Field(30.0, ge=0, description="How long a failing deployment is skipped.")
    unhealthy_after: int = Field(
        3, ge=1, description="Consecutive failures after which the router stops choosing a model…"
    )
    unhealthy_for_s: float = Field(60.0, ge=0, description="…for this long after its last failure.")
    min_samples: int = Field(3, ge=1, description="Calls needed before learned latency counts against a limit.")


class Budgets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, float] = Field(default_factory=dict, description="Tenant -> max spend in USD.")
    default_tenant_usd: float | None = Field(None, ge=0, description="Limit for tenants not listed; unset = none.")

    @field_validator("tenants")
    @classmethod
    def _non_negative(cls, tenants: dict[str, float]) -> dict[str, float]:
        for tenant, limit in tenants.items():
            if limit < 0:
                raise ValueError(f"budget of tenant {tenant!r} must be >= 0 (got {limit})")
        return tenants

    def tenant_limit(self, tenant: str) -> float | None:
        return self.tenants.get(tenant, self.default_tenant_usd)


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    restricted_data_classes: list[str] = Field(
        default_factory=lambda: ["pii"],
        description="Classes a candidate must list explicitly; never part of default_data_classes.",
    )
    default_data_classes: list[str] = Field(default_factory=lambda: ["public", "internal"])
    detect_pii: bool = Field(
        True, description="A model step whose inputs hold personal data is routed as carrying `pii`."
    )
    router: RouterSettings = Field(default_factory=RouterSettings)
    budgets: Budgets = Field(default_factory=Budgets)
    default: Route
    task_types: dict[str, Route] = Field(default_factory=dict)

    @field_validator("task_types")
    @classmethod
    def _known_task_types(cls, task_types: dict[str, Route]) -> dict[str, Route]:
        unknown = sorted(set(task_types) - set(TASK_TYPES))
        if unknown:
            raise ValueError(f"unknown task type(s) {unknown}; known: {list(TASK_TYPES)}")
        return task_types

    @model_validator(mode="after")
    def _fill_data_classes(self) -> RoutingTable:
        leaked = sorted(set(self.default_data_classes) & set(self.restricted_data_classes))
        if leaked:
            raise ValueError(f"default_data_classes must not contain restricted classes {leaked}")
        for route in (self.default, *self.task_types.values()):
            for candidate in route.candidates:
                if candidate.data_classes is None:
                    candidate.data_classes = list(self.default_data_classes)
        return self

    def route(self, task_type: str) -> Route:
        return self.task_types.get(task_type, self.default)

    def candidates(self) -> dict[str, Candidate]:
        """Every distinct model of the table (first definition wins), for litellm's model list."""
        models: dict[str, Candidate] = {}
        for route in (*self.task_types.values(), self.default):
            for candidate in route.candidates:
                models.setdefault(candidate.model, candidate)
        return models


def load_routing_table(path: Path) -> RoutingTable:
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError) as exc:
        raise ValueError(f"routing table {path} is invalid: {exc}") from exc
    return parse_routing_table(raw, str(path))


def parse_routing_table(raw: Any, where: str = "<table>") -> RoutingTable:
    try:
        return RoutingTable.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(error, raw)}" for error in exc.errors())
        raise ValueError(f"routing table {where} is invalid:\n{lines}") from exc


def _describe(error: Any, raw: Any) -> str:
    """E.g. `task type 'write', candidate 2 (openai/x): max_cost_usd: Input should be >= 0`."""
    loc = list(error["loc"])
    where: list[str] = []
    node = raw
    if loc[:1] == ["task_types"] and len(loc) >= 2:
        where.append(f"task type {loc[1]!r}")
        node = _get(raw, "task_types", loc[1])
        loc = loc[2:]
    elif loc[:1] == ["default"]:
        where.append("default route")
        node = _get(raw, "default")
        loc = loc[1:]
    if loc[:1] == ["candidates"] and len(loc) >= 2 and isinstance(loc[1], int):
        model = _get(node, "candidates", loc[1], "model")
        where.append(f"candidate {loc[1] + 1}" + (f" ({model})" if isinstance(model, str) else ""))
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field (value {error.get('input')!r})"
    return ", ".join(where + ([field] if field else []) or ["table"]) + f": {message.removeprefix('Value error, ')}"


def _get(node: Any, *path: Any) -> Any:
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node
