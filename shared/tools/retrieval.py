"""Keyword retrieval over the tool catalogue: which tools a goal's words point at.

Used by the planner to narrow a large catalogue before it reaches the model, and by the offline
planner to pick tools. Crude on purpose (stems and a few synonyms), deterministic and fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_STOP = frozenset(
    "a an and are as at be by for from in into is it its of on or our per the their this to up us we "
    "with one all any each e g eg returns return input output".split()
)
# business words that name the same thing; each maps to the word the catalogue is likely to use
_SYNONYMS = {
    "revenue": "sales",
    "turnover": "sales",
    "sale": "sales",
    "number": "figure",
    "kpi": "figure",
    "metric": "figure",
    "customer": "account",
    "client": "account",
    "crm": "crm",
    "send": "publish",
    "share": "publish",
    "distribute": "publish",
    "circulate": "publish",
    "post": "publish",
    "memo": "report",
    "brief": "report",
    "briefing": "report",
    "biggest": "top",
    "largest": "top",
    "best": "top",
}


def stem(word: str) -> str:
    word = word.lower()
    if word in _SYNONYMS:
        return _SYNONYMS[word]
    for suffix, keep in (("ies", "y"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + keep
            break
    return _SYNONYMS.get(word, word)


def keywords(text: str) -> set[str]:
    """Stemmed, synonym-folded content words of `text` (tool names split on dots and underscores)."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("_", " ").replace(".", " "))
    return {stem(w) for w in words if w not in _STOP and not w.isdigit() and len(w) > 1}


# verbs every API uses: they say how a tool works, not what it is about
_GENERIC = frozenset({"get", "list", "fetch", "read", "search", "find", "query", "create", "update", "delete", "set"})


def tool_score(goal_words: set[str], name: str, description: str) -> float:
    """Name words weigh three times description words: a tool is mostly what it is called."""
    name_words = keywords(name) - _GENERIC
    description_words = keywords(description) - name_words
    return 3.0 * len(goal_words & name_words) + len(goal_words & description_words)


def rank_tools(text: str, tools: Sequence[Any], limit: int | None = None, keep: Iterable[str] = ()) -> list[Any]:
    """Tools (objects or dicts with name and description) by relevance to `text`, best first.
    Tools in `keep` always stay; ties keep catalogue order. With `limit`, at most that many."""
    goal_words = keywords(text)
    kept = set(keep)

    def field(tool: Any, key: str) -> str:
        return str(tool.get(key, "") if isinstance(tool, dict) else getattr(tool, key, ""))

    scored = [(tool_score(goal_words, field(t, "name"), field(t, "description")), i, t) for i, t in enumerate(tools)]
    scored.sort(key=lambda s: (field(s[2], "name") not in kept, -s[0], s[1]))
    ranked = [t for _, _, t in scored]
    if limit is None:
        return ranked
    return ranked[: max(limit, len(kept & {field(t, "name") for t in tools}))]
