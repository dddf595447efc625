"""Goals side by side across the four service processes: one goal that hangs — in its planning
call, or in a slow step — holds only itself. Other goals, also goals on the same partition as
the hanging one, are planned, executed and completed meanwhile; the hanging goal completes once
its call returns.

The planning model is a fake OpenAI-compatible server whose answer the test holds back (the
`plan` route of the routing table points at it); the slow step is `noop.sleep` in a playbook of
this module. The fast goals are benchmark-chain playbook goals (no model to plan them).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from aiokafka.partitioner import DefaultPartitioner

from shared.client import GoalrailClient
from shared.embedded.stack import EmbeddedStack, fresh_workdir
from shared.events import GoalCompleted, StepDispatched, Topic
from shared.settings import CONFIG_DIR
from tests.fakes.openai_server import FakeOpenAI, Held

pytestmark = pytest.mark.e2e

PLAN_MODEL = "held-planner"
MODEL_GOAL = "Draft a note for the side by side probe"  # no playbook matches: the model plans it
FAST_GOAL = "Run the benchmark chain"
NAP_GOAL = "Take the sleepy errand"
NAP_MS = 10_000  # the slow step; six fast goals take about half a second together
# what the planning model answers once released: one no-op step
HELD_PLAN = {"steps": [{"id": "note", "task_type": "extract", "tool": "noop.echo", "inputs": {"note": "held"}}],
             "outputs": {"note": {"$ref": "steps.note.output"}}}
SLEEPY_PLAYBOOK = {
    "name": "sleepy-errand",
    "description": "One slow step, then a quick one (side-by-side tests).",
    "match": {"all_words": ["sleepy", "errand"]},
    "steps": [
        {"id": "nap", "task_type": "extract", "tool": "noop.sleep", "inputs": {"ms": NAP_MS}},
        {"id": "wake", "task_type": "extract", "tool": "noop.echo", "inputs": {"after": {"$ref": "steps.nap.output"}}},
    ],
    "outputs": {"woke": {"$ref": "steps.wake.output"}},
}
PARTITIONS = 4


class SideBySideStack(NamedTuple):
    stack: EmbeddedStack
    model: FakeOpenAI


@pytest.fixture(scope="module")
def side_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SideBySideStack]:
    """The whole stack with the `plan` route on the fake model and the sleepy playbook added to
    the default ones; shared by this module's tests (each uses goals of its own)."""
    root = tmp_path_factory.mktemp("side_by_side")
    playbooks = root / "playbooks"
    shutil.copytree(CONFIG_DIR / "playbooks", playbooks)
    (playbooks / "sleepy_errand.yaml").write_text(yaml.safe_dump(SLEEPY_PLAYBOOK))
    with FakeOpenAI() as model:
        table = yaml.safe_load((CONFIG_DIR / "routing.yaml").read_text())
        table["task_types"]["plan"] = {"candidates": [{
            "model": f"openai/{PLAN_MODEL}", "api_base": model.base_url, "api_key_env": "FAKE_OPENAI_KEY",
            "input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7, "data_classes": ["public", "internal", "pii"],
        }]}
        (root / "routing.yaml").write_text(yaml.safe_dump(table))
        env = {"GOALRAIL_ROUTING_TABLE": str(root / "routing.yaml"), "GOALRAIL_PLAYBOOKS_DIR": str(playbooks),
               "FAKE_OPENAI_KEY": "test"}
        stack = EmbeddedStack(fresh_workdir(root / "stack"), partitions=PARTITIONS, extra_env=env)
        try:
            asyncio.run(stack.start())
            yield SideBySideStack(stack, model)
        finally:
            asyncio.run(stack.stop())


def partition_of(goal_id: str) -> int:
    """Where the producer puts a goal's events (keyed by goal id), on every topic."""
    everything = list(range(PARTITIONS))
    return DefaultPartitioner()(goal_id.encode(), everything, everything)


