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
