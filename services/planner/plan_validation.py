"""Checks of a plan a model proposed, each problem stated precisely enough to be fed back to the
model for repair (and to end a goal with a clear error). Pure: no I/O.

A candidate passes when it matches the schema, its steps form a DAG, every tool exists and is
permitted for the goal (allowed tools, permission scopes), every `$ref` resolves to a goal input
or to an earlier step the step depends on, and literal tool inputs fit the tool's JSON Schema.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import Constraints, Step, TypedError
from shared.tools.registry import ToolSpec

MAX_PROBLEMS = 20
Permit = Callable[[ToolSpec], "str | None"]


class TenantPolicy(Protocol):
    def check(
        self, spec: ToolSpec, tenant: str, allowed_tools: list[str] | None = None, goal_type: str | None = None
    ) -> TypedError | None: ...


class PlanDraft(BaseModel):
    """What the model answers: the steps and the named results of the goal."""

    model_config = ConfigDict(extra="forbid")
    steps: list[Step] = Field(min_length=1)
    outputs: dict[str, Any] = Field(
        default_factory=dict, description='Result name -> {"$ref": "steps.<id>.output[.<path>]"}.'
    )


def response_schema() -> dict[str, Any]:
    """The JSON Schema of an answer: a plan, or `cannot_plan` with the reason."""
    schema = PlanDraft.model_json_schema()
    schema["properties"]["cannot_plan"] = {
        "type": "string",
        "description": "Set (and leave steps empty) only when no permitted tool can reach the goal.",
    }
    schema.pop("required", None)
    schema["additionalProperties"] = False
    return schema


def permission(
    constraints: Constraints, tenant: str, policy: TenantPolicy | None = None, goal_type: str | None = None
) -> Permit:
    """Why a goal of `tenant` with `constraints` may not use a tool (None when it may): the
    tenant's tool policy, the data boundary of the goal type (the plan's source, when known), the
    goal's allowed tools and its data scopes."""

    def why_not(spec: ToolSpec) -> str | None:
        if policy is not None and (
            error := policy.check(spec, tenant, constraints.allowed_tools, goal_type)
        ) is not None:
            return error.message
        return not_permitted(spec, constraints)

    return why_not


def not_permitted(spec: ToolSpec, constraints: Constraints) -> str | None:
    """Why the goal's own constraints forbid the tool, None when they do not."""
    if constraints.allowed_tools is not None and spec.name not in constraints.allowed_tools:
        return f"tool {spec.name!r} is not in the goal's allowed tools {sorted(constraints.allowed_tools)}"
    if constraints.data_scopes and spec.permission_scope != "default" and spec.permission_scope not in constraints.data_scopes:
        return (f"tool {spec.name!r} needs permission scope {spec.permission_scope!r}, "
                f"the goal has {sorted(constraints.data_scopes)}")
    return None


def check_plan(
    candidate: Any,
    tools: Mapping[str, ToolSpec],
    permit: Permit,
    goal_input: Mapping[str, Any],
    keep: Sequence[Step] = (),
) -> tuple[PlanDraft | None, list[str]]:
    """(the plan with side effects taken from the catalogue, []) or (None, problems)."""
    if not isinstance(candidate, dict):
        return None, [f"the answer must be a JSON object with 'steps' and 'outputs', got {type(candidate).__name__}"]
    try:
        draft = PlanDraft.model_validate(candidate)
    except ValidationError as exc:
        return None, [_pydantic_problem(e) for e in exc.errors()][:MAX_PROBLEMS]

    problems: list[str] = []
    ids = [s.id for s in draft.steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"duplicate step ids {duplicates}: every step needs its own id")
    known = set(ids)
    steps: list[Step] = []
    for step in draft.steps:
        problems.extend(_step_problems(step, known, tools, permit, goal_input))
        spec = tools.get(step.tool) if step.tool else None
        steps.append(step.model_copy(update={"side_effect": spec.side_effect}) if spec else step)
    for name, value in draft.outputs.items():
        for ref in _references(value):
            target = _step_of(ref)
            if target is None and not ref.startswith("goal.input."):
                problems.append(f"output {name!r}: reference {ref!r} must look like steps.<id>.output[.<path>]")
            elif target is not None and target not in known:
                problems.append(f"output {name!r}: reference {ref!r} names no step of the plan (steps: {ids})")
    for old in keep:
        new = next((s for s in draft.steps if s.id == old.id), None)
        if new is None:
            problems.append(f"completed step {old.id!r} must stay in the plan unchanged")
        elif (new.tool, new.instruction, new.inputs) != (old.tool, old.instruction, old.inputs):
            problems.append(f"completed step {old.id!r} must stay unchanged (same tool, instruction and inputs)")
    if not any("depends on unknown" in p or "duplicate" in p for p in problems):
        try:
            graphlib.TopologicalSorter({s.id: s.depends_on for s in draft.steps}).prepare()
        except graphlib.CycleError as exc:
            problems.append(f"the steps form a cycle: {' -> '.join(exc.args[1])}")
    if problems:
        return None, problems[:MAX_PROBLEMS]
    return draft.model_copy(update={"steps": steps}), []


