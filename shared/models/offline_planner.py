"""Deterministic planning for the offline model provider (task type `plan`).

It reads the same prompt a real model gets (goal, constraints, tool catalogue, optionally a
playbook to adapt, the errors of a rejected answer, or a failed plan to revise) and answers
the same JSON: `{"steps": [...], "outputs": {...}}`, or `{"cannot_plan": "<why>"}`.

How it plans a goal: the read tools whose names the goal's words point at fetch the data, with
inputs taken from the goal's input or read from its text (quarter, year, "top 5", "ISS-3"); one
model step (summarise, write, classify or extract, after the goal's verb) works over their
outputs; write tools run last, only when the goal orders what they do: a publisher when it says
publish/send/share or "prepare the … report", another write tool when a clause starts with its
verb and names its object ("open an issue" -> tracker.create_issue). Irreversible tools are never
chosen. The same data always gives the same plan.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from shared.tools.retrieval import keywords, tool_score

_QUARTER = re.compile(r"\bq([1-4])\b", re.IGNORECASE)
_QUARTER_WORDS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}
_QUARTER_PHRASE = re.compile(r"\b(first|1st|second|2nd|third|3rd|fourth|4th)\s+quarter\b", re.IGNORECASE)
_YEAR = re.compile(r"\b(20\d\d)\b")
_COUNT = re.compile(r"\btop\s+(\d{1,2}|three|five|ten)\b", re.IGNORECASE)
_NUMBER_WORDS = {"three": 3, "five": 5, "ten": 10}
_TEXT_INPUTS = ("body", "text", "content", "message", "markdown", "description", "comment")
_RECORD_ID = re.compile(r"\b[A-Za-z]{2,5}-[A-Za-z0-9]*\d[A-Za-z0-9]*\b")  # ISS-3, rpt-12
_STATUS_ORDERS = {"close": "done", "resolve": "done", "finish": "done", "complete": "done", "reopen": "open",
                  "start": "in_progress"}

_CLASSIFY = {"classify", "categorise", "categorize", "group", "segment", "triage", "label", "sort"}
_WRITE = {"write", "draft", "compose", "email", "letter", "announce"}
_EXTRACT = {"extract", "list", "show", "get", "fetch", "pull", "find", "look"}
_SUMMARISE = {"summarise", "summarize", "summary", "overview", "recap", "analyse", "analyze", "review"}
_PUBLISH_INTENT = {"publish", "send", "share", "distribute", "circulate", "post", "email", "mail"}
_DELIVERABLES = {"report", "summary", "document", "presentation", "deck"}
_AUDIENCE = re.compile(r"\b(?:for|to)\s+(?:the\s+|our\s+)?(?:sales\s+)?(board|management|team|executives)\b", re.I)
_REPORT_MAKERS = {"prepare", "produce", "create", "make", "compile", "deliver", "issue"}


def plan(instruction: str, data: dict[str, Any]) -> str:
    """The offline planner's answer as JSON text."""
    return json.dumps(answer(instruction, data), sort_keys=True)


def answer(instruction: str, data: dict[str, Any]) -> dict[str, Any]:
    goal = data.get("goal") or {}
    text = str(goal.get("text") or instruction)
    tools = [t for t in data.get("tools", []) if isinstance(t, dict) and t.get("name")]
    if data.get("replan"):
        return _replan(data["replan"])
    if data.get("playbook"):
        adapted = _adapt(data["playbook"], text, tools)
        if adapted is not None:
            return adapted
    return _compose(text, goal, tools, _today(goal))


# --- composing a plan from the catalogue ---------------------------------------------------


