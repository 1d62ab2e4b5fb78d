"""The planner by value: desired x observed x owned records -> changes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import planner
from reconciler.errors import OwnershipError
from reconciler.models.desired import Budget
from reconciler.models.plan import Action, Reason
from tests.unit.builders import (
    GiB,
    MiB,
    actions,
    desired,
    inventory,
    make_plan,
    owned,
    records,
    seen,
    want,
)

# -- start / no-op / replace / restart / kill --------------------------------


def test_nothing_desired_nothing_running_is_converged() -> None:
    plan = make_plan()
    assert plan.changes == ()
    assert not plan.has_changes
    assert not plan.needs_apply
    assert plan.counts() == {"start": 0, "replace": 0, "kill": 0}


def test_a_new_sprite_is_started_with_its_spec() -> None:
    plan = make_plan(desired(want("agent-1", memory=GiB, cpus=2)))
    (change,) = plan.changes
    assert change.action is Action.START
    assert change.reason is Reason.NEW
    assert change.address == "agent-1"
    assert change.before is None
    assert change.after == {"memory": GiB, "cpus": 2}
    assert change.observed_state is None
    assert plan.counts() == {"start": 1, "replace": 0, "kill": 0}


def test_an_owned_running_sprite_with_the_same_spec_is_left_alone() -> None:
    plan = make_plan(
        desired(want("agent-1")), inventory(seen("agent-1")), records(owned("agent-1"))
    )
    assert plan.changes == ()
    assert plan.forget == ()
    assert not plan.needs_apply


def test_a_changed_spec_is_a_replace_that_says_what_changed() -> None:
    plan = make_plan(
        desired(want("agent-1", memory=GiB, cpus=1)),
        inventory(seen("agent-1")),
        records(owned("agent-1", memory=512 * MiB, cpus=1)),
    )
    (change,) = plan.changes
    assert change.action is Action.REPLACE
    assert change.reason is Reason.SPEC_CHANGED
    assert change.before == {"memory": 512 * MiB, "cpus": 1}
    assert change.after == {"memory": GiB, "cpus": 1}
    assert [(f.path, f.before, f.after) for f in change.fields] == [("memory", 512 * MiB, GiB)]
    assert change.observed_state == "running"
    assert plan.counts() == {"start": 0, "replace": 1, "kill": 0}


@pytest.mark.parametrize("state", ["stopped", "error"])
def test_an_owned_sprite_that_is_not_running_is_restarted(state: str) -> None:
    plan = make_plan(
        desired(want("agent-1")), inventory(seen("agent-1", state)), records(owned("agent-1"))
    )
    (change,) = plan.changes
    assert change.action is Action.RESTART
    assert change.reason is Reason.NOT_RUNNING
    assert change.observed_state == state
    assert change.action.steps == ("kill", "start")
    # A restart counts as a replace in the summary.
    assert plan.counts() == {"start": 0, "replace": 1, "kill": 0}


def test_an_owned_sprite_that_vanished_is_started_again() -> None:
    plan = make_plan(desired(want("agent-1")), inventory(), records(owned("agent-1")))
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.START, Reason.MISSING)
    assert change.before == {"memory": 512 * MiB, "cpus": 1}


def test_an_owned_sprite_removed_from_the_manifest_is_killed() -> None:
    plan = make_plan(desired(), inventory(seen("old")), records(owned("old")))
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.KILL, Reason.REMOVED_FROM_MANIFEST)
    assert change.after is None
    assert change.before == {"memory": 512 * MiB, "cpus": 1}
    assert change.action.is_destructive


def test_destroy_kills_what_is_owned_with_the_destroy_reason() -> None:
    plan = make_plan(
        desired(),
        inventory(seen("a"), seen("b", "stopped"), seen("theirs")),
        records(owned("a"), owned("b")),
        operation="destroy",
    )
    assert actions(plan) == [("kill", "a"), ("kill", "b")]
    assert {c.reason for c in plan.changes} == {Reason.DESTROY}
    assert plan.operation == "destroy"


def test_an_owned_record_whose_sprite_is_gone_is_forgotten_not_killed() -> None:
    plan = make_plan(desired(), inventory(), records(owned("gone")))
    assert plan.changes == ()
    assert plan.forget == ("gone",)
    assert plan.needs_apply and not plan.has_changes


# -- ownership -----------------------------------------------------------------


def test_unowned_sprites_are_never_planned_for() -> None:
    plan = make_plan(
        desired(want("agent-1")),
        inventory(seen("theirs"), seen("stopped-one", "stopped"), seen("broken", "error")),
        records(),
    )
    assert actions(plan) == [("start", "agent-1")]
    assert plan.forget == ()
    assert plan.adopt == {}


def test_destroy_never_kills_unowned_sprites() -> None:
    plan = make_plan(
        desired(),
        inventory(seen("theirs"), seen("mine")),
        records(owned("mine")),
        operation="destroy",
    )
    assert actions(plan) == [("kill", "mine")]


def test_a_desired_name_running_unowned_is_an_error_naming_it() -> None:
    with pytest.raises(OwnershipError) as caught:
        make_plan(desired(want("agent-1")), inventory(seen("agent-1")), records())
    error = caught.value
    assert error.user_message == (
        "sprite 'agent-1' is already running but is not owned by project 'demo'"
    )
    assert error.hint is not None and "--adopt" in error.hint
    assert error.render().startswith("❌ sprite 'agent-1' is already running")


def test_a_desired_name_stopped_unowned_is_an_error_too() -> None:
    with pytest.raises(OwnershipError, match=r"sprite 'agent-1' already exists \(stopped\)"):
        make_plan(desired(want("agent-1")), inventory(seen("agent-1", "stopped")), records())


def test_every_conflicting_name_is_listed() -> None:
    with pytest.raises(OwnershipError) as caught:
        make_plan(
            desired(want("a"), want("b"), want("c")),
            inventory(seen("b"), seen("a")),
            records(),
        )
    assert caught.value.user_message == (
        "sprites 'a', 'b' already exist but are not owned by project 'demo'"
    )


def test_adopt_takes_a_running_sprite_without_a_runtime_call() -> None:
    plan = make_plan(
        desired(want("agent-1", memory=GiB)), inventory(seen("agent-1")), records(), adopt=True
    )
    assert plan.changes == ()
    assert plan.adopt == {"agent-1": {"memory": GiB, "cpus": 1}}
    assert plan.needs_apply


def test_adopt_restarts_a_stopped_unowned_sprite() -> None:
    plan = make_plan(
        desired(want("agent-1")), inventory(seen("agent-1", "error")), records(), adopt=True
    )
    (change,) = plan.changes
    assert (change.action, change.reason) == (Action.RESTART, Reason.ADOPTED)
    assert change.before is None


_names = st.sampled_from(["a", "b", "c", "d", "e"])


@settings(max_examples=200, deadline=None)
@given(
    want_names=st.sets(_names),
    observed_states=st.dictionaries(_names, st.sampled_from(["running", "stopped", "error"])),
    owned_status=st.dictionaries(_names, st.sampled_from(["running", "starting", "killing"])),
    destroy=st.booleans(),
)
def test_without_adopt_nothing_unowned_is_ever_touched(
    want_names: set[str],
    observed_states: dict[str, str],
    owned_status: dict[str, str],
    destroy: bool,
) -> None:
    inv = inventory(*(seen(name, state) for name, state in observed_states.items()))
    recs = records(*(owned(name, status) for name, status in owned_status.items()))
    want_ = {} if destroy else desired(*(want(name) for name in want_names))
    try:
        plan = make_plan(want_, inv, recs, operation="destroy" if destroy else "apply")
    except OwnershipError as error:
        # Only a desired name taken by an unowned sprite may refuse the plan.
        taken = [n for n in want_ if n in observed_states and n not in recs]
        assert taken and all(f"'{n}'" in error.user_message for n in taken)
        return
    for change in plan.changes:
        if change.action.steps[0] == "kill":
            assert change.address in recs, change
        if change.action is Action.KILL:
            assert change.address not in want_
    assert set(plan.forget) <= set(recs)
    # The plan leads to the desired set.
    running_after = {name for name, state in observed_states.items() if state == "running"}
    for change in plan.changes:
        if change.action is Action.KILL:
            running_after.discard(change.address)
        else:
            running_after.add(change.address)
    assert set(want_) <= running_after


# -- interrupted applies (the journal) -------------------------------------------


def test_recover_settles_starting_and_killing_by_what_is_listed() -> None:
    recs = records(
        owned("started", "starting"),
        owned("never-started", "starting"),
        owned("kill-unfinished", "killing"),
        owned("kill-finished", "killing"),
        owned("running-gone", "running"),
    )
    inv = inventory(seen("started", id="new-id"), seen("kill-unfinished"))
    settled = planner.recover(recs, inv)
    assert set(settled) == {"started", "kill-unfinished", "running-gone"}
    assert settled["started"].status == "running"
    assert settled["started"].id == "new-id"
    assert settled["kill-unfinished"].status == "running"
    # A settled "running" record is kept whatever is listed: planning decides.
    assert settled["running-gone"] == recs["running-gone"]


def test_a_start_interrupted_after_the_runtime_started_it_is_not_started_twice() -> None:
    plan = make_plan(
        desired(want("agent-1")), inventory(seen("agent-1")), records(owned("agent-1", "starting"))
    )
    assert plan.changes == ()


def test_a_start_interrupted_before_the_runtime_started_it_is_started() -> None:
    plan = make_plan(desired(want("agent-1")), inventory(), records(owned("agent-1", "starting")))
    assert actions(plan) == [("start", "agent-1")]


def test_an_interrupted_start_of_an_unwanted_sprite_is_killed_or_forgotten() -> None:
    plan = make_plan(
        desired(),
        inventory(seen("listed")),
        records(owned("listed", "starting"), owned("absent", "starting")),
    )
    assert actions(plan) == [("kill", "listed")]
    assert plan.forget == ("absent",)


def test_an_interrupted_kill_is_finished() -> None:
    plan = make_plan(desired(), inventory(seen("old")), records(owned("old", "killing")))
    assert actions(plan) == [("kill", "old")]
    plan = make_plan(desired(), inventory(), records(owned("old", "killing")))
    assert plan.changes == () and plan.forget == ("old",)


def test_an_interrupted_kill_of_a_wanted_sprite_needs_no_adopt() -> None:
    plan = make_plan(
        desired(want("agent-1")), inventory(seen("agent-1")), records(owned("agent-1", "killing"))
    )
    assert plan.changes == ()


# -- ordering ----------------------------------------------------------------------


def test_changes_follow_the_manifest_then_the_state_with_kills_last() -> None:
    plan = make_plan(
        desired(want("b-new"), want("a-new"), want("c-stopped"), want("d-changed", cpus=2)),
        inventory(seen("z-old"), seen("c-stopped", "stopped"), seen("d-changed"), seen("m-old")),
        records(owned("c-stopped"), owned("d-changed"), owned("m-old"), owned("z-old")),
    )
    assert actions(plan) == [
        ("start", "b-new"),
        ("start", "a-new"),
        ("restart", "c-stopped"),
        ("replace", "d-changed"),
        ("kill", "m-old"),
        ("kill", "z-old"),
    ]


def test_the_plan_depends_only_on_manifest_order() -> None:
    wanted = [want("a"), want("b", cpus=2), want("c"), want("d")]
    observed = [seen("b"), seen("c", "stopped"), seen("x"), seen("y")]
    recs = [owned("b"), owned("c"), owned("x"), owned("w")]
    first = make_plan(desired(*wanted), inventory(*observed), records(*recs))
    for o, r in zip(
        itertools.permutations(observed),
        itertools.cycle(itertools.permutations(recs)),
    ):
        plan = make_plan(desired(*wanted), inventory(*o), records(*r))
        assert plan.changes == first.changes
        assert (plan.forget, plan.inventory_digest) == (first.forget, first.inventory_digest)


# -- explain -------------------------------------------------------------------------


def test_explain_lists_only_the_fields_that_differ() -> None:
    before = {"memory": 512 * MiB, "cpus": 1}
    assert planner.explain(before, dict(before)) == ()
    fields = planner.explain(before, {"memory": 512 * MiB, "cpus": 4})
    assert [(f.path, f.before, f.after) for f in fields] == [("cpus", 1, 4)]


def test_explain_names_added_and_removed_fields() -> None:
    fields = planner.explain(
        {"memory": 1, "cpus": 1, "command": ["sleep", "1"]},
        {"memory": 1, "cpus": 1, "env": {"A": "1"}},
    )
    assert [(f.path, f.before, f.after) for f in fields] == [
        ("command", ["sleep", "1"], None),
        ("env", None, {"A": "1"}),
    ]


def test_explain_goes_into_nested_mappings() -> None:
    fields = planner.explain(
        {"env": {"KEEP": "1", "CHANGE": "old", "DROP": "x"}},
        {"env": {"KEEP": "1", "CHANGE": "new", "ADD": "y"}},
    )
    assert sorted((f.path, f.before, f.after) for f in fields) == [
        ("env.ADD", None, "y"),
        ("env.CHANGE", "old", "new"),
        ("env.DROP", "x", None),
    ]


def test_a_replace_of_a_command_change_carries_the_explanation() -> None:
    plan = make_plan(
        desired(want("a", command=("sleep", "2"))),
        inventory(seen("a")),
        records(owned("a").with_(spec={"memory": 512 * MiB, "cpus": 1, "command": ["sleep", "1"]})),
    )
    (change,) = plan.changes
    assert change.action is Action.REPLACE
    assert [(f.path, f.before, f.after) for f in change.fields] == [
        ("command", ["sleep", "1"], ["sleep", "2"])
    ]


# -- inventory digest ----------------------------------------------------------------


def test_the_inventory_digest_ignores_order_and_sees_every_change() -> None:
    base = [seen("a"), seen("b", "stopped")]
    digest = planner.inventory_digest(base)
    assert digest == planner.inventory_digest(list(reversed(base)))
    assert len(digest) == 64
    assert digest != planner.inventory_digest([seen("a")])
    assert digest != planner.inventory_digest([seen("a"), seen("b", "running")])
    assert digest != planner.inventory_digest([seen("a", id="other"), seen("b", "stopped")])
    assert digest != planner.inventory_digest([*base, seen("c")])
    assert planner.inventory_digest([]) == planner.inventory_digest(())


def test_the_plan_records_the_inventory_and_manifest_it_was_made_from() -> None:
    inv = inventory(seen("x"))
    plan = make_plan(
        desired(want("a")),
        inv,
        manifest_digest="abc",
        manifest_path="sprites.yaml",
        runtime="wisp",
    )
    assert plan.inventory_digest == planner.inventory_digest(inv.sprites)
    assert (plan.manifest_digest, plan.manifest_path, plan.runtime) == (
        "abc",
        "sprites.yaml",
        "wisp",
    )
    assert plan.format_version == "1"


def test_runtime_warnings_are_carried_into_the_plan() -> None:
    plan = make_plan(inv=inventory(warnings=["limits are not enforced"]))
    assert plan.warnings == ("limits are not enforced",)


def test_the_budget_usage_describes_the_end_state() -> None:
    plan = make_plan(
        desired(want("a", memory=GiB, cpus=2), want("b")),
        inventory(seen("theirs"), seen("stopped", "stopped"), seen("old")),
        records(owned("old")),
        Budget(host_max_vms=5, max_vms=3, memory=4 * GiB, cpus=8),
    )
    usage = plan.budget
    assert usage is not None
    assert (usage.host_sprites, usage.host_max_vms) == (3, 5)
    assert (usage.sprites, usage.max_vms) == (2, 3)
    assert (usage.memory, usage.memory_limit) == (GiB + 512 * MiB, 4 * GiB)
    assert (usage.cpus, usage.cpus_limit) == (3, 8)
