"""Model prices from litellm's bundled cost map, read as data: the router prices candidates
without importing litellm (seconds of start-up) — the same figures litellm charges with."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from services.router.routing import Candidate, Price, table_price

COST_MAP = "model_prices_and_context_window_backup.json"


@functools.cache
def _cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    try:
        return json.loads((Path(spec.origin).parent / COST_MAP).read_text())
    except (OSError, ValueError):
        return {}


def litellm_price(candidate: Candidate) -> Price | None:
    """Table overrides first, then litellm's entry for the model string (with or without its
    provider prefix); None when nobody knows the price."""
    known = table_price(candidate)
    if known is not None:
        return known
    cost_map = _cost_map()
    for key in (candidate.model, candidate.model.split("/", 1)[-1]):
        entry = cost_map.get(key)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token", 0.0))
    return None
