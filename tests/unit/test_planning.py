"""Planner domain (playbooks, validation, $ref resolution, DAG progress) and the planner's
handlers over its repository on an in-memory store: folding results, retries, replays."""

from __future__ import annotations

import uuid

import pytest

from services.planner.handlers import PlannerDeps, handle
from services.planner.planning import (
    PlanningError,
    Playbook,
    Progress,
    choose_playbook,
    load_playbooks,
    plan_from_playbook,
    resolve,
    validate_plan,
)
from services.planner.store import GoalRecord, PlanStore
from shared.events import (
    Constraints,
    ErrorCode,
    GoalSpec,
    GoalSubmitted,
    Plan,
    PlanCreated,
    PlanFinished,
    Step,
    StepReady,
    TypedError,
    Usage,
)
from shared.settings import CONFIG_DIR
from shared.store import open_database
from tests.factories import NOW, failed, goal_submitted, succeeded

SALES_GOAL = "Prepare the Q3 sales report for the board"
PLAYBOOKS = load_playbooks(CONFIG_DIR / "playbooks")
# the built-in catalogue's names, fixed here so planning tests do not depend on the tool layer
TOOLS = frozenset({"sales.get_figures", "crm.top_accounts", "reports.publish", "noop.echo"})


def sales_plan(goal_input: dict | None = None) -> Plan:
    playbook, found = choose_playbook(SALES_GOAL, PLAYBOOKS, None)
    plan = plan_from_playbook(playbook, found, goal_input or {}, "g:plan", NOW)
    return validate_plan(plan, TOOLS, None)


# --- playbooks -----------------------------------------------------------------------------


def test_builtin_playbooks_load():
    assert set(PLAYBOOKS) == {"quarterly-sales-report", "benchmark-chain", "benchmark-slow-chain", "vendor-payment"}


def test_demo_goal_matches_the_sales_playbook_with_its_quarter():
    playbook, found = choose_playbook(SALES_GOAL, PLAYBOOKS, None)
    assert playbook.name == "quarterly-sales-report"
    assert found == {"quarter": "Q3"}


def test_quarter_and_year_are_read_from_the_text_and_normalised():
    playbook, found = choose_playbook("prepare the q2 2025 SALES report", PLAYBOOKS, None)
    assert playbook.name == "quarterly-sales-report"
    assert found == {"quarter": "Q2", "year": "2025"}


def test_benchmark_goal_matches_the_benchmark_chain():
    playbook, found = choose_playbook("run the benchmark chain", PLAYBOOKS, None)
    assert playbook.name == "benchmark-chain"
    assert found == {}


def test_slow_benchmark_goal_matches_only_the_slow_chain():
    playbook, _ = choose_playbook("Run the benchmark of slow steps", PLAYBOOKS, None)
    assert playbook.name == "benchmark-slow-chain"


def test_required_words_must_all_be_whole_words():
    # "sales" alone, or "reports" instead of "report", is not enough
    for text in ("Prepare the Q3 sales deck", "Sales reports for Q3", "benchmark the chains"):
        with pytest.raises(PlanningError):
            choose_playbook(text, PLAYBOOKS, None)


def test_no_match_is_a_typed_no_plan_error():
    with pytest.raises(PlanningError) as info:
        choose_playbook("Book a flight to Lisbon", PLAYBOOKS, None)
    assert info.value.error.code is ErrorCode.NO_PLAN
    assert info.value.error.details["playbooks"] == [
        "benchmark-chain", "benchmark-slow-chain", "quarterly-sales-report", "vendor-payment"]
    assert "Lisbon" in info.value.error.message


def test_forced_playbook_wins_and_unknown_forced_is_no_plan():
    playbook, found = choose_playbook("anything at all", PLAYBOOKS, "benchmark-chain")
    assert playbook.name == "benchmark-chain" and found == {}
    with pytest.raises(PlanningError) as info:
        choose_playbook(SALES_GOAL, PLAYBOOKS, "nope")
    assert info.value.error.code is ErrorCode.NO_PLAN


def test_most_specific_playbook_wins():
    step = [{"id": "a", "task_type": "act", "tool": "noop.echo"}]
    general = Playbook.model_validate({"name": "general", "match": {"all_words": ["report"]}, "steps": step})
    specific = Playbook.model_validate(
        {"name": "specific", "match": {"all_words": ["sales", "report"]}, "steps": step}
    )
    for order in ({"general": general, "specific": specific}, {"specific": specific, "general": general}):
        assert choose_playbook("the sales report", order, None)[0].name == "specific"


