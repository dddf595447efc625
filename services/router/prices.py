"""Model prices from litellm's bundled cost map, read as data: the router prices candidates
without importing litellm (seconds of start-up and some 200 MB) — the same figures litellm
charges with, as litellm itself reads them with LITELLM_LOCAL_MODEL_COST_MAP=True."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from services.router.routing import Candidate, Price, table_price

COST_MAP = "model_prices_and_context_window_backup.json"


def cost_map_path() -> Path | None:
    """Where the installed litellm keeps its cost map; None without litellm. find_spec of a
    top-level package locates it without executing it."""
    spec = importlib.util.find_spec("litellm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / COST_MAP
        if path.is_file():
            return path
    return None


@functools.cache
def _prices() -> dict[str, Price]:
    """Model string -> per-token prices, read once, on the first price asked for. Only the
    prices are kept: the whole map is megabytes of JSON."""
    path = cost_map_path()
    if path is None:
        return {}
    try:
        cost_map = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    prices = {model: _price(entry) for model, entry in cost_map.items()}
    return {model: price for model, price in prices.items() if price is not None}


def _price(entry: Any) -> Price | None:
    """An entry's prices; None for entries that price by something else (images, seconds…)."""
    if not isinstance(entry, dict) or "input_cost_per_token" not in entry:
        return None
    try:
        return float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token", 0.0))
    except (TypeError, ValueError):
        return None


def litellm_price(candidate: Candidate) -> Price | None:
    """Table overrides first, then litellm's entry for the model string (with or without its
    provider prefix); None when nobody knows the price."""
    known = table_price(candidate)
    if known is not None:
        return known
    prices = _prices()
    for key in (candidate.model, candidate.model.split("/", 1)[-1]):
        if key in prices:
            return prices[key]
    return None