def neighbours_and_others(goal_id: str, prefix: str, each: int = 3) -> list[str]:
    """Goal ids: `each` on the partition of `goal_id` and `each` on other partitions."""
    same, other, n = [], [], 0
    while len(same) < each or len(other) < each:
        candidate = f"{prefix}-{n}"
        (same if partition_of(candidate) == partition_of(goal_id) else other).append(candidate)
        n += 1
    return same[:each] + other[:each]


async def no_outcome_yet(client: GoalrailClient, goal_id: str) -> bool:
    try:
        await client.wait_for_outcome(goal_id, timeout=0.3)
    except TimeoutError:
        return True  # a later outcome is still kept for the next wait
    return False


async def test_other_goals_complete_while_one_goals_planning_call_hangs(side_stack):
    stack, model = side_stack
    release = threading.Event()
    model.script(PLAN_MODEL, [Held(release, HELD_PLAN)])
    model.reset()
    slow_id = "held-plan-goal"
    try:
        async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
            await client.watch_outcomes()
            await client.submit(MODEL_GOAL, requester="probe", goal_id=slow_id)
            deadline = time.monotonic() + 60
            while model.count(PLAN_MODEL) == 0:  # the planner is inside the planning call
                assert time.monotonic() < deadline, "the planner never called the planning model"
                await asyncio.sleep(0.05)

            fast_ids = neighbours_and_others(slow_id, "fast-while-planning")
            for goal_id in fast_ids:
                await client.submit(FAST_GOAL, requester="probe", goal_id=goal_id)
            outcomes = [await client.wait_for_outcome(goal_id, timeout=60) for goal_id in fast_ids]

            assert all(isinstance(o, GoalCompleted) for o in outcomes), outcomes
            # all of them, three on the hanging goal's partition, finished while it still plans:
            # the planning call is unanswered and was made once (no timeout, no retry)
            assert await no_outcome_yet(client, slow_id)
            assert model.count(PLAN_MODEL) == 1

            release.set()
            slow = await client.wait_for_outcome(slow_id, timeout=60)
    finally:
        release.set()
    assert isinstance(slow, GoalCompleted), slow
    assert slow.outputs["note"] == {"echo": {"note": "held"}}


async def test_other_goals_complete_while_one_goals_step_hangs(side_stack):
    stack, _ = side_stack
    slow_id = "napping-goal"
    async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
        await client.watch_outcomes()
        dispatched = client.follow([Topic.STEPS_DISPATCHED.value])
        await dispatched.start()
        try:
            await client.submit(NAP_GOAL, requester="probe", goal_id=slow_id)
            await asyncio.wait_for(_step_dispatched(dispatched, slow_id, "nap"), 60)
            napping_since = time.monotonic()
        finally:
            await dispatched.stop()

        fast_ids = neighbours_and_others(slow_id, "fast-while-napping")
        for goal_id in fast_ids:
            await client.submit(FAST_GOAL, requester="probe", goal_id=goal_id)
        outcomes = [await client.wait_for_outcome(goal_id, timeout=60) for goal_id in fast_ids]
        fast_done_after = time.monotonic() - napping_since

        assert all(isinstance(o, GoalCompleted) for o in outcomes), outcomes
        assert await no_outcome_yet(client, slow_id), (
            f"the fast goals finished {fast_done_after:.1f}s into the {NAP_MS / 1000:g}s step, after it: "
            "they waited behind it")
        slow = await client.wait_for_outcome(slow_id, timeout=60)

    assert isinstance(slow, GoalCompleted), slow
    assert slow.outputs["woke"] == {"echo": {"after": {"echo": {"ms": NAP_MS}}}}


async def _step_dispatched(stream, goal_id: str, step_id: str) -> None:
    async for received in stream:
        event = received.event
        if isinstance(event, StepDispatched) and event.goal_id == goal_id and event.step.id == step_id:
            return