def test_invalid_playbook_file_names_the_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\nsteps: [{id: BAD, task_type: act}]\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_playbooks(tmp_path)


# --- plan building and validation ----------------------------------------------------------


def test_sales_plan_substitutes_parameters_with_types():
    plan = sales_plan()
    assert plan.plan_id == "g:plan" and plan.source == "playbook:quarterly-sales-report"
    steps = {s.id: s for s in plan.steps}
    assert [s.id for s in plan.steps] == ["fetch_figures", "fetch_accounts", "write_summary", "publish_report"]
    assert steps["fetch_figures"].inputs == {"quarter": "Q3", "year": 2026}  # current year, as an int
    assert steps["fetch_accounts"].inputs == {"quarter": "Q3", "year": 2026, "limit": 3}
    assert steps["write_summary"].instruction == "Summarise Q3 2026 sales performance for the board"
    assert steps["publish_report"].inputs["title"] == "Q3 2026 sales report"
    assert steps["publish_report"].side_effect == "write"


def test_goal_input_overrides_playbook_and_text_parameters():
    plan = sales_plan({"year": 2024, "audience": "management"})
    steps = {s.id: s for s in plan.steps}
    assert steps["fetch_figures"].inputs == {"quarter": "Q3", "year": 2024}
    assert steps["publish_report"].inputs["audience"] == "management"
    assert steps["write_summary"].instruction.endswith("for the management")


def test_validation_adds_dependencies_implied_by_references():
    steps = {s.id: s for s in sales_plan().steps}
    assert steps["fetch_figures"].depends_on == []
    assert steps["write_summary"].depends_on == ["fetch_figures", "fetch_accounts"]
    assert steps["publish_report"].depends_on == ["write_summary"]


def _plan(*steps: dict, outputs: dict | None = None) -> Plan:
    return Plan(plan_id="p", source="test", steps=[Step.model_validate(s) for s in steps], outputs=outputs or {})


@pytest.mark.parametrize(
    ("plan", "problem"),
    [
        (_plan({"id": "a", "task_type": "act", "tool": "no.such_tool"}), "unknown tool 'no.such_tool'"),
        (_plan({"id": "a", "task_type": "write"}), "needs a tool or a model instruction"),
        (_plan({"id": "a", "task_type": "act", "tool": "noop.echo"},
               {"id": "a", "task_type": "act", "tool": "noop.echo"}), "duplicate step ids: ['a']"),
        (_plan({"id": "a", "task_type": "act", "tool": "noop.echo", "inputs": {"x": {"$ref": "steps.zz.output"}}}),
         "reference 'steps.zz.output' does not resolve"),
        (_plan({"id": "a", "task_type": "act", "tool": "noop.echo"},
               {"id": "b", "task_type": "act", "tool": "noop.echo", "inputs": {"x": {"$ref": "steps.a.result"}}}),
         "reference 'steps.a.result' does not resolve"),
        (_plan({"id": "a", "task_type": "act", "tool": "noop.echo", "depends_on": ["ghost"]}),
         "depends on unknown steps ['ghost']"),
        (_plan({"id": "a", "task_type": "act", "tool": "noop.echo", "depends_on": ["b"]},
               {"id": "b", "task_type": "act", "tool": "noop.echo", "inputs": {"x": {"$ref": "steps.a.output"}}}),
         "the steps form a cycle"),
    ],
    ids=["unknown-tool", "no-tool-no-instruction", "duplicate", "dangling-ref", "bad-ref-shape",
         "unknown-dependency", "cycle"],
)
def test_invalid_plans_are_no_plan_errors(plan, problem):
    with pytest.raises(PlanningError) as info:
        validate_plan(plan, TOOLS, None)
    assert info.value.error.code is ErrorCode.NO_PLAN
    assert any(problem in p for p in info.value.error.details["problems"]), info.value.error.details


def test_allowed_tools_constraint_is_enforced_at_planning():
    playbook, found = choose_playbook(SALES_GOAL, PLAYBOOKS, None)
    plan = plan_from_playbook(playbook, found, {}, "g:plan", NOW)
    with pytest.raises(PlanningError) as info:
        validate_plan(plan, TOOLS, ["sales.get_figures", "crm.top_accounts"])
    assert info.value.error.details["problems"] == [
        "step publish_report: tool 'reports.publish' is not allowed for this goal"
    ]
    assert validate_plan(plan, TOOLS, sorted(TOOLS)).steps  # all allowed: fine


