"""Budget admission in the planner: host-wide maxVMs (every running sprite
counts) and the manifest's own limits (this project's sprites only)."""

from __future__ import annotations

import pytest

from reconciler.errors import BudgetExceededError
from reconciler.models.desired import Budget, DesiredSprite
from tests.unit.builders import GiB, MiB, desired, inventory, make_plan, owned, records, seen, want


def five_of(prefix: str, count: int = 5, **kwargs: int) -> list[DesiredSprite]:
    return [want(f"{prefix}-{i}", **kwargs) for i in range(1, count + 1)]


def test_host_max_vms_exceeded_names_the_dimension_and_both_numbers() -> None:
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(desired(*five_of("w", 6)), budget=Budget(host_max_vms=5))
    error = caught.value
    assert error.user_message == "maxVMs exceeded: 6 sprites desired, limit 5"
    assert (error.dimension, error.wanted, error.limit) == ("maxVMs", "6 sprites", "5")
    assert error.exit_code == 1


def test_exactly_at_the_host_limit_is_allowed() -> None:
    plan = make_plan(desired(*five_of("w", 5)), budget=Budget(host_max_vms=5))
    assert len(plan.changes) == 5


def test_other_running_sprites_count_against_the_host_limit() -> None:
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(
            desired(*five_of("w", 4)),
            inventory(seen("theirs-1"), seen("theirs-2")),
            budget=Budget(host_max_vms=5),
        )
    assert caught.value.user_message == (
        "maxVMs exceeded: 6 sprites desired, limit 5 "
        "(4 in this manifest, 2 more already running on this host)"
    )


def test_stopped_sprites_of_others_do_not_count() -> None:
    plan = make_plan(
        desired(*five_of("w", 4)),
        inventory(seen("theirs-1", "stopped"), seen("theirs-2", "error")),
        budget=Budget(host_max_vms=4),
    )
    assert plan.budget is not None and plan.budget.host_sprites == 4


def test_owned_sprites_being_killed_do_not_count_in_the_end_state() -> None:
    # 3 owned sprites leave, 3 others come: the end state is 3 sprites.
    plan = make_plan(
        desired(*five_of("new", 3)),
        inventory(seen("old-1"), seen("old-2"), seen("old-3")),
        records(owned("old-1"), owned("old-2"), owned("old-3")),
        Budget(host_max_vms=3),
    )
    assert plan.counts() == {"start": 3, "replace": 0, "kill": 3}


def test_project_max_vms_counts_only_this_projects_sprites() -> None:
    # Others' running sprites do not count against the project's own limit ...
    plan = make_plan(
        desired(*five_of("w", 2)),
        inventory(seen("theirs-1"), seen("theirs-2"), seen("theirs-3")),
        budget=Budget(host_max_vms=10, max_vms=2),
    )
    assert plan.budget is not None
    assert (plan.budget.sprites, plan.budget.host_sprites) == (2, 5)
    # ... but the project's own sprites do.
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(desired(*five_of("w", 3)), budget=Budget(host_max_vms=10, max_vms=2))
    assert caught.value.user_message == (
        "maxVMs exceeded: 3 sprites desired, limit 2 (limits.maxVMs in the manifest)"
    )


def test_project_memory_limit() -> None:
    sprites = desired(want("a", memory=2 * GiB), want("b", memory=2 * GiB), want("c"))
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(sprites, budget=Budget(memory=4 * GiB))
    assert caught.value.user_message == (
        "memory exceeded: 4608MiB desired, limit 4GiB (limits.memory in the manifest)"
    )
    assert caught.value.dimension == "memory"
    assert make_plan(sprites, budget=Budget(memory=4 * GiB + 512 * MiB)).budget is not None


def test_project_cpus_limit() -> None:
    sprites = desired(want("a", cpus=4), want("b", cpus=4), want("c", cpus=1))
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(sprites, budget=Budget(cpus=8))
    assert caught.value.user_message == (
        "cpus exceeded: 9 desired, limit 8 (limits.cpus in the manifest)"
    )
    assert make_plan(sprites, budget=Budget(cpus=9)).budget is not None


def test_host_limit_is_checked_before_the_project_limits() -> None:
    with pytest.raises(BudgetExceededError) as caught:
        make_plan(
            desired(*five_of("w", 6, memory=GiB)),
            budget=Budget(host_max_vms=5, max_vms=5, memory=GiB),
        )
    assert caught.value.user_message == "maxVMs exceeded: 6 sprites desired, limit 5"


def test_a_budget_error_stops_the_whole_plan() -> None:
    # Even changes that would fit are not planned: nothing may be applied.
    with pytest.raises(BudgetExceededError):
        make_plan(
            desired(want("keep"), *five_of("new", 5)),
            inventory(seen("keep")),
            records(owned("keep")),
            Budget(host_max_vms=5),
        )


def test_no_limits_means_unlimited() -> None:
    plan = make_plan(desired(*five_of("w", 50, memory=64 * GiB, cpus=64)), budget=Budget())
    assert len(plan.changes) == 50
    assert plan.budget is not None and plan.budget.memory_limit is None
