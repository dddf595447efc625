"""Planning by a model: the goal, its constraints and the relevant permitted tools go to the
`plan` model (through the traced model client, so any litellm model works, and the offline
planner when no keys are configured); its structured answer is validated, and an invalid answer
goes back with the problems for a bounded number of repair rounds. The same loop revises the
remainder of a plan after a permanent step failure.

The model is a port: this module never imports litellm.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from services.planner.plan_validation import TenantPolicy, check_plan, permission, response_schema
from shared.events import ErrorCode, GoalSpec, Plan, Step, TypedError, Usage
from shared.models.client import ModelError, ModelResult
from shared.models.prompts import build_plan_messages
from shared.tools.registry import ToolSpec
from shared.tools.retrieval import rank_tools

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "goalrail_plan", "schema": response_schema(), "strict": False}}
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)


class PlanModel(Protocol):
    async def complete(
        self, model: str, task_type: str, instruction: str, data: dict[str, Any], fallbacks: list[str] | None = None,
        *, messages: list[dict[str, str]] | None = None, response_format: dict[str, Any] | None = None,
    ) -> ModelResult: ...


@dataclass
class Planned:
    """A valid plan, or the error that ends the goal; with what the model calls cost."""

    plan: Plan | None
    error: TypedError | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0


@dataclass(frozen=True)
class ModelPlanner:
    models: PlanModel
    model: str
    tools: Mapping[str, ToolSpec]
    fallbacks: tuple[str, ...] = ()
    policy: TenantPolicy | None = None
    repair_rounds: int = 2
    max_tools: int = 12

    async def plan(
        self, goal: GoalSpec, tenant: str, plan_id: str, today: date, starting_point: Plan | None = None
    ) -> Planned:
        data: dict[str, Any] = {}
        keep_tools: list[str] = []
        if starting_point is not None:
            data["playbook"] = _plan_data(starting_point)
            keep_tools = [s.tool for s in starting_point.steps if s.tool]
        return await self._ask(goal, tenant, plan_id, today, data, keep_tools)

    async def replan(
        self, goal: GoalSpec, tenant: str, plan: Plan, completed: Sequence[Step], failed: Step, error: TypedError,
        failure_chain: list[dict[str, Any]], plan_id: str, today: date,
    ) -> Planned:
        data = {
            "replan": {
                "plan": _plan_data(plan),
                "completed": [s.id for s in completed],
                "failed": {"step_id": failed.id, "tool": failed.tool, "error": error.model_dump(mode="json")},
                "failure_chain": failure_chain,
            }
        }
        keep_tools = [s.tool for s in plan.steps if s.tool]
        return await self._ask(goal, tenant, plan_id, today, data, keep_tools, keep=completed, failed=failed)

    @property
    def goal_type(self) -> str:
        """The goal type of the plans this planner makes (their source, when the model answers)."""
        return f"model:{self.model}"

    def forbidden(self, plan: Plan, goal: GoalSpec, tenant: str) -> list[str]:
        """Why steps of a (playbook) plan may not run for this goal and tenant; [] when all may.
        (Not its goal type's boundary: a playbook that leaves it is refused, not re-planned.)"""
        permit = permission(goal.constraints, tenant, self.policy)
        reasons = [(s.id, permit(self.tools[s.tool])) for s in plan.steps if s.tool in self.tools]
        return [f"step {step_id!r}: {why}" for step_id, why in reasons if why]

    def catalogue_for(self, goal: GoalSpec, tenant: str, keep_tools: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The permitted tools, narrowed to the most relevant ones when there are many."""
        permit = permission(goal.constraints, tenant, self.policy, self.goal_type)
        permitted = [spec for spec in self.tools.values() if permit(spec) is None]
        ranked = rank_tools(goal.text, permitted, limit=self.max_tools, keep=keep_tools)
        return [
            {"name": s.name, "description": s.description, "input_schema": s.input_schema, "side_effect": s.side_effect}
            for s in ranked
        ]

    async def _ask(
        self, goal: GoalSpec, tenant: str, plan_id: str, today: date, extra: dict[str, Any],
        keep_tools: Sequence[str], keep: Sequence[Step] = (), failed: Step | None = None,
    ) -> Planned:
        permit = permission(goal.constraints, tenant, self.policy, self.goal_type)
        data: dict[str, Any] = {
            "goal": {
                "text": goal.text,
                "input": goal.input,
                "constraints": goal.constraints.model_dump(mode="json"),
                "priority": goal.priority,
                "deadline": goal.deadline.isoformat() if goal.deadline else None,
                "today": today.isoformat(),
            },
            "tools": self.catalogue_for(goal, tenant, keep_tools),
            **extra,
        }
        result = Planned(plan=None)
        history: list[dict[str, Any]] = []
        for attempt in range(1, self.repair_rounds + 2):
            result.attempts = attempt
            try:
                answer = await self.models.complete(
                    self.model, "plan", goal.text, data, list(self.fallbacks) or None,
                    messages=build_plan_messages(goal.text, data), response_format=RESPONSE_FORMAT,
                )
            except ModelError as exc:
                result.error = exc.error.model_copy(
                    update={"message": f"planning failed: {exc.error.message}",
                            "details": {**exc.error.details, "attempts": history}}
                )
                return result
            result.usage = _add(result.usage, answer.usage)
            candidate, problems = _parse(answer.text)
            if isinstance(candidate, dict) and candidate.get("cannot_plan") and not candidate.get("steps"):
                result.error = TypedError(
                    code=ErrorCode.NO_PLAN,
                    message=f"model {self.model} cannot plan the goal: {candidate['cannot_plan']}",
                    details={"model": self.model, "reason": candidate["cannot_plan"], "attempts": history},
                )
                return result
            draft = None
            if not problems:
                answer_plan = {k: v for k, v in candidate.items() if k != "cannot_plan"}
                draft, problems = check_plan(answer_plan, self.tools, permit, goal.input, keep)
            if draft is not None and failed is not None:
                problems = _unchanged_failure(draft.steps, failed)
            if draft is not None and not problems:
                # the source names the model that answered (a fallback's when the first failed)
                result.plan = Plan(plan_id=plan_id, source=f"model:{answer.model or self.model}", steps=draft.steps,
                                   outputs=draft.outputs)
                return result
            history.append({"attempt": attempt, "problems": problems})
            data = {**data, "rejected_answer": answer.text[:4000], "problems": problems}
        what = "revised plan" if failed is not None else "plan"
        result.error = TypedError(
            code=ErrorCode.NO_PLAN,
            message=f"model {self.model} gave no valid {what} in {result.attempts} attempts "
                    f"({self.repair_rounds} repair rounds); last problems: " + "; ".join(history[-1]["problems"][:5]),
            details={"model": self.model, "attempts": history},
        )
        return result


def _parse(text: str) -> tuple[dict[str, Any], list[str]]:
    fenced = _FENCE.match(text)
    body = fenced.group("body") if fenced else text
    try:
        value = json.loads(body)
    except ValueError as exc:
        return {}, [f"the answer is not valid JSON ({exc}); answer with one JSON object only"]
    if not isinstance(value, dict):
        return {}, [f"the answer must be a JSON object with 'steps' and 'outputs', got {type(value).__name__}"]
    return value, []


def _unchanged_failure(steps: Sequence[Step], failed: Step) -> list[str]:
    again = next((s for s in steps if s.id == failed.id), None)
    if again is not None and (again.tool, again.inputs) == (failed.tool, failed.inputs):
        return [f"step {failed.id!r} failed for good: remove it or change its tool or inputs"]
    return []


def _plan_data(plan: Plan) -> dict[str, Any]:
    return {
        "steps": [s.model_dump(mode="json", exclude_defaults=True) | {"id": s.id, "task_type": s.task_type}
                  for s in plan.steps],
        "outputs": plan.outputs,
    }


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(input_tokens=a.input_tokens + b.input_tokens, output_tokens=a.output_tokens + b.output_tokens,
                 cost_usd=a.cost_usd + b.cost_usd)
