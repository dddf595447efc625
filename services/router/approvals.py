"""Router domain: whether a step must wait for a person before it is dispatched, and why. Pure.

A step waits when its plan says so (`needs_approval`), when its tool cannot be undone
(`irreversible`, from the tool catalogue, whatever the plan says), or when the money it moves or
costs is above the configured threshold: the router's cost estimate, or an `amount` input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.events import Binding, Step

AMOUNT_INPUTS = ("amount", "amount_usd")


def approval_reason(
    step: Step,
    binding: Binding,
    inputs: Mapping[str, Any],
    tool_effects: Mapping[str, str],
    threshold_usd: float | None,
) -> str | None:
    """Why the step needs an approval (every reason, joined), None when it may run at once."""
    reasons: list[str] = []
    if step.needs_approval:
        reasons.append(f"step {step.id} is marked needs_approval")
    tool = binding.tool if binding.kind == "tool" else None
    if tool is not None and (tool_effects.get(tool) == "irreversible" or step.side_effect == "irreversible"):
        reasons.append(f"tool {tool} is irreversible")
    if threshold_usd is not None:
        if binding.estimated_cost_usd is not None and binding.estimated_cost_usd > threshold_usd:
            reasons.append(f"estimated cost ${binding.estimated_cost_usd:.2f} is above the approval threshold "
                           f"${threshold_usd:g}")
        for key in AMOUNT_INPUTS:
            amount = inputs.get(key)
            if isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > threshold_usd:
                reasons.append(f"input {key} {amount:g} is above the approval threshold {threshold_usd:g}")
    return "; ".join(reasons) or None