# --- references ----------------------------------------------------------------------------


def test_resolve_step_outputs_paths_and_goal_input():
    outputs = {"fig": {"totals": {"revenue": 10}, "regions": [{"name": "EMEA"}, {"name": "APAC"}]}, "w": {"text": "hi"}}
    value = {
        "all": {"$ref": "steps.fig.output"},
        "revenue": {"$ref": "steps.fig.output.totals.revenue"},
        "second": {"$ref": "steps.fig.output.regions.1.name"},
        "year": {"$ref": "goal.input.year"},
        "nested": [{"t": {"$ref": "steps.w.output.text"}}, 3, "lit"],
        "not_a_ref": {"$ref": "steps.w.output", "extra": 1},
    }
    resolved = resolve(value, outputs, {"year": 2026})
    assert resolved["all"] is outputs["fig"]
    assert resolved["revenue"] == 10
    assert resolved["second"] == "APAC"
    assert resolved["year"] == 2026
    assert resolved["nested"] == [{"t": "hi"}, 3, "lit"]
    assert resolved["not_a_ref"] == {"$ref": "steps.w.output", "extra": 1}  # only a lone $ref is a reference


@pytest.mark.parametrize(
    "ref", ["steps.fig.output.totals.margin", "steps.fig.output.regions.5", "goal.input.quarter"]
)
def test_unresolvable_reference_is_an_invalid_input_error(ref):
    with pytest.raises(PlanningError) as info:
        resolve({"x": {"$ref": ref}}, {"fig": {"totals": {}, "regions": []}}, {})
    assert info.value.error.code is ErrorCode.INVALID_INPUT
    assert info.value.error.details == {"ref": ref}


# --- DAG progress --------------------------------------------------------------------------


def test_progress_releases_steps_in_dependency_order():
    plan = sales_plan()
    progress = Progress.start(plan)
    assert [s.id for s in progress.ready(plan)] == ["fetch_figures", "fetch_accounts"]
    for step_id in ("fetch_figures", "fetch_accounts"):
        assert progress.mark_running(step_id) == 1
    assert progress.ready(plan) == []
    progress.succeed("fetch_figures", {"f": 1})
    assert progress.ready(plan) == []  # write_summary still waits for fetch_accounts
    progress.succeed("fetch_accounts", {"a": 1})
    assert [s.id for s in progress.ready(plan)] == ["write_summary"]
    progress.mark_running("write_summary")
    progress.succeed("write_summary", {"text": "t"})
    assert [s.id for s in progress.ready(plan)] == ["publish_report"]
    assert not progress.finished
    progress.mark_running("publish_report")
    progress.succeed("publish_report", {"report_id": "r"})
    assert progress.finished and not progress.failed
    assert progress.outputs() == {"fetch_figures": {"f": 1}, "fetch_accounts": {"a": 1},
                                  "write_summary": {"text": "t"}, "publish_report": {"report_id": "r"}}


def test_progress_retries_retryable_errors_until_max_attempts():
    plan = sales_plan()
    progress = Progress.start(plan)
    retryable = TypedError(code=ErrorCode.UPSTREAM_TIMEOUT, message="slow", retryable=True)
    for attempt in (1, 2):
        assert progress.mark_running("fetch_figures") == attempt
        assert progress.fail("fetch_figures", retryable, max_attempts=3) is True
        assert progress.steps["fetch_figures"].status == "pending"
    assert progress.mark_running("fetch_figures") == 3
    assert progress.fail("fetch_figures", retryable, max_attempts=3) is False
    assert progress.failed and progress.finished
    assert progress.steps["fetch_figures"].error == retryable


def test_progress_does_not_retry_permanent_errors():
    plan = sales_plan()
    progress = Progress.start(plan)
    progress.mark_running("fetch_figures")
    permanent = TypedError(code=ErrorCode.INVALID_INPUT, message="bad")
    assert progress.fail("fetch_figures", permanent, max_attempts=3) is False
    assert progress.steps["fetch_figures"].status == "failed"
    assert "fetch_figures" not in progress.outputs()


# --- handlers over the repository ----------------------------------------------------------


@pytest.fixture
def deps() -> PlannerDeps:
    store = PlanStore(open_database("memory://", f"planner_{uuid.uuid4().hex}"))
    return PlannerDeps(store=store, playbooks=PLAYBOOKS, tool_names=TOOLS, clock=lambda: NOW)


