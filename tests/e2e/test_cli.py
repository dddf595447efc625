"""The `goalrail` commands a person types, against the running embedded stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

GOALRAIL = [sys.executable, "-m", "shared.cli"]


def test_goal_submit_wait_prints_the_outcome_and_outcomes_lists_it(shared_stack):
    bootstrap = shared_stack.stack.bootstrap
    submitted = subprocess.run(
        [*GOALRAIL, "goal", "submit", "Prepare the Q2 sales report", "--wait", "-b", bootstrap, "--tenant", "acme",
         "--input", '{"year": 2025}'],
        capture_output=True, text=True, timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    outcome = json.loads(submitted.stdout)
    assert outcome["type"] == "goalrail.goal.completed"
    assert outcome["outputs"]["report"]["title"] == "Q2 2025 sales report"

    listed = subprocess.run(
        [*GOALRAIL, "outcomes", "--no-follow", "--from-beginning", "-b", bootstrap],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    goal_ids = [json.loads(line)["goal_id"] for line in listed.stdout.splitlines() if line.strip()]
    assert outcome["goal_id"] in goal_ids


def test_goal_submit_rejects_bad_input_json_with_a_clear_message():
    result = subprocess.run(
        [*GOALRAIL, "goal", "submit", "Prepare the Q2 sales report", "--input", "{not json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--input is not JSON" in result.stderr
