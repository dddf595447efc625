"""CLI help and the exported event contract."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shared.cli import app
from shared.events import EVENT_TYPES, Topic

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "up", "goal", "outcomes", "schema", "service", "bench"):
        assert command in result.output


def test_schema_export_writes_asyncapi_and_one_json_schema_per_event(tmp_path):
    result = runner.invoke(app, ["schema", "export", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "asyncapi.json").read_text())
    assert spec["asyncapi"].startswith("3.")
    assert {t.value for t in Topic if t.value in spec["channels"]} >= {
        "goals.submitted", "goals.outcomes", "steps.results"
    }
    for event_type in EVENT_TYPES:
        schema = json.loads((tmp_path / f"{event_type.__name__}.schema.json").read_text())
        assert schema["x-topic"] == event_type.topic.value
        assert "goal_id" in schema["required"]


def test_committed_contract_matches_the_models(tmp_path):
    """docs/schema is what other languages read: it must not drift from the models."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[2] / "docs" / "schema"
    runner.invoke(app, ["schema", "export", "--out", str(tmp_path)])
    for fresh in tmp_path.glob("*.schema.json"):
        assert json.loads((committed / fresh.name).read_text()) == json.loads(fresh.read_text()), (
            f"{fresh.name} is stale: run `make schema`"
        )