def _compose(text: str, goal: dict[str, Any], tools: list[dict[str, Any]], today: date) -> dict[str, Any]:
    words, orders = keywords(text), _imperatives(text)
    raw_words = set(re.findall(r"[a-z]+", text.lower()))
    goal_input = goal.get("input") or {}
    publish = _wants_publishing(orders, raw_words)
    # irreversible tools are never chosen here: a person (or a playbook) has to ask for them
    publishers = [t for t in tools if t.get("side_effect") == "write" and "publish" in keywords(t["name"])]
    if publish and not publishers:
        return {"cannot_plan": f"the goal asks to publish, but no permitted tool publishes: {text!r}"}
    facts = _facts(text, today)
    actions = [t for t in tools if t.get("side_effect") == "write" and t not in publishers
               and _action_asked(t["name"], words, orders)
               and not _missing(t, _tool_inputs(t, goal_input, facts, text, set(), model_step="x"))]
    writers = ([max(publishers, key=lambda t: tool_score(words, t["name"], t.get("description", "")))]
               if publish else []) + actions
    # what the goal makes ("the Q3 sales report", "an issue") is not something to read
    made = _DELIVERABLES | {w for t in actions for w in keywords(t["name"].split(".")[-1])}
    read_words = words - made if writers or orders & (_WRITE | _REPORT_MAKERS) else words
    readers = [t for t in tools if t.get("side_effect", "read") == "read" and _relevant(read_words, t)]

    steps: list[dict[str, Any]] = []
    used_input: set[str] = set()
    ids: set[str] = set()
    for tool in readers:
        inputs = _tool_inputs(tool, goal_input, facts, text, used_input, model_step=None)
        if _missing(tool, inputs):
            continue  # nothing in the goal says which one to read
        step_id = _unique(f"fetch_{_noun(tool['name'])}", ids)
        steps.append({"id": step_id, "task_type": "extract", "tool": tool["name"], "inputs": inputs,
                      "depends_on": [], "side_effect": "read"})

    task_type = _task_type(raw_words, goal_input)
    model_step: str | None = None
    free_input = [key for key in goal_input if key not in used_input]
    needs_text = any(set(_TEXT_INPUTS) & set((w.get("input_schema") or {}).get("required") or []) for w in writers)
    if needs_text or ((steps or free_input) and (writers or task_type != "extract")) or not (steps or writers):
        data_inputs: dict[str, Any] = {}
        for s in steps:
            data_inputs[_noun(s["tool"]) if _noun(s["tool"]) not in data_inputs else s["id"]] = {
                "$ref": f"steps.{s['id']}.output"}
        for key in free_input:
            data_inputs.setdefault(key, {"$ref": f"goal.input.{key}"})
        model_step = _unique({"summarise": "write_summary", "write": "write_text", "classify": "classify",
                              "extract": "extract_facts"}[task_type], ids)
        steps.append({"id": model_step, "task_type": task_type, "instruction": _instruction(text),
                      "inputs": data_inputs, "depends_on": [s["id"] for s in steps]})

    outputs: dict[str, Any] = {}
    for tool in writers:
        inputs = _tool_inputs(tool, goal_input, facts, text, used_input, model_step=model_step)
        namespace, action = tool["name"].split(".")[0], tool["name"].split(".")[-1]
        step_id = _unique(f"{action}_{_singular(namespace)}" if "_" not in action else action, ids)
        steps.append({"id": step_id, "task_type": "act", "tool": tool["name"], "inputs": inputs,
                      "depends_on": [model_step] if model_step else [],
                      "side_effect": tool.get("side_effect", "write")})
        result = _singular(namespace) if "_" not in action else _singular(action.split("_", 1)[1])
        outputs[result if result not in outputs else step_id] = {"$ref": f"steps.{step_id}.output"}
    if model_step:
        name = {"classify": "label", "summarise": "summary"}.get(task_type, "text")
        outputs[name] = {"$ref": f"steps.{model_step}.output.text"}
    else:
        for step in steps:
            if step.get("side_effect") == "read":
                outputs.setdefault(_noun(step["tool"]), {"$ref": f"steps.{step['id']}.output"})
    return {"steps": steps, "outputs": outputs}


_ACTIONS = {"open": "create", "raise": "create", "file": "create", "log": "create", "add": "create",
            "create": "create", "new": "create", "close": "update", "change": "update", "update": "update",
            "resolve": "update", "reopen": "update"}


_CLAUSE_START = re.compile(r"(?:^|[,;.!?]|\band\b|\bthen\b|\bplease\b)\s*([a-z]+)", re.IGNORECASE)


def _imperatives(text: str) -> set[str]:
    """The verbs the goal gives as orders: the first word of each clause ("Prepare …, and send
    it …"), so "the open issues" or "the share price" order nothing."""
    return {m.group(1).lower() for m in _CLAUSE_START.finditer(text)}


def _action_asked(tool_name: str, words: set[str], orders: set[str]) -> bool:
    """The goal orders what a write tool does: its verb (or a synonym) and its object,
    e.g. "open an issue" for tracker.create_issue."""
    verb, _, obj = tool_name.split(".")[-1].partition("_")
    asked = {_ACTIONS.get(w, w) for w in orders}
    return verb in asked and (not obj or bool(keywords(obj) & words))


def _missing(tool: dict[str, Any], inputs: dict[str, Any]) -> set[str]:
    return set((tool.get("input_schema") or {}).get("required") or []) - set(inputs)


def _relevant(words: set[str], tool: dict[str, Any]) -> bool:
    """A tool is relevant when the goal names what it is called (a name word matches)."""
    return tool_score(words, tool["name"], "") > 0 and not (
        "noop" in tool["name"] and "echo" not in words and "noop" not in words
    )


def _wants_publishing(orders: set[str], raw_words: set[str]) -> bool:
    return bool(orders & _PUBLISH_INTENT) or ("report" in raw_words and bool(orders & _REPORT_MAKERS))


