"""The goals `goalrail bench` submits and the playbooks their words select."""

from __future__ import annotations

from typing import Any

# all_words [benchmark, chain]: playbooks/benchmark_chain.yaml, five no-op steps
FAST_CHAIN_TEXT = "Run the benchmark chain"
FAST_CHAIN_PLAYBOOK = "benchmark-chain"
# all_words [benchmark, slow, steps]: playbooks/benchmark_slow_chain.yaml, five noop.sleep steps;
# without "chain", so the no-op chain cannot match it too
SLOW_CHAIN_TEXT = "Run the benchmark of slow steps"
SLOW_CHAIN_PLAYBOOK = "benchmark-slow-chain"
REQUESTER = "bench"
TENANT = "bench"


def goal_text(text: str, goal_id: str) -> str:
    """A goal's text with its id, so each goal of a run reads differently in logs and audits."""
    return f"{text} ({goal_id})"


def slow_goal_input(step_ms: int) -> dict[str, Any]:
    """The slow chain's playbook passes `ms` on to every step's noop.sleep."""
    return {"ms": step_ms}
