"""Builders for the unit tests: desired sprites, observed inventories and
owned records as plain values, so the planner is tested with no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reconciler import planner
from reconciler.models.desired import Budget, DesiredSprite
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.plan import Plan
from reconciler.models.state import OwnedRecord

MiB = 1 << 20
GiB = 1 << 30


def want(name: str, memory: int = 512 * MiB, cpus: int = 1, **extra: Any) -> DesiredSprite:
    """One desired sprite, as the manifest resolution makes it."""
    return DesiredSprite.make(name, memory, cpus, **extra)


def desired(*sprites: DesiredSprite) -> dict[str, DesiredSprite]:
    return {sprite.name: sprite for sprite in sprites}


def seen(name: str, state: str = "running", id: str | None = None) -> ObservedSprite:
    """One sprite as the runtime lists it."""
    return ObservedSprite(id=id or f"id-{name}", name=name, state=state, runtime="test")


def inventory(*sprites: ObservedSprite, warnings: Iterable[str] = ()) -> Inventory:
    return Inventory(sprites=tuple(sprites), warnings=tuple(warnings))


def owned(
    name: str, status: str = "running", memory: int = 512 * MiB, cpus: int = 1, **extra: Any
) -> OwnedRecord:
    """A record of a sprite the project started, with the spec it was started with."""
    spec = DesiredSprite.make(name, memory, cpus).spec
    return OwnedRecord(name=name, status=status, spec=spec, id=f"id-{name}", **extra)


def records(*recs: OwnedRecord) -> dict[str, OwnedRecord]:
    return {rec.name: rec for rec in recs}


def make_plan(
    want_: dict[str, DesiredSprite] | None = None,
    inv: Inventory | None = None,
    recs: dict[str, OwnedRecord] | None = None,
    budget: Budget | None = None,
    **kwargs: Any,
) -> Plan:
    return planner.plan(
        want_ or {},
        inv or inventory(),
        recs or {},
        budget or Budget(),
        project=kwargs.pop("project", "demo"),
        **kwargs,
    )


def actions(plan: Plan) -> list[tuple[str, str]]:
    """(action, sprite) for every change, in plan order."""
    return [(change.action.value, change.address) for change in plan.changes]