def _task_type(raw_words: set[str], goal_input: dict[str, Any]) -> str:
    if raw_words & _CLASSIFY:
        return "classify" if goal_input.get("labels") else "summarise"
    if raw_words & _SUMMARISE:
        return "summarise"
    if raw_words & _WRITE or raw_words & {"brief", "memo", "briefing"}:
        return "write"
    if raw_words & _EXTRACT:
        return "extract"
    return "summarise"


def _instruction(text: str) -> str:
    return text.strip().rstrip(".?!") or "Summarise the input data"


def _facts(text: str, today: date) -> dict[str, Any]:
    """Values the text states or implies: quarter, year, a count."""
    facts: dict[str, Any] = {}
    quarter = _QUARTER.search(text)
    phrase = _QUARTER_PHRASE.search(text)
    last_completed = (today.month - 1) // 3  # 0 means Q4 of last year
    if quarter:
        facts["quarter"] = int(quarter.group(1))
    elif phrase:
        facts["quarter"] = _QUARTER_WORDS[phrase.group(1).lower()]
    elif re.search(r"\bthis quarter\b|\bcurrent quarter\b", text, re.IGNORECASE):
        facts["quarter"] = (today.month - 1) // 3 + 1
    year = _YEAR.search(text)
    if year:
        facts["year"] = int(year.group(1))
    elif facts.get("quarter", 0) > (today.month - 1) // 3 + 1:
        facts["year"] = today.year - 1  # a quarter still to come this year means last year's
    if "quarter" not in facts:
        # a report is about a finished period: the last completed quarter
        facts["quarter"] = last_completed or 4
        facts.setdefault("year", today.year if last_completed else today.year - 1)
    facts.setdefault("year", today.year)
    facts["quarter"] = f"Q{facts['quarter']}"
    record_id = _RECORD_ID.search(text)
    if record_id:
        facts["record_id"] = record_id.group(0)
    facts["status"] = next((_STATUS_ORDERS[w] for w in sorted(_imperatives(text)) if w in _STATUS_ORDERS), None)
    count = _COUNT.search(text)
    if count:
        raw = count.group(1).lower()
        facts["limit"] = _NUMBER_WORDS.get(raw) or int(raw)
    return facts


def _tool_inputs(
    tool: dict[str, Any], goal_input: dict[str, Any], facts: dict[str, Any], text: str,
    used_input: set[str], model_step: str | None,
) -> dict[str, Any]:
    schema = tool.get("input_schema") or {}
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    inputs: dict[str, Any] = {}
    for name, prop in properties.items():
        prop = _resolve_schema(prop, schema)
        if name in goal_input:
            inputs[name] = {"$ref": f"goal.input.{name}"}
            used_input.add(name)
        elif model_step and name in _TEXT_INPUTS:
            inputs[name] = {"$ref": f"steps.{model_step}.output.text"}
        elif name in {"title", "subject", "headline"}:
            inputs[name] = _title(text, facts)
        elif name in facts and facts[name] is not None and not (name == "status" and facts[name] not in _enum(prop)):
            inputs[name] = facts[name]
        elif name.endswith("_id") and "record_id" in facts:
            inputs[name] = facts["record_id"]
        elif name in {"audience", "recipient", "recipients"} and (audience := _AUDIENCE.search(text)):
            inputs[name] = audience.group(1).lower()
        elif "enum" in prop:
            mentioned = [v for v in prop["enum"] if isinstance(v, str) and re.search(rf"\b{re.escape(v)}\b", text, re.I)]
            if mentioned:
                inputs[name] = mentioned[0]
            elif "default" not in prop and name in required:
                inputs[name] = prop["enum"][0]
        elif name in required and "default" in prop:
            inputs[name] = prop["default"]
    return inputs


def _enum(prop: dict[str, Any]) -> list[Any]:
    return list(prop.get("enum") or []) + [v for option in prop.get("anyOf", []) for v in option.get("enum", [])]