def _step_problems(
    step: Step, known: set[str], tools: Mapping[str, ToolSpec], permit: Permit, goal_input: Mapping[str, Any]
) -> list[str]:
    where = f"step {step.id!r}"
    problems: list[str] = []
    spec: ToolSpec | None = None
    if step.tool is None and not (step.instruction or "").strip():
        problems.append(f"{where}: needs either a tool or a model instruction")
    if step.tool is not None:
        spec = tools.get(step.tool)
        if spec is None:
            problems.append(f"{where}: unknown tool {step.tool!r}; the tools are {sorted(tools)}")
        elif reason := permit(spec):
            problems.append(f"{where}: {reason}")
    unknown = [d for d in step.depends_on if d not in known]
    if unknown:
        problems.append(f"{where}: depends on unknown steps {unknown}")
    if step.id in step.depends_on:
        problems.append(f"{where}: depends on itself")
    for key, value in step.inputs.items():
        for ref in _references(value):
            problems.extend(_ref_problems(f"{where} input {key!r}", ref, step, known, goal_input))
    if spec is not None and not problems:
        problems.extend(_input_schema_problems(where, step.inputs, spec, goal_input))
    return problems


def _ref_problems(where: str, ref: Any, step: Step, known: set[str], goal_input: Mapping[str, Any]) -> list[str]:
    if not isinstance(ref, str):
        return [f"{where}: a $ref must be a string, got {ref!r}"]
    parts = ref.split(".")
    if parts[0] == "goal":
        if len(parts) < 3 or parts[1] != "input":
            return [f"{where}: reference {ref!r} must look like goal.input.<key>"]
        if parts[2] not in goal_input:
            return [f"{where}: reference {ref!r}: the goal input has no {parts[2]!r} (it has {sorted(goal_input)})"]
        return []
    target = _step_of(ref)
    if target is None:
        return [f"{where}: reference {ref!r} must look like steps.<id>.output[.<path>] or goal.input.<key>"]
    if target not in known:
        return [f"{where}: reference {ref!r} names no step of the plan"]
    if target not in step.depends_on:
        return [f"{where}: reference {ref!r} uses step {target!r}, which is not in depends_on {step.depends_on}"]
    return []


def _input_schema_problems(where: str, inputs: dict[str, Any], spec: ToolSpec, goal_input: Mapping[str, Any]) -> list[str]:
    """Validate what is known before the run: literals and goal inputs. Keys fed by other steps
    are checked by the executor when their values exist."""
    pending = {k for k, v in inputs.items() if any(_step_of(r) for r in _references(v) if isinstance(r, str))}
    instance = {k: _with_goal_input(v, goal_input) for k, v in inputs.items() if k not in pending}
    schema = dict(spec.input_schema)
    if pending and "required" in schema:
        schema["required"] = [r for r in schema["required"] if r not in pending]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{where}: input {'.'.join(str(p) for p in e.absolute_path) or '(root)'} does not fit tool "
        f"{spec.name}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def _with_goal_input(value: Any, goal_input: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$ref"} and isinstance(value["$ref"], str) and value["$ref"].startswith("goal.input."):
            current: Any = goal_input
            for key in value["$ref"].split(".")[2:]:
                current = current.get(key) if isinstance(current, dict) else None
            return current
        return {k: _with_goal_input(v, goal_input) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_goal_input(v, goal_input) for v in value]
    return value


def _references(value: Any) -> list[Any]:
    if isinstance(value, dict):
        if "$ref" in value and len(value) == 1:
            return [value["$ref"]]
        return [r for item in value.values() for r in _references(item)]
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []


def _step_of(ref: Any) -> str | None:
    """The step id a `steps.<id>.output…` reference names, None for anything else."""
    if not isinstance(ref, str):
        return None
    parts = ref.split(".")
    if parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output" and parts[1]:
        return parts[1]
    return None


def _pydantic_problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(root)"
    return f"{location}: {error['msg']}"
