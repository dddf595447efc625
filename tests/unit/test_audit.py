"""Auditor domain: the per-goal hash chain, tamper detection, the official outcome; the audit
repository and handler on an in-memory store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from services.auditor.audit import GENESIS, chain, first_broken_link, outcome_for, record_hash
from services.auditor.handlers import AuditorDeps, handle
from shared.events import (
    Binding,
    ErrorCode,
    EventRejected,
    GoalCompleted,
    GoalFailed,
    GoalSpec,
    GoalSubmitted,
    PlanFinished,
    Step,
    StepReady,
    StepSucceeded,
    TypedError,
    Usage,
)
from tests.factories import audit_store  # noqa: F401 (a fixture)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
ERROR = TypedError(code=ErrorCode.UPSTREAM_ERROR, message="sales system down")


def goal(goal_id: str = "g") -> GoalSubmitted:
    return GoalSubmitted(id=f"{goal_id}:submitted", goal_id=goal_id, tenant="acme", time=T0,
                         goal=GoalSpec(text="Prepare the Q3 sales report", requester="finance"))


def events(goal_id: str = "g") -> list:
    root = goal(goal_id)
    step = Step(id="s", task_type="act", tool="noop.echo")
    ready = root.derive(StepReady, f"{goal_id}:s:1:ready", "planner", plan_id="p", step=step)
    done = ready.derive(StepSucceeded, f"{goal_id}:s:1:succeeded", "executor", plan_id="p", step_id="s",
                        attempt=1, output={"ok": True}, binding=Binding(kind="tool", tool="noop.echo", reason="r"))
    return [root, ready, done, finished(root, "completed")]


def finished(cause, status: str, **fields) -> PlanFinished:
    return cause.derive(PlanFinished, f"{cause.goal_id}:plan:finished", "planner", plan_id="p", status=status,
                        submitted_at=T0, step_states={"a": "succeeded", "b": "succeeded" if status == "completed" else "failed"},
                        retries=1,
                        usage=Usage(input_tokens=7), **fields)


def linked(evs: list) -> list:
    records, previous = [], None
    for event in evs:
        previous = chain(event, previous)
        records.append(previous)
    return records


# --- the chain -----------------------------------------------------------------------------


def test_chain_links_each_record_to_the_one_before():
    records = linked(events())
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for before, after in zip(records, records[1:]):
        assert after.prev_hash == before.hash
    assert len({r.hash for r in records}) == 4
    first = records[0]
    assert (first.event_id, first.goal_id, first.event_type, first.source, first.time) == (
        "g:submitted", "g", "goalrail.goal.submitted", "goalrail", T0)
    assert first.hash == record_hash(1, GENESIS, first.event)


def test_chain_is_deterministic():
    evs = events()
    assert [r.hash for r in linked(evs)] == [r.hash for r in linked(evs)]


def test_intact_chain_has_no_broken_link():
    records = linked(events())
    assert first_broken_link(records) is None
    assert first_broken_link(list(reversed(records))) is None  # order of reading does not matter
    assert first_broken_link([]) is None


def test_tampered_event_body_is_found_at_its_seq():
    records = linked(events())
    records[2].event["output"] = {"ok": False}
    assert first_broken_link(records) == 3


def test_tampered_payload_in_the_first_record_is_found():
    records = linked(events())
    records[0].event["goal"]["text"] = "Wire EUR 1M to an unknown account"
    assert first_broken_link(records) == 1


def test_broken_prev_hash_is_found_at_its_seq():
    records = linked(events())
    records[1] = records[1].model_copy(update={"prev_hash": "f" * 64})
    assert first_broken_link(records) == 2


def test_rehashed_record_still_breaks_the_next_link():
    """Whoever edits a record and fixes its own hash breaks the link of the next record."""
    records = linked(events())
    body = {**records[1].event, "attempt": 9}
    records[1] = records[1].model_copy(update={"event": body, "hash": record_hash(2, records[1].prev_hash, body)})
    assert first_broken_link(records) == 3


def test_missing_record_is_found_at_the_next_seq():
    records = linked(events())
    del records[1]
    assert first_broken_link(records) == 3
    assert first_broken_link(linked(events())[1:]) == 2  # the first one missing


def test_duplicate_seq_is_a_broken_link():
    records = linked(events())
    assert first_broken_link([*records, records[3]]) == 4


# --- outcomes ------------------------------------------------------------------------------


def test_completed_plan_becomes_goal_completed():
    plan_done = finished(goal(), "completed", outputs={"report": {"report_id": "rpt-1"}})
    (outcome,) = outcome_for(plan_done, T0 + timedelta(seconds=90), "ab" * 16)
    assert isinstance(outcome, GoalCompleted)
    assert outcome.id == "g:outcome" and outcome.causation_id == "g:plan:finished"
    assert outcome.outputs == {"report": {"report_id": "rpt-1"}}
    assert outcome.cycle_time_s == 90.0 and outcome.steps == 2 and outcome.retries == 1
    assert outcome.trace_id == "ab" * 16 and outcome.usage.input_tokens == 7
    assert outcome.topic.value == "goals.outcomes"


def test_failed_plan_becomes_goal_failed_with_its_error():
    plan_failed = finished(goal(), "failed", error=ERROR)
    (outcome,) = outcome_for(plan_failed, T0 + timedelta(seconds=3), None)
    assert isinstance(outcome, GoalFailed) and outcome.id == "g:outcome"
    assert outcome.error == ERROR and outcome.cycle_time_s == 3.0


def test_rejected_goal_submission_becomes_goal_failed():
    rejected = EventRejected(goal_id="g", tenant="acme", rejected_by="planner", source_topic="goals.submitted",
                             partition=0, offset=3, error=TypedError(code=ErrorCode.INVALID_EVENT, message="bad"))
    (outcome,) = outcome_for(rejected, T0, None)
    assert isinstance(outcome, GoalFailed) and outcome.error.code is ErrorCode.INVALID_EVENT


def test_other_events_settle_nothing():
    rejected_step = EventRejected(goal_id="g", tenant="acme", rejected_by="router", source_topic="steps.ready",
                                  partition=0, offset=3, error=ERROR)
    for event in [*events()[:3], rejected_step]:
        assert outcome_for(event, T0, None) == []


# --- repository and handler ----------------------------------------------------------------


async def test_store_appends_once_per_event_id_and_reads_in_seq_order(audit_store):
    records = linked(events())
    for record in reversed(records):
        assert await audit_store.append(record, []) is True
    assert await audit_store.append(records[0], []) is False  # the same event id again
    assert [r.seq for r in await audit_store.records("g")] == [1, 2, 3, 4]
    assert (await audit_store.head("g")).seq == 4
    assert await audit_store.head("other") is None
    assert await audit_store.records("other") == []


async def test_store_refuses_a_second_record_at_the_same_place(audit_store):
    first, = linked(events()[:1])
    rival = chain(events("g")[1], None)  # a different event that also thinks it is seq 1
    assert await audit_store.append(first, []) is True
    assert await audit_store.append(rival, []) is False
    assert [r.event_id for r in await audit_store.records("g")] == ["g:submitted"]


async def test_store_keeps_the_outbox_of_each_event(audit_store):
    event = finished(goal(), "failed", error=ERROR)
    outbox = outcome_for(event, T0, None)
    await audit_store.append(chain(event, None), outbox)
    assert await audit_store.outbox_of(event.id) == outbox
    assert await audit_store.outbox_of("unknown") is None


async def test_handler_chains_every_event_and_publishes_the_outcome_once(audit_store):
    deps = AuditorDeps(store=audit_store, clock=lambda: T0 + timedelta(seconds=5))
    evs = events()
    outboxes = [await handle(e, deps) for e in evs]
    assert outboxes[:3] == [[], [], []]
    (outcome,) = outboxes[3]
    assert isinstance(outcome, GoalCompleted) and outcome.cycle_time_s == 5.0
    assert await handle(evs[3], deps) == outboxes[3]  # a redelivery: the same outcome, no new record
    assert await handle(evs[0], deps) == []
    records = await audit_store.records("g")
    assert [r.event_id for r in records] == [e.id for e in evs]
    assert first_broken_link(records) is None


async def test_chains_of_different_goals_are_independent(audit_store):
    deps = AuditorDeps(store=audit_store, clock=lambda: T0)
    for a, b in zip(events("g1"), events("g2")):
        await handle(a, deps)
        await handle(b, deps)
    for goal_id in ("g1", "g2"):
        records = await audit_store.records(goal_id)
        assert [r.seq for r in records] == [1, 2, 3, 4] and first_broken_link(records) is None


async def test_two_auditors_with_stale_heads_keep_one_intact_chain(audit_store):
    # two replicas, each remembering the head it appended last: every other append finds its
    # remembered head stale, collides on (goal_id, seq) and reads the head again
    first = AuditorDeps(store=audit_store, clock=lambda: T0)
    second = AuditorDeps(store=audit_store, clock=lambda: T0)
    evs = events()
    for index, event in enumerate(evs):
        await handle(event, first if index % 2 == 0 else second)
    await handle(evs[1], first)  # a redelivery to the other replica adds nothing
    records = await audit_store.records("g")
    assert [r.seq for r in records] == list(range(1, len(evs) + 1))
    assert [r.event_id for r in records] == [e.id for e in evs]
    assert first_broken_link(records) is None
