"""`goalrail audit verify|show|goals` and `goalrail kpis` over a store filled through AuditStore."""

from __future__ import annotations

import asyncio
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import shared.cli_audit as cli_audit
from services.auditor.app import DATABASE
from services.auditor.store import AuditStore
from shared.cli import app
from shared.store import open_database, reset_memory_stores
from tests.factories import fill, tamper

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli_audit, "console", Console(width=220))
    reset_memory_stores()
    yield
    reset_memory_stores()


def test_verify_says_intact_for_an_untouched_chain(tmp_path):
    url = f"embedded://{tmp_path / 'store'}"
    fill(url)
    result = runner.invoke(app, ["audit", "verify", "goal-1", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "audit chain of goal-1 intact" in result.output and "5 records" in result.output


def test_verify_names_the_first_tampered_record():
    fill("memory://")
    tamper("memory://", "goal-1:plan", {"event.goal_text": "Prepare nothing"})
    tamper("memory://", "goal-1:outcome", {"event.cycle_time_s": 0.1})
    result = runner.invoke(app, ["audit", "verify", "goal-1", "--mongo-url", "memory://"])
    assert result.exit_code == 1, result.output
    assert "broken at seq 2" in result.output
    assert "goalrail.plan.created" in result.output and "changed" in result.output

    as_json = runner.invoke(app, ["audit", "verify", "goal-1", "--mongo-url", "memory://", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["broken"]["seq"] == 2


def test_verify_notices_a_deleted_record():
    fill("memory://")
    collection = open_database("memory://", DATABASE)["audit"]
    asyncio.run(collection.delete_many({"_id": "goal-1:write_summary:1:failed"}))
    result = runner.invoke(app, ["audit", "verify", "goal-1", "--mongo-url", "memory://"])
    assert result.exit_code == 1
    assert "broken at seq 4" in result.output and "missing" in result.output


def test_verify_of_an_unknown_goal_exits_2():
    fill("memory://")
    result = runner.invoke(app, ["audit", "verify", "goal-nope", "--mongo-url", "memory://"])
    assert result.exit_code == 2 and "no audit records" in result.output


def test_show_prints_the_timeline():
    fill("memory://")
    result = runner.invoke(app, ["audit", "show", "goal-1", "--mongo-url", "memory://"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("goal.submitted", "plan.created", "playbook:quarterly-sales-report: 1 steps", "step.failed",
                 "write_summary#1", "write_summary#2", "model goalrail/offline-writer", "0.0123",
                 "UPSTREAM_TIMEOUT: model slow", "goal.completed", "executor", "chain intact"):
        assert text in out, text
    assert out.index("goal.submitted") < out.index("plan.created") < out.index("goal.completed")


def test_stored_records_are_redacted_and_still_verify():
    fill("memory://")
    records = asyncio.run(AuditStore(open_database("memory://", DATABASE)).records("goal-1"))
    assert records[0].event["goal"]["requester"] == "[REDACTED:email]"
    assert records[0].event["goal_id"] == "goal-1"
    result = runner.invoke(app, ["audit", "verify", "goal-1", "--mongo-url", "memory://"])
    assert result.exit_code == 0


def test_kpis_table_and_json():
    fill("memory://", "goal-1")
    fill("memory://", "goal-2")
    result = runner.invoke(app, ["kpis", "--mongo-url", "memory://"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "playbook:quarterly-sales-report" in line)
    for cell in ("480 min", "1.5 s", ">99.9%", "100%", "0%", "$0.0123"):
        assert cell in line, cell
    data = json.loads(runner.invoke(app, ["kpis", "--mongo-url", "memory://", "--json"]).output)
    [row] = data["processes"]
    assert row["goals"] == 2 and row["retry_rate"] == 1.0 and row["mean_cycle_time_s"] == 1.5

    goals = runner.invoke(app, ["audit", "goals", "--mongo-url", "memory://"])
    assert "goal-1" in goals.output and "goal-2" in goals.output and "completed" in goals.output


def test_verify_notices_a_relabelled_record():
    fill("memory://")
    tamper("memory://", "goal-1:write_summary:1:failed", {"event_type": "goalrail.step.succeeded"})
    result = runner.invoke(app, ["audit", "verify", "goal-1", "--mongo-url", "memory://"])
    assert result.exit_code == 1
    assert "broken at seq 3" in result.output and "differs from the hashed event" in result.output
