"""A plan as JSON (``plan --json``, saved plans): every field written, read
back to an equal plan, and malformed input refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.models.observed import ObservedSprite
from reconciler.models.plan import (
    Action,
    BudgetUsage,
    Change,
    FieldChange,
    Plan,
    Reason,
    plan_from_json,
    plan_to_json,
    read_saved_plan_json,
    saved_plan_json,
)

REPLACE = Change(
    "a",
    Action.REPLACE,
    Reason.SPEC_CHANGED,
    {"memory": 1, "cpus": 1, "command": ["x"]},
    {"memory": 2, "cpus": 1, "env": {"A": "1"}},
    (FieldChange("memory", 1, 2), FieldChange("env.A", None, "1")),
    "running",
)
PLAN = Plan(
    project="demo",
    changes=(REPLACE, Change("b", Action.START, Reason.NEW, None, {"memory": 3, "cpus": 2})),
    forget=("z",),
    settle=("y",),
    adopt={"q": {"memory": 1, "cpus": 1}},
    expired=("e",),
    conflicts=("c",),
    observed=(
        ObservedSprite("id-a", "a", "running", pid=5, address="unix:///x", started_at=1.5),
        ObservedSprite("id-q", "q", "stopped", runtime="wisp", reason="exited 1"),
    ),
    owned=frozenset({"a"}),
    budget=BudgetUsage(1, 2, 3, 4, host_max_vms=5, memory_limit=7),
    warnings=("w",),
    manifest_path="/m.yaml",
    manifest_digest="d",
    inventory_digest="i",
    runtime="wisp",
)


def test_a_plan_round_trips_through_its_json_and_a_saved_file() -> None:
    data = json.loads(json.dumps(plan_to_json(PLAN)))
    assert plan_from_json(data) == PLAN
    assert read_saved_plan_json(json.loads(json.dumps(saved_plan_json(PLAN)))) == PLAN
    loaded = plan_from_json(data)
    assert type(loaded.changes[0]) is Change and type(loaded.observed[0]) is ObservedSprite
    assert type(loaded.changes[0].fields[0]) is FieldChange
    assert type(loaded.budget) is BudgetUsage and loaded.changes[0].action is Action.REPLACE


def test_every_field_is_written_as_plain_json() -> None:
    data = plan_to_json(PLAN)
    assert list(data) == [
        "project", "format_version", "operation", "changes", "forget", "settle", "adopt",
        "expired", "conflicts", "observed", "owned", "budget", "warnings", "manifest_path",
        "manifest_digest", "inventory_digest", "runtime",
    ]  # fmt: skip
    assert data["changes"][0] == {
        "address": "a",
        "action": "replace",
        "reason": "spec_changed",
        "before": {"memory": 1, "cpus": 1, "command": ["x"]},
        "after": {"memory": 2, "cpus": 1, "env": {"A": "1"}},
        "fields": [
            {"path": "memory", "before": 1, "after": 2},
            {"path": "env.A", "before": None, "after": "1"},
        ],
        "observed_state": "running",
    }
    assert REPLACE.model_dump(mode="json") == data["changes"][0]
    assert data["observed"][1] == {
        "id": "id-q", "name": "q", "state": "stopped", "pid": None, "address": None,
        "runtime": "wisp", "memory": None, "cpus": None, "started_at": None, "reason": "exited 1",
    }  # fmt: skip
    assert data["owned"] == ["a"] and data["forget"] == ["z"]
    assert data["budget"] == {
        "host_sprites": 1, "sprites": 2, "memory": 3, "cpus": 4, "host_max_vms": 5,
        "max_vms": None, "memory_limit": 7, "cpus_limit": None,
    }  # fmt: skip


def test_missing_fields_take_their_defaults() -> None:
    assert plan_from_json({"project": "demo"}) == Plan(project="demo")
    change: Any = {"address": "a", "action": "kill"}
    assert plan_from_json({"project": "demo", "changes": [change]}).changes == (
        Change("a", Action.KILL),
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"project": 3},
        {"project": "demo", "changes": "none"},
        {"project": "demo", "changes": [{"address": "a", "action": "explode"}]},
        {"project": "demo", "changes": [{"action": "kill"}]},
        {"project": "demo", "budget": {"host_sprites": "many"}},
        {"project": "demo", "observed": [{"id": "x"}]},
    ],
)
def test_malformed_plans_are_refused(data: Any) -> None:
    with pytest.raises(ValidationError):
        plan_from_json(data)


def test_a_document_that_is_not_a_saved_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="not a saved sprites plan"):
        read_saved_plan_json({"kind": "something-else", "plan": plan_to_json(PLAN)})
