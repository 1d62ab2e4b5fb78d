"""The plan: what an apply will do, as data.

A :class:`Change` is an address (the sprite's name), an :class:`Action`, an
optional :class:`Reason`, and the spec ``before`` and ``after``. The reason
only explains the plan to people; the executor dispatches on the action
alone. ``before`` is the recorded spec (``None`` when the project never
started the sprite); ``after`` is the desired spec (``None`` for a kill).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from reconciler.models.observed import ObservedSprite
from reconciler.record import field, record

FORMAT_VERSION = "1"


class Action(str, Enum):
    """What happens to one sprite. Values are stable wire strings."""

    START = "start"
    KILL = "kill"
    REPLACE = "replace"
    RESTART = "restart"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]

    @property
    def is_destructive(self) -> bool:
        """Does this action stop a sprite that may be running?"""
        return self in (Action.KILL, Action.REPLACE)

    @property
    def steps(self) -> tuple[str, ...]:
        """The runtime calls, in order: a replace or restart kills then starts."""
        return _STEPS[self]


_SYMBOLS = {Action.START: "+", Action.KILL: "-", Action.REPLACE: "-/+", Action.RESTART: "~"}
_STEPS: dict[Action, tuple[str, ...]] = {
    Action.START: ("start",),
    Action.KILL: ("kill",),
    Action.REPLACE: ("kill", "start"),
    Action.RESTART: ("kill", "start"),
}


class Reason(str, Enum):
    """Why a change is planned; for people only, never for the executor."""

    NONE = "none"
    NEW = "new"
    MISSING = "missing"
    SPEC_CHANGED = "spec_changed"
    NOT_RUNNING = "not_running"
    REMOVED_FROM_MANIFEST = "removed_from_manifest"
    DESTROY = "destroy"
    EXPIRED = "expired"
    INTERRUPTED = "interrupted"
    ADOPTED = "adopted"

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    Reason.NONE: "",
    Reason.NEW: "new in the manifest",
    Reason.MISSING: "owned by this project but no longer running",
    Reason.SPEC_CHANGED: "spec changed",
    Reason.NOT_RUNNING: "not running",
    Reason.REMOVED_FROM_MANIFEST: "no longer in the manifest",
    Reason.DESTROY: "destroy requested",
    Reason.EXPIRED: "ttl expired",
    Reason.INTERRUPTED: "an earlier apply was interrupted",
    Reason.ADOPTED: "adopted",
}


@record(frozen=True, slots=True)
class FieldChange:
    """One field that differs between the recorded and the desired spec."""

    path: str
    before: Any = None
    after: Any = None


@record(frozen=True, slots=True)
class Change:
    address: str
    action: Action
    reason: Reason = Reason.NONE
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    #: What differs, for a replace (empty otherwise).
    fields: tuple[FieldChange, ...] = ()
    #: The observed state before the change ("running", "stopped", "error" or None).
    observed_state: str | None = None

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        from reconciler.models import wire

        data: dict[str, Any] = wire.dump(self)
        return data


@record(frozen=True, slots=True)
class BudgetUsage:
    """The end state the plan leads to, against each limit (None = unlimited)."""

    host_sprites: int
    sprites: int
    memory: int
    cpus: int
    host_max_vms: int | None = None
    max_vms: int | None = None
    memory_limit: int | None = None
    cpus_limit: int | None = None


@record(frozen=True, slots=True)
class Plan:
    """Plain frozen records rather than pydantic models: a plan of 10,000
    sprites is built in milliseconds. pydantic (de)serialises it at the
    boundary (:func:`plan_to_json`, :func:`plan_from_json`, through
    :mod:`reconciler.models.wire`)."""

    project: str
    format_version: str = FORMAT_VERSION
    #: ``apply`` or ``destroy``.
    operation: str = "apply"
    changes: tuple[Change, ...] = ()
    #: Recorded sprites whose runtime record is gone; apply forgets them.
    forget: tuple[str, ...] = ()
    #: Records an interrupted apply left ``starting`` or ``killing`` whose
    #: sprite is listed: owned and running, and apply records them so.
    settle: tuple[str, ...] = ()
    #: Running sprites the project takes over with no runtime call
    #: (``--adopt``), with the spec they are recorded under.
    adopt: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Desired sprites whose ttl ran out under this manifest: killed (a change
    #: with reason ``expired``) and not started again until the manifest changes.
    expired: tuple[str, ...] = ()
    #: Desired names taken by sprites the project does not own, when the
    #: planner was asked to report them instead of failing (the watch loop).
    conflicts: tuple[str, ...] = ()
    #: What the runtime listed when the plan was made, and which of those
    #: sprites this project owned.
    observed: tuple[ObservedSprite, ...] = ()
    owned: frozenset[str] = frozenset()
    budget: BudgetUsage | None = None
    warnings: tuple[str, ...] = ()
    #: Set when the plan was made from a manifest file.
    manifest_path: str | None = None
    manifest_digest: str | None = None
    inventory_digest: str = ""
    runtime: str = ""

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def needs_apply(self) -> bool:
        """Changes, or bookkeeping (forget/settle/adopt) that only the state needs."""
        return bool(self.changes or self.forget or self.settle or self.adopt)

    def counts(self) -> dict[str, int]:
        """Sprites to start, replace (restarts included) and kill."""
        counts = {"start": 0, "replace": 0, "kill": 0}
        for change in self.changes:
            key = (
                "replace"
                if change.action in (Action.REPLACE, Action.RESTART)
                else change.action.value
            )
            counts[key] += 1
        return counts

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return plan_to_json(self)


SAVED_PLAN_KIND = "sprites-plan"


def plan_to_json(plan: Plan) -> dict[str, Any]:
    from reconciler.models import wire

    data: dict[str, Any] = wire.dump(plan)
    return data


def plan_from_json(data: Any) -> Plan:
    """Validate a plan read back from JSON; raises pydantic's ValidationError."""
    from reconciler.models import wire

    plan: Plan = wire.load(Plan, data)
    return plan


def saved_plan_json(plan: Plan) -> dict[str, Any]:
    """The on-disk form of ``sprites plan -out FILE``."""
    return {"kind": SAVED_PLAN_KIND, "plan": plan_to_json(plan)}


def read_saved_plan_json(data: Any) -> Plan:
    if not isinstance(data, dict) or data.get("kind") != SAVED_PLAN_KIND:
        raise ValueError("not a saved sprites plan")
    return plan_from_json(data.get("plan"))