def goal(text: str = SALES_GOAL, goal_id: str = "g", **spec) -> GoalSubmitted:
    return goal_submitted(text, goal_id, **spec)


async def test_goal_becomes_plan_created_and_first_ready_steps(deps):
    out = await handle(goal(), deps)
    assert [type(e) for e in out] == [PlanCreated, StepReady, StepReady]
    created, *ready = out
    assert created.id == "g:plan:created" and created.causation_id == "g:submitted"
    assert [r.id for r in ready] == ["g:fetch_figures:1:ready", "g:fetch_accounts:1:ready"]
    assert ready[0].resolved_inputs == {"quarter": "Q3", "year": 2026}
    record = await deps.store.get("g")
    assert record.status == "running" and record.version == 0
    assert record.progress.steps["fetch_figures"].status == "running"


async def test_redelivered_goal_republishes_the_same_events(deps):
    first = await handle(goal(), deps)
    again = await handle(goal(), deps)
    assert again == first


async def test_goal_without_playbook_finishes_failed_with_no_plan(deps):
    out = await handle(goal("Book a flight to Lisbon"), deps)
    assert len(out) == 1 and isinstance(out[0], PlanFinished)
    assert out[0].status == "failed" and out[0].error.code is ErrorCode.NO_PLAN
    assert out[0].plan_id == "g:plan" and out[0].submitted_at == NOW
    assert (await deps.store.get("g")).status == "failed"


async def test_disallowed_tool_fails_the_goal_at_planning(deps):
    out = await handle(goal(constraints=Constraints(allowed_tools=["sales.get_figures"])), deps)
    assert out[0].status == "failed" and out[0].error.code is ErrorCode.NO_PLAN


async def test_full_run_completes_with_resolved_outputs_and_usage(deps):
    _, fig, acc = await handle(goal(), deps)
    assert await handle(succeeded(fig, {"totals": {"revenue": 5}}), deps) == []
    (summary,) = await handle(succeeded(acc, {"accounts": []}), deps)
    assert summary.step.id == "write_summary"
    assert summary.resolved_inputs == {"figures": {"totals": {"revenue": 5}}, "top_accounts": {"accounts": []}}
    (publish,) = await handle(succeeded(summary, {"text": "All good."}, Usage(input_tokens=10, output_tokens=3)), deps)
    assert publish.resolved_inputs == {"title": "Q3 2026 sales report", "body": "All good.", "audience": "board"}
    (finished,) = await handle(succeeded(publish, {"report_id": "rpt-1", "url": "/r"}), deps)
    assert isinstance(finished, PlanFinished) and finished.id == "g:plan:finished"
    assert finished.status == "completed" and finished.error is None
    assert finished.outputs == {"report": {"report_id": "rpt-1", "url": "/r"}, "summary": "All good."}
    assert finished.step_states == dict.fromkeys(
        ["fetch_figures", "fetch_accounts", "write_summary", "publish_report"], "succeeded")
    assert (finished.usage.input_tokens, finished.usage.output_tokens) == (10, 3)
    assert finished.causation_id == "g:publish_report:1:succeeded"
    assert (await deps.store.get("g")).status == "completed"


async def test_retryable_failure_releases_next_attempt_then_fails_the_plan(deps):
    _, fig, _acc = await handle(goal(), deps)
    (retry2,) = await handle(failed(fig), deps)
    assert retry2.id == "g:fetch_figures:2:ready" and retry2.attempt == 2
    (retry3,) = await handle(failed(retry2), deps)
    assert retry3.attempt == 3
    (finished,) = await handle(failed(retry3), deps)
    assert isinstance(finished, PlanFinished) and finished.status == "failed"
    assert finished.error.code is ErrorCode.UPSTREAM_ERROR
    assert finished.retries == 2
    assert finished.step_states["fetch_figures"] == "failed"
    assert finished.outputs == {}


async def test_permanent_failure_fails_the_plan_at_once(deps):
    _, fig, _acc = await handle(goal(), deps)
    (finished,) = await handle(failed(fig, retryable=False), deps)
    assert finished.status == "failed" and finished.retries == 0


async def test_same_result_twice_is_applied_once(deps):
    _, fig, acc = await handle(goal(), deps)
    await handle(succeeded(fig, {"n": 1}), deps)
    first = await handle(succeeded(acc, {"n": 2}), deps)
    version = (await deps.store.get("g")).version
    again = await handle(succeeded(acc, {"n": 2}), deps)
    assert again == first and len(first) == 1  # the same StepReady, not a second one
    record = await deps.store.get("g")
    assert record.version == version
    assert record.progress.steps["write_summary"].attempt == 1


