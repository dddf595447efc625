"""The message format every model task uses, and its inverse for the offline provider.

Keeping both directions here means a real model and the offline provider read the same prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TASK_LINE = re.compile(r"^Task type: (?P<task>[a-z_]+)$", re.MULTILINE)
_DATA_BLOCK = re.compile(r"```json\n(?P<data>.*?)\n```", re.DOTALL)
_INSTRUCTION = re.compile(r"^Instruction: (?P<instruction>.+)$", re.MULTILINE)


def build_messages(task_type: str, instruction: str, data: dict[str, Any]) -> list[dict[str, str]]:
    system = (
        "You are a worker in Goalrail, a business process automation platform.\n"
        f"Task type: {task_type}\n"
        "Use only the input data. Answer in concise Markdown for business readers."
    )
    user = f"Instruction: {instruction}\n\nInput data:\n```json\n{json.dumps(data, indent=1, sort_keys=True)}\n```"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_messages(messages: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """(task type, instruction, data) from messages made by build_messages; lenient otherwise."""
    text = "\n".join(str(m.get("content") or "") for m in messages)
    task = _TASK_LINE.search(text)
    instruction = _INSTRUCTION.search(text)
    data: dict[str, Any] = {}
    block = _DATA_BLOCK.search(text)
    if block:
        try:
            loaded = json.loads(block.group("data"))
            data = loaded if isinstance(loaded, dict) else {"data": loaded}
        except ValueError:
            data = {}
    last_user = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return (
        task.group("task") if task else "write",
        instruction.group("instruction").strip() if instruction else last_user.strip(),
        data,
    )


PLAN_RULES = (
    "Plan the goal as a graph of steps, using only the tools listed in the input data.\n"
    "- A tool step names `tool` and gives `inputs` that fit the tool's input_schema; its task_type is "
    "`extract` for read tools and `act` for tools that write.\n"
    "- A model step has no tool: task_type summarise, write, classify or extract, an `instruction`, and "
    "`inputs` (the data it works on). Its output is {\"text\": ...}: refer to it as steps.<id>.output.text.\n"
    "- An input is a literal or a reference {\"$ref\": \"steps.<id>.output[.<path>]\"} or "
    "{\"$ref\": \"goal.input.<key>\"}. A step that references another step lists it in depends_on.\n"
    "- Step ids are snake_case. No cycles. Only tools that write change business systems: use them only "
    "when the goal asks for it.\n"
    "- `outputs` names the goal's results, each a reference to a step output.\n"
    "- When `playbook` is given, adapt its steps to the goal; when `replan` is given, keep its completed "
    "steps unchanged and revise the rest around the failed step; when `rejected_answer` is given, fix every "
    "listed problem.\n"
    "- If no permitted tool can reach the goal, answer {\"cannot_plan\": \"<why>\"}.\n"
    "Answer with one JSON object only."
)


def build_plan_messages(goal_text: str, data: dict[str, Any]) -> list[dict[str, str]]:
    """The planning prompt: rules in the system message, the goal as the instruction, and the
    goal, catalogue (and playbook, rejected answer or failed plan) as the data block."""
    system = (
        "You are the planner of Goalrail, a business process automation platform.\n"
        "Task type: plan\n"
        f"{PLAN_RULES}"
    )
    instruction = " ".join(goal_text.split())
    user = f"Instruction: {instruction}\n\nInput data:\n```json\n{json.dumps(data, indent=1, sort_keys=True, default=str)}\n```"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
