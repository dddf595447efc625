"""The slow benchmark chain: its goals' words select it and only it, and the step time in the
goal's input reaches every noop.sleep call."""

from __future__ import annotations

from datetime import datetime, timezone

from services.planner.planning import choose_playbook, load_playbooks, plan_from_playbook, validate_plan
from shared.embedded.bench_goals import (
    FAST_CHAIN_PLAYBOOK,
    FAST_CHAIN_TEXT,
    SLOW_CHAIN_PLAYBOOK,
    SLOW_CHAIN_TEXT,
    goal_text,
    slow_goal_input,
)
from shared.settings import CONFIG_DIR
from shared.tools.catalogue import PYTHON_TOOLS, SleepInput

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
PLAYBOOKS = load_playbooks(CONFIG_DIR / "playbooks")
TOOLS = [fn.__goalrail_tool__.spec.name for fn in PYTHON_TOOLS]


def slow_plan(goal_input: dict):
    playbook, found = choose_playbook(goal_text(SLOW_CHAIN_TEXT, "bench-slow-00001"), PLAYBOOKS, None)
    return validate_plan(plan_from_playbook(playbook, found, goal_input, "g:plan", NOW), TOOLS, None)


def test_slow_goals_select_the_slow_chain_and_the_no_op_chain_does_not_match_them():
    playbook, _ = choose_playbook(goal_text(SLOW_CHAIN_TEXT, "bench-slow-00001"), PLAYBOOKS, None)
    assert playbook.name == SLOW_CHAIN_PLAYBOOK
    assert PLAYBOOKS[FAST_CHAIN_PLAYBOOK].matches(SLOW_CHAIN_TEXT) is None


def test_fast_goals_still_select_the_no_op_chain_alone():
    for goal_id in ("bench-c8-00001", "bench-warmup", "preload-000001"):
        playbook, _ = choose_playbook(goal_text(FAST_CHAIN_TEXT, goal_id), PLAYBOOKS, None)
        assert playbook.name == FAST_CHAIN_PLAYBOOK
    assert PLAYBOOKS[SLOW_CHAIN_PLAYBOOK].matches(FAST_CHAIN_TEXT) is None


def test_the_step_time_of_the_goal_input_reaches_every_sleep():
    plan = slow_plan(slow_goal_input(120))
    assert [step.tool for step in plan.steps] == ["noop.sleep"] * 5
    assert [step.inputs for step in plan.steps] == [{"ms": 120}] * 5
    assert SleepInput.model_validate(plan.steps[0].inputs).ms == 120


def test_without_an_input_each_step_sleeps_half_a_second():
    assert {step.inputs["ms"] for step in slow_plan({}).steps} == {500}


def test_the_slow_steps_run_one_after_another():
    plan = slow_plan(slow_goal_input(100))
    assert [step.depends_on for step in plan.steps] == [[], ["step_1"], ["step_2"], ["step_3"], ["step_4"]]
