"""Deterministic, extractive writing for the offline model provider.

No model weights: the text is built from the input data by templates, so the same input always
gives the same output. It finds the figures that matter (totals, the records of lists, the best
and worst entries) and states them plainly.
"""

from __future__ import annotations

import re

from typing import Any

_NAME_KEYS = ("name", "region", "title", "label", "id")
# the measure a reader ranks by, when a record has it
_MEASURE_KEYS = ("revenue", "amount", "value", "total", "count", "score")


def write(task_type: str, instruction: str, data: dict[str, Any]) -> str:
    if task_type == "classify":
        return classify(instruction, data)
    lines = [f"## {_headline(instruction)}", ""]
    for key, value in data.items():
        lines.extend(_section(key, value))
    if len(lines) == 2:
        lines.append("No input data was provided.")
    return "\n".join(lines).rstrip() + "\n"


def classify(instruction: str, data: dict[str, Any]) -> str:
    """Pick the first label (from `labels` in the data) whose words appear in the text."""
    labels = [str(label) for label in data.get("labels", [])]
    text = f"{instruction} {data.get('text', '')}".lower()
    for label in labels:
        if any(word in text for word in label.lower().replace("_", " ").split()):
            return label
    return labels[0] if labels else "unknown"


# An instruction starts with what to do ("Summarise Q3 sales for the board"); the document's
# heading is what it is about ("Q3 sales for the board").
_LEADING_VERB = re.compile(
    r"^(?:summari[sz]e|write|draft|prepare|produce|compose|create|classify|extract)\s+(?:(?:a|an|the)\s+)?",
    re.IGNORECASE,
)


def _headline(instruction: str) -> str:
    headline = instruction.strip().rstrip(".")
    subject = _LEADING_VERB.sub("", headline)
    headline = subject or headline
    return headline[:1].upper() + headline[1:] if headline else "Summary"


def _section(key: str, value: Any) -> list[str]:
    title = key.replace("_", " ").capitalize()
    if isinstance(value, dict):
        records = _records(value)
        lines = [f"### {title}", ""]
        lines.extend(_sentences(value.get("totals")) if isinstance(value.get("totals"), dict) else [])
        for list_key, items in records:
            lines.extend(_table(list_key, items))
        scalars = {k: v for k, v in value.items() if _is_scalar(v) and k != "totals"}
        lines.extend(f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in scalars.items())
        for sub_key, sub_value in value.items():
            if isinstance(sub_value, dict) and sub_key != "totals":
                lines.extend(_section(f"{key} {sub_key}", sub_value))
        return [*lines, ""]
    if isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        return [f"### {title}", "", *_table(key, value), ""]
    if _is_scalar(value):
        return [f"- {title}: {_fmt(value)}"]
    return []


def _records(value: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        (k, v)
        for k, v in value.items()
        if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)
    ]


def _sentences(totals: dict[str, Any]) -> list[str]:
    parts = [f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in totals.items() if _is_scalar(v)]
    return [f"In total: {', '.join(parts)}.", ""] if parts else []


def _table(key: str, items: list[dict[str, Any]]) -> list[str]:
    columns = [c for c in items[0] if _is_scalar(items[0][c])]
    columns.sort(key=lambda c: (c not in _NAME_KEYS, c not in _MEASURE_KEYS))
    if not columns:
        return []
    lines = [
        "| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines.extend("| " + " | ".join(_fmt(item.get(c)) for c in columns) + " |" for item in items)
    numbers = [c for c in columns if all(isinstance(i.get(c), (int, float)) for i in items)]
    numeric = next((c for c in numbers if c in _MEASURE_KEYS), numbers[0] if numbers else None)
    name = next((c for c in _NAME_KEYS if c in columns), None)
    if numeric and name and len(items) > 1:
        ranked = sorted(items, key=lambda i: i[numeric], reverse=True)
        lines += [
            "",
            f"Highest {numeric.replace('_', ' ')}: {ranked[0][name]} ({_fmt(ranked[0][numeric])}); "
            f"lowest: {ranked[-1][name]} ({_fmt(ranked[-1][numeric])}).",
        ]
    return [*lines, ""]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)  # 2026 is a year, not a sum
    return str(value)