def _resolve_schema(prop: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**(root.get("$defs", {}).get(ref.split("/")[-1], {})), **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


_LEADING_VERB = re.compile(
    r"^(please\s+)?(prepare|publish|send|share|write|draft|create|produce|compile|make|post|distribute|open|raise|file|"
    r"circulate|deliver|email|summari[sz]e|classify)\s+((a|an|the|our)\s+)?",
    re.IGNORECASE,
)


def _title(text: str, facts: dict[str, Any]) -> str:
    title = _LEADING_VERB.sub("", _instruction(text)) or _instruction(text)
    return (title[:1].upper() + title[1:])[:200]


def _noun(tool_name: str) -> str:
    parts = tool_name.split(".")
    last = parts[-1]
    if last in {"get", "find", "read"} and len(parts) > 1:
        return _singular(parts[-2])  # one of them
    if last in {"list", "search", "query"} and len(parts) > 1:
        return parts[-2]
    for prefix in ("get_", "list_", "fetch_", "read_"):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _unique(step_id: str, taken: set[str]) -> str:
    step_id = re.sub(r"[^a-z0-9_]", "_", step_id.lower()).strip("_")[:60] or "step"
    if not step_id[0].isalpha():
        step_id = f"s_{step_id}"
    candidate, n = step_id, 2
    while candidate in taken:
        candidate, n = f"{step_id}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _today(goal: dict[str, Any]) -> date:
    try:
        return date.fromisoformat(str(goal.get("today"))[:10])
    except ValueError:
        return date.today()


# --- adapting a playbook -------------------------------------------------------------------


def _adapt(playbook: dict[str, Any], text: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The playbook's steps, minus steps whose tool is not available (and what depends on
    them), minus write steps when the goal does not ask to publish. None when nothing is left."""
    available = {t["name"] for t in tools}
    publish = _wants_publishing(_imperatives(text), set(re.findall(r"[a-z]+", text.lower())))
    steps = [dict(s) for s in playbook.get("steps", [])]
    dropped = {
        s["id"] for s in steps
        if (s.get("tool") and s["tool"] not in available)
        or (not publish and s.get("side_effect", "read") != "read")
    }
    blocked = [s for s in steps if publish and s.get("side_effect", "read") != "read" and s.get("tool") not in available]
    if blocked:
        return {"cannot_plan": f"the goal asks to publish, but no permitted tool publishes "
                               f"(the playbook uses {blocked[0].get('tool')}): {text!r}"}
    kept, dropped = _prune(steps, dropped)
    if not kept:
        return None
    outputs = {k: v for k, v in (playbook.get("outputs") or {}).items() if not (_refs_to_steps(v) & dropped)}
    return {"steps": kept, "outputs": outputs or _default_outputs(kept)}


def _prune(steps: list[dict[str, Any]], dropped: set[str]) -> tuple[list[dict[str, Any]], set[str]]:
    """Steps without `dropped` ones: inputs they fed are removed; a tool step missing an input
    goes too, and so does a model step left with no input at all (transitively)."""
    dropped = set(dropped)
    while True:
        kept: list[dict[str, Any]] = []
        more: set[str] = set()
        for step in steps:
            if step["id"] in dropped:
                continue
            inputs = {k: v for k, v in step.get("inputs", {}).items() if not (_refs_to_steps(v) & dropped)}
            lost = len(inputs) < len(step.get("inputs", {}))
            needs_dropped = bool(set(step.get("depends_on", [])) & dropped)
            if (lost and (step.get("tool") or not inputs)) or (needs_dropped and step.get("tool")):
                more.add(step["id"])
                continue
            depends = [d for d in dict.fromkeys([*step.get("depends_on", []), *_refs_to_steps(inputs)]) if d not in dropped]
            kept.append({**step, "inputs": inputs, "depends_on": depends})
        if not more:
            return kept, dropped
        dropped |= more


def _refs_to_steps(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        if set(value) == {"$ref"} and isinstance(value["$ref"], str):
            parts = value["$ref"].split(".")
            if parts[0] == "steps" and len(parts) > 1:
                found.add(parts[1])
        else:
            for item in value.values():
                found |= _refs_to_steps(item)
    elif isinstance(value, list):
        for item in value:
            found |= _refs_to_steps(item)
    return found


def _default_outputs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    last = steps[-1]
    suffix = ".text" if not last.get("tool") else ""
    return {"result": {"$ref": f"steps.{last['id']}.output{suffix}"}}


# --- revising a plan after a permanent step failure ----------------------------------------


def _replan(replan: dict[str, Any]) -> dict[str, Any]:
    """Keep what succeeded, go on without the failed step: inputs fed by it are dropped, tool
    steps that cannot run without them go too. A failed write is not worked around."""
    current = replan.get("plan") or {}
    steps = [dict(s) for s in current.get("steps", [])]
    failed = (replan.get("failed") or {}).get("step_id")
    failed_step = next((s for s in steps if s["id"] == failed), None)
    if failed_step is None:
        return {"cannot_plan": f"the failed step {failed!r} is not in the plan"}
    reason = ((replan.get("failed") or {}).get("error") or {}).get("message", "it failed")
    if failed_step.get("side_effect", "read") != "read":
        return {"cannot_plan": f"step {failed} ({failed_step.get('tool')}) changes a business system and failed "
                               f"for good ({reason}); a person should decide what to do"}
    revised, dropped = _prune(steps, {failed})
    outputs = {k: v for k, v in (current.get("outputs") or {}).items() if not (_refs_to_steps(v) & dropped)}
    if not outputs:
        return {"cannot_plan": f"without step {failed} ({reason}) the plan has no result left"}
    return {"steps": revised, "outputs": outputs}