async def test_stale_result_of_an_old_attempt_is_ignored(deps):
    _, fig, _acc = await handle(goal(), deps)
    await handle(failed(fig), deps)  # attempt 2 is now running
    late = succeeded(fig, {"late": True})  # attempt 1 answers after all
    assert await handle(late, deps) == []
    state = (await deps.store.get("g")).progress.steps["fetch_figures"]
    assert (state.status, state.attempt, state.output) == ("running", 2, None)


async def test_result_for_unknown_goal_raises(deps):
    orphan = goal(goal_id="nobody")
    ready = orphan.derive(StepReady, "x", "planner", plan_id="p", step=Step(id="a", task_type="act", tool="noop.echo"))
    with pytest.raises(LookupError):
        await handle(succeeded(ready, {}), deps)


# --- repository ----------------------------------------------------------------------------


async def test_plan_store_create_is_once_and_save_is_conditional(deps):
    record = GoalRecord(goal_id="g2", tenant="acme", goal=GoalSpec(text="abc", requester="r"), submitted_at=NOW)
    await deps.store.init()
    assert await deps.store.create(record) is True
    assert await deps.store.create(record) is False
    mine, theirs = await deps.store.get("g2"), await deps.store.get("g2")
    mine.status = "completed"
    assert await deps.store.save(mine) is True and mine.version == 1
    theirs.status = "failed"
    assert await deps.store.save(theirs) is False  # read version 0, someone wrote version 1
    stored = await deps.store.get("g2")
    assert (stored.status, stored.version) == ("completed", 1)
    assert await deps.store.get("missing") is None


@pytest.mark.parametrize("ref", ["steps.ghost.output", "steps.fig.outputs.totals", "steps", "nowhere.fig.output"])
def test_reference_to_a_missing_step_output_is_an_invalid_input_error(ref):
    with pytest.raises(PlanningError) as info:
        resolve({"$ref": ref}, {"fig": {"totals": {}}}, {})
    assert info.value.error.code is ErrorCode.INVALID_INPUT


async def test_bad_plan_output_reference_fails_the_plan_instead_of_the_handler(deps):
    """Plan outputs are not checked by validate_plan; a typo there must end the goal with a
    typed failure, not raise in the handler (which dead-letters the result and strands the goal)."""
    playbook = Playbook.model_validate({
        "name": "typo", "match": {"all_words": ["typo"]},
        "steps": [{"id": "only", "task_type": "act", "tool": "noop.echo"}],
        "outputs": {"x": {"$ref": "steps.ghost.output"}},
    })
    deps = PlannerDeps(store=deps.store, playbooks={"typo": playbook}, tool_names=TOOLS, clock=lambda: NOW)
    _, ready = await handle(goal("a typo goal"), deps)
    (finished,) = await handle(succeeded(ready, {"echo": {}}), deps)
    assert finished.status == "failed"
    assert finished.error.code is ErrorCode.INVALID_INPUT
    assert finished.error.details == {"ref": "steps.ghost.output"}


def test_mail_to_adds_the_board_pack_steps_and_their_outputs():
    """Steps with `when: mail_to` are planned only for a goal that names recipients; the mail step
    is irreversible and waits for an approval."""
    playbook, found = choose_playbook(SALES_GOAL, PLAYBOOKS, None)
    plan = plan_from_playbook(playbook, found, {"mail_to": ["board@acme.example"]}, "g:plan", NOW)
    plan = validate_plan(plan, TOOLS | {"charts.render", "files.write_spreadsheet", "mail.deliver"}, None)
    steps = {s.id: s for s in plan.steps}
    assert list(steps) == ["fetch_figures", "fetch_accounts", "make_chart", "make_spreadsheet", "write_summary",
                           "publish_report", "mail_report"]
    mail = steps["mail_report"]
    assert (mail.tool, mail.side_effect, mail.needs_approval) == ("mail.deliver", "irreversible", True)
    assert mail.inputs["to"] == ["board@acme.example"]
    assert set(mail.depends_on) == {"publish_report", "write_summary", "make_chart", "make_spreadsheet"}
    assert set(plan.outputs) == {"report", "summary", "chart", "spreadsheet", "mail"}
    assert set(sales_plan().outputs) == {"report", "summary"}  # no recipients: no board pack outputs
