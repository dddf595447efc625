"""The offline provider: deterministic local code answering Goalrail's prompts under the model
strings `goalrail/<name>`.

ModelClient calls it directly, without litellm (whose import alone costs seconds and some 200 MB);
when litellm is loaded it serves the same answers as a litellm custom provider
(`shared.models.litellm_models`), so a real model can fall back to it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.models import offline_planner, offline_writer
from shared.models.prompts import parse_messages


@dataclass(frozen=True)
class OfflineAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int


def model_name(model: str) -> str:
    """The name a provider reports as its response model: litellm strips the provider prefix."""
    return model.split("/", 1)[-1]


def answer(messages: list[dict[str, Any]]) -> OfflineAnswer:
    """The offline model's answer to chat messages made by `shared.models.prompts`."""
    task_type, instruction, data = parse_messages(messages)
    if task_type == "plan":
        text = offline_planner.plan(instruction, data)
    else:
        text = offline_writer.write(task_type, instruction, data)
    return OfflineAnswer(text, prompt_tokens=count_tokens(messages), completion_tokens=len(text.split()))


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """Words stand in for tokens: there is no tokenizer to ask, and the price is zero anyway."""
    return sum(len(str(message.get("content", "")).split()) for message in messages)
