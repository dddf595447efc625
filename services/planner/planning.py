"""Planner domain: playbooks, plan building and validation, DAG progress. Pure: no I/O."""

from __future__ import annotations

import graphlib
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from shared.events import ErrorCode, GoalSpec, Plan, Step, TypedError

StepStatus = Literal["pending", "running", "succeeded", "failed"]
_PARAM = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


class PlanningError(Exception):
    def __init__(self, error: TypedError) -> None:
        super().__init__(error.message)
        self.error = error


class PlaybookMatch(BaseModel):
    all_words: list[str] = Field(default_factory=list)
    pattern: str | None = None


class PlaybookStep(Step):
    when: str | None = Field(None, description="A parameter: the step is planned only when it is set (non-empty).")


class Playbook(BaseModel):
    name: str
    description: str = ""
    match: PlaybookMatch = Field(default_factory=PlaybookMatch)
    params: dict[str, Any] = Field(default_factory=dict)
    manual_baseline_minutes: float | None = None
    steps: list[PlaybookStep]
    outputs: dict[str, Any] = Field(default_factory=dict)

    def matches(self, text: str) -> dict[str, Any] | None:
        """Parameters found in `text` when this playbook applies to it, else None."""
        words = set(re.findall(r"[a-z0-9]+", text.lower()))
        if not self.match.all_words or not all(w.lower() in words for w in self.match.all_words):
            return None
        if not self.match.pattern:
            return {}
        found = re.search(self.match.pattern, text, re.IGNORECASE)
        groups = found.groupdict() if found else {}
        return {k: v.upper() if k == "quarter" else v for k, v in groups.items() if v}


def load_playbooks(folder: Path) -> dict[str, Playbook]:
    playbooks: dict[str, Playbook] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            playbook = Playbook.model_validate(yaml.safe_load(path.read_text()))
        except (ValidationError, yaml.YAMLError) as exc:
            raise ValueError(f"playbook {path} is invalid: {exc}") from exc
        playbooks[playbook.name] = playbook
    return playbooks


def choose_playbook(text: str, playbooks: dict[str, Playbook], forced: str | None) -> tuple[Playbook, dict[str, Any]]:
    if forced:
        if forced not in playbooks:
            raise PlanningError(_no_plan(f"no playbook named {forced!r}", playbooks))
        return playbooks[forced], playbooks[forced].matches(text) or {}
    candidates = [(pb, params) for pb in playbooks.values() if (params := pb.matches(text)) is not None]
    if not candidates:
        raise PlanningError(_no_plan(f"no playbook matches the goal {text!r}", playbooks))
    # the most specific playbook (most required words) wins
    return max(candidates, key=lambda c: len(c[0].match.all_words))


def _no_plan(message: str, playbooks: dict[str, Playbook]) -> TypedError:
    return TypedError(code=ErrorCode.NO_PLAN, message=message, details={"playbooks": sorted(playbooks)})


def plan_from_playbook(
    playbook: Playbook, found: dict[str, Any], goal_input: dict[str, Any], plan_id: str, now: datetime
) -> Plan:
    params = {**playbook.params, **found, **goal_input}
    context = {"current_year": str(now.year)}
    params = {k: _substitute(v, {**context, **params}) for k, v in params.items()}
    kept = [step for step in playbook.steps if not step.when or params.get(step.when)]
    steps = [Step.model_validate(_substitute(step.model_dump(exclude={"when"}), params)) for step in kept]
    # an output of a step left out (its `when` parameter unset) is left out with it
    left_out = {step.id for step in playbook.steps} - {step.id for step in kept}
    outputs = {name: value for name, value in playbook.outputs.items()
               if not any(ref.split(".")[1] in left_out for ref in references(value) if ref.startswith("steps."))}
    return Plan(plan_id=plan_id, source=f"playbook:{playbook.name}", steps=steps, outputs=outputs)


