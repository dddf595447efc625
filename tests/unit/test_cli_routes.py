"""`goalrail routes explain|check`: the table, the learned statistics and the current choice."""

from __future__ import annotations

import asyncio
import time
import uuid

from typer.testing import CliRunner

from services.router.routing import ModelStats
from services.router.store import RouterStore
from shared.cli import app
from shared.store import open_database

TABLE = """
default: {candidates: [{model: goalrail/offline-writer}]}
task_types:
  write:
    candidates:
      - {model: openai/gpt-4o, max_cost_usd: 0.5, max_latency_s: 20, max_context_tokens: 128000}
      - {model: openai/gpt-4o-mini}
      - {model: ollama/llama3, api_base: "http://127.0.0.1:11434", data_classes: [public, internal, pii]}
"""


def run(*args: str):
    return CliRunner().invoke(app, ["routes", *args], env={"COLUMNS": "200"})


def test_explain_prints_candidates_limits_and_the_current_choice(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(TABLE)
    result = run("explain", "write", "--table", str(path))
    assert result.exit_code == 0, result.output
    for text in ("openai/gpt-4o", "openai/gpt-4o-mini", "ollama/llama3", "$0.5", "20s", "128,000", "pii",
                 "$0.15, $0.6", "table only"):
        assert text in result.output
    assert "now: ollama/llama3" in result.output  # free local model is the cheapest
    pii = run("explain", "write", "--table", str(path), "-d", "pii")
    assert "now: ollama/llama3 → fallbacks []" in pii.output


def test_explain_shows_learned_statistics_from_the_router_store(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(TABLE)
    url = f"memory://{uuid.uuid4().hex}"
    store = RouterStore(open_database(url, "goalrail_router"))
    sick = ModelStats().failed(time.time()).failed(time.time()).failed(time.time())
    asyncio.run(store.save_stats("ollama/llama3", sick))
    asyncio.run(store.save_stats("openai/gpt-4o-mini", ModelStats().succeeded(1200, 0.0004)))
    result = run("explain", "write", "--table", str(path), "--mongo-url", url)
    assert result.exit_code == 0, result.output
    assert "learned statistics" in result.output and "$0.000400" in result.output and "1.20s" in result.output
    assert "no (3 failures in a row)" in result.output
    assert "now: openai/gpt-4o-mini" in result.output and "ollama/llama3 (unhealthy" in result.output


def test_explain_rejects_unknown_task_types_and_invalid_tables(tmp_path):
    assert run("explain", "poetry").exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {candidates: [{model: x/y, max_cost_usd: -1}]}\n")
    result = run("check", "--table", str(bad))
    assert result.exit_code == 2 and "candidate 1 (x/y), max_cost_usd" in result.output
    assert run("check").exit_code == 0