def _substitute(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PARAM.fullmatch(value.strip())
        if whole and whole.group(1) in params:
            return _typed(params[whole.group(1)])
        return _PARAM.sub(lambda m: str(params.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    return value


def _typed(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def references(value: Any) -> Iterable[str]:
    """Every `$ref` string inside an input value."""
    if isinstance(value, dict):
        if set(value) == {"$ref"}:
            yield value["$ref"]
            return
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def validate_plan(plan: Plan, known_tools: Iterable[str], allowed_tools: list[str] | None) -> Plan:
    """Check ids, tools, references and acyclicity; add dependencies implied by references."""
    problems: list[str] = []
    ids = [s.id for s in plan.steps]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        problems.append(f"duplicate step ids: {sorted(duplicates)}")
    known = set(known_tools)
    steps: list[Step] = []
    for step in plan.steps:
        if step.tool is None and step.instruction is None:
            problems.append(f"step {step.id}: needs a tool or a model instruction")
        if step.tool is not None and step.tool not in known:
            problems.append(f"step {step.id}: unknown tool {step.tool!r}")
        if step.tool is not None and allowed_tools is not None and step.tool not in allowed_tools:
            problems.append(f"step {step.id}: tool {step.tool!r} is not allowed for this goal")
        depends = list(step.depends_on)
        for ref in references(step.inputs):
            parts = ref.split(".")
            if parts[0] == "goal" and len(parts) >= 2:
                continue
            if parts[0] != "steps" or len(parts) < 3 or parts[2] != "output" or parts[1] not in ids:
                problems.append(f"step {step.id}: reference {ref!r} does not resolve")
                continue
            if parts[1] not in depends:
                depends.append(parts[1])
        unknown = [d for d in depends if d not in ids]
        if unknown:
            problems.append(f"step {step.id}: depends on unknown steps {unknown}")
        steps.append(step.model_copy(update={"depends_on": depends}))
    if not problems:
        try:
            graphlib.TopologicalSorter({s.id: s.depends_on for s in steps}).prepare()
        except graphlib.CycleError as exc:
            problems.append(f"the steps form a cycle: {exc.args[1]}")
    if problems:
        raise PlanningError(
            TypedError(
                code=ErrorCode.NO_PLAN,
                message=f"plan {plan.source} is invalid: " + "; ".join(problems),
                details={"problems": problems},
            )
        )
    return plan.model_copy(update={"steps": steps})


class StepState(BaseModel):
    status: StepStatus = "pending"
    attempt: int = 0
    output: Any = None
    error: TypedError | None = None


class Progress(BaseModel):
    """Where a plan stands: one state per step."""

    steps: dict[str, StepState]

    @classmethod
    def start(cls, plan: Plan) -> Progress:
        return cls(steps={s.id: StepState() for s in plan.steps})

    def ready(self, plan: Plan) -> list[Step]:
        done = {i for i, s in self.steps.items() if s.status == "succeeded"}
        return [s for s in plan.steps if self.steps[s.id].status == "pending" and set(s.depends_on) <= done]

    def mark_running(self, step_id: str) -> int:
        state = self.steps[step_id]
        state.status, state.attempt = "running", state.attempt + 1
        return state.attempt

    def succeed(self, step_id: str, output: Any) -> None:
        state = self.steps[step_id]
        state.status, state.output, state.error = "succeeded", output, None

    def fail(self, step_id: str, error: TypedError, max_attempts: int) -> bool:
        """Record a failure; True when the step may be retried."""
        state = self.steps[step_id]
        state.error = error
        if error.retryable and state.attempt < max_attempts:
            state.status = "pending"
            return True
        state.status = "failed"
        return False

    @property
    def finished(self) -> bool:
        return self.failed or all(s.status == "succeeded" for s in self.steps.values())

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps.values())

    def outputs(self) -> dict[str, Any]:
        return {i: s.output for i, s in self.steps.items() if s.status == "succeeded"}


def resolve(value: Any, step_outputs: dict[str, Any], goal_input: dict[str, Any]) -> Any:
    """Replace every `$ref` in `value` with the referenced output or goal input."""
    if isinstance(value, dict):
        if set(value) == {"$ref"}:
            return _lookup(value["$ref"], step_outputs, goal_input)
        return {k: resolve(v, step_outputs, goal_input) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, step_outputs, goal_input) for v in value]
    return value


def _lookup(ref: str, step_outputs: dict[str, Any], goal_input: dict[str, Any]) -> Any:
    parts = ref.split(".")
    if parts[0] == "goal":
        current: Any = {"input": goal_input}
        path = parts[1:]
    elif parts[0] == "steps" and len(parts) >= 3 and parts[2] == "output" and parts[1] in step_outputs:
        current, path = step_outputs[parts[1]], parts[3:]
    else:
        # plan outputs are not checked by validate_plan: a bad one must fail the plan, not the handler
        raise _unresolved(ref, f"no output of step {parts[1]!r}" if len(parts) > 1 else "not a reference")
    for key in path:
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            raise _unresolved(ref, f"no {key!r}")
    return current


def _unresolved(ref: str, why: str) -> PlanningError:
    return PlanningError(
        TypedError(
            code=ErrorCode.INVALID_INPUT,
            message=f"reference {ref!r} does not resolve: {why}",
            details={"ref": ref},
        )
    )


def carry_over(progress: Progress, old: Plan, new: Plan) -> Progress:
    """Progress of a revised plan: steps it keeps unchanged keep their state (done or in flight);
    new or changed steps start pending, their attempt counter going on so event ids stay unique."""
    before = {s.id: s for s in old.steps}
    states: dict[str, StepState] = {}
    for step in new.steps:
        state = progress.steps.get(step.id)
        if state is not None and before.get(step.id) == step and state.status in ("succeeded", "running"):
            states[step.id] = state.model_copy(deep=True)
        else:
            states[step.id] = StepState(attempt=state.attempt if state else 0)
    return Progress(steps=states)


def over_limits(goal: GoalSpec, submitted_at: datetime, cost_usd: float, now: datetime) -> TypedError | None:
    """The limit a goal has passed (deadline, time budget, money budget), None while within."""
    budget = goal.constraints.budget
    elapsed = (now - submitted_at).total_seconds()
    deadline = goal.deadline
    if deadline is not None and deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=timezone.utc)  # a deadline without a zone is read as UTC
    if deadline is not None and now > deadline:
        return TypedError(
            code=ErrorCode.DEADLINE_EXCEEDED,
            message=f"the goal passed its deadline {deadline.isoformat()} ({(now - deadline).total_seconds():.0f}s ago)",
            details={"deadline": deadline.isoformat(), "now": now.isoformat()},
        )
    if budget.max_seconds is not None and elapsed > budget.max_seconds:
        return TypedError(
            code=ErrorCode.BUDGET_EXCEEDED,
            message=f"the goal ran {elapsed:.1f}s, over its time budget of {budget.max_seconds:g}s",
            details={"limit": "max_seconds", "max_seconds": budget.max_seconds, "elapsed_s": round(elapsed, 3)},
        )
    if budget.max_cost_usd is not None and cost_usd > budget.max_cost_usd:
        return TypedError(
            code=ErrorCode.BUDGET_EXCEEDED,
            message=f"the goal cost ${cost_usd:.4f}, over its budget of ${budget.max_cost_usd:g}",
            details={"limit": "max_cost_usd", "max_cost_usd": budget.max_cost_usd, "cost_usd": cost_usd},
        )
    return None
