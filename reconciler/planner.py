"""The planner: a pure function from (desired, observed, owned records, budget)
to a :class:`~reconciler.models.plan.Plan`.

No I/O and no clock: everything it needs is passed in, so it is tested by
value. It never plans to touch a sprite the project does not own, and it
refuses (raises) when the desired end state does not fit the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.digest import sha256_hex
from reconciler.errors import BudgetExceededError, OwnershipError
from reconciler.models import units
from reconciler.models.desired import Budget, DesiredSprite
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.plan import (
    Action,
    BudgetUsage,
    Change,
    FieldChange,
    Plan,
    Reason,
)
from reconciler.models.state import Expiry, OwnedRecord


def recover(
    records: Mapping[str, OwnedRecord],
    inventory: Inventory,
    observed: Mapping[str, ObservedSprite] | None = None,
) -> dict[str, OwnedRecord]:
    """Settle records an interrupted apply left mid-operation, by what is observed.

    A ``starting`` or ``killing`` record whose sprite is listed is owned and
    running as far as planning goes; one whose sprite is absent is dropped
    (the sprite never started, or its kill finished).
    """
    unsettled = [record for record in records.values() if record.status != "running"]
    settled = dict(records)
    if not unsettled:
        return settled
    observed = observed if observed is not None else inventory.by_name()
    for record in unsettled:
        name = record.name
        sprite = observed.get(name)
        if sprite is None:
            del settled[name]
        else:
            settled[name] = record.with_(status="running", id=sprite.id or record.id)
    return settled


def plan(
    desired: Mapping[str, DesiredSprite],
    inventory: Inventory,
    records: Mapping[str, OwnedRecord],
    budget: Budget,
    *,
    project: str,
    adopt: bool = False,
    operation: str = "apply",
    runtime: str = "",
    manifest_path: str | None = None,
    manifest_digest: str | None = None,
    now: float | None = None,
    expired: Mapping[str, Expiry] | None = None,
    report_conflicts: bool = False,
) -> Plan:
    """``now`` (unix time) enables ttl expiry; ``expired`` holds the sprites
    whose ttl ran out earlier. With ``report_conflicts`` a desired name taken
    by an unowned sprite is listed in ``Plan.conflicts`` and left alone
    instead of failing the whole plan."""
    observed = inventory.by_name()
    owned = recover(records, inventory, observed)
    changes: list[Change] = []
    adopted: dict[str, dict[str, Any]] = {}
    conflicts: list[ObservedSprite] = []
    held: list[str] = []
    forget: list[str] = []

    # What the manifest wants comes in manifest order (worker-2 before
    # worker-10), what it no longer wants in name order.
    for name, want in desired.items():
        sprite = observed.get(name)
        record = owned.get(name)
        entry = expired.get(name) if expired else None
        if (entry is not None and entry.manifest_digest == manifest_digest) or (
            want.ttl is not None and record is not None and is_expired(record, want, now)
        ):
            held.append(name)
            if record is not None and sprite is not None:
                changes.append(
                    _change(name, Action.KILL, Reason.EXPIRED, record.spec, None, sprite.state)
                )
            elif record is not None:
                forget.append(name)
            continue
        if record is None:
            if sprite is None:
                changes.append(_change(name, Action.START, Reason.NEW, None, want.spec, None))
            elif not adopt:
                conflicts.append(sprite)
            elif sprite.is_running:
                adopted[name] = want.spec
            else:
                changes.append(
                    _change(name, Action.RESTART, Reason.ADOPTED, None, want.spec, sprite.state)
                )
        elif sprite is None:
            changes.append(
                _change(name, Action.START, Reason.MISSING, record.spec, want.spec, None)
            )
        elif not sprite.is_running:
            changes.append(
                _change(
                    name, Action.RESTART, Reason.NOT_RUNNING, record.spec, want.spec, sprite.state
                )
            )
        elif record.spec != want.spec:
            changes.append(
                Change(
                    address=name,
                    action=Action.REPLACE,
                    reason=Reason.SPEC_CHANGED,
                    before=record.spec,
                    after=want.spec,
                    fields=explain(record.spec, want.spec),
                    observed_state=sprite.state,
                )
            )

    if conflicts and not report_conflicts:
        raise ownership_error(conflicts, project)

    kill_reason = Reason.DESTROY if operation == "destroy" else Reason.REMOVED_FROM_MANIFEST
    for name in sorted(name for name in owned if name not in desired):
        sprite = observed.get(name)
        if sprite is None:
            forget.append(name)
        else:
            changes.append(
                _change(name, Action.KILL, kill_reason, owned[name].spec, None, sprite.state)
            )
    forget.extend(sorted(name for name in records if name not in owned and name not in desired))
    if expired:
        # Expiries of an older manifest (or any, on destroy) lift: forgetting
        # them is bookkeeping an apply does even when nothing else changes.
        forget.extend(
            sorted(
                name
                for name, entry in expired.items()
                if (operation == "destroy" or entry.manifest_digest != manifest_digest)
                and name not in records
                and name not in forget
            )
        )

    if held or conflicts:
        away = set(held) | {s.name for s in conflicts}
        desired = {name: want for name, want in desired.items() if name not in away}
    starts = any(change.action.steps[-1] == "start" for change in changes)
    usage = _check_budget(desired, inventory, owned, budget, starts=starts)
    return Plan(
        format_version="1",
        project=project,
        operation=operation,
        changes=tuple(changes),
        forget=tuple(forget),
        settle=tuple(
            sorted(name for name, rec in records.items() if rec.status != "running" and name in owned)
        ),
        adopt=adopted,
        expired=tuple(held),
        conflicts=tuple(s.name for s in conflicts),
        observed=inventory.sprites,
        owned=frozenset(owned),
        budget=usage,
        warnings=tuple(inventory.warnings),
        manifest_path=manifest_path,
        manifest_digest=manifest_digest,
        inventory_digest=inventory_digest(inventory.sprites),
        runtime=runtime,
    )


def _change(
    name: str,
    action: Action,
    reason: Reason,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    state: str | None,
) -> Change:
    return Change(
        address=name,
        action=action,
        reason=reason,
        before=before,
        after=after,
        fields=(),
        observed_state=state,
    )


def explain(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """The fields that differ. Scalars are compared directly; nested values
    (command, env, ...) are explained by deepdiff, and only when they differ."""
    result: list[FieldChange] = []
    keys = before.keys() if before.keys() == after.keys() else sorted(set(before) | set(after))
    for key in keys:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            result.extend(_explain_nested(key, old, new))
        else:
            result.append(FieldChange(path=key, before=old, after=new))
    return tuple(result)


def _explain_nested(key: str, old: dict[str, Any], new: dict[str, Any]) -> Iterable[FieldChange]:
    from deepdiff import DeepDiff

    diff = DeepDiff(old, new, verbose_level=2)
    for kind in (
        "dictionary_item_added",
        "dictionary_item_removed",
        "values_changed",
        "type_changes",
    ):
        for path, detail in sorted(diff.get(kind, {}).items()):
            sub = path.removeprefix("root['").removesuffix("']").replace("']['", ".")
            if kind == "dictionary_item_added":
                before, after = None, detail
            elif kind == "dictionary_item_removed":
                before, after = detail, None
            else:
                before, after = detail.get("old_value"), detail.get("new_value")
            yield FieldChange(path=f"{key}.{sub}", before=before, after=after)


def inventory_digest(sprites: Iterable[ObservedSprite]) -> str:
    """A fingerprint of what runs: a saved plan is stale once it changes."""
    lines = sorted(f"{s.name}\0{s.id}\0{s.state}\n" for s in sprites)
    return sha256_hex("".join(lines).encode())


def is_expired(record: OwnedRecord, want: DesiredSprite, now: float | None) -> bool:
    """Has the sprite run past its ttl at ``now``?"""
    expires = expires_at(record, want)
    return expires is not None and now is not None and now >= expires


def expires_at(record: OwnedRecord, want: DesiredSprite) -> float | None:
    """When the recorded sprite's ttl runs out (None without a ttl or a start time)."""
    if want.ttl is None or record.started_at is None:
        return None
    return record.started_at + want.ttl


def ownership_error(conflicts: Sequence[ObservedSprite], project: str) -> OwnershipError:
    first = conflicts[0]
    names = ", ".join(f"'{s.name}'" for s in conflicts)
    if len(conflicts) == 1:
        state = "is already running" if first.is_running else f"already exists ({first.state})"
        message = f"sprite {names} {state} but is not owned by project '{project}'"
    else:
        message = f"sprites {names} already exist but are not owned by project '{project}'"
    return OwnershipError(
        message,
        hint=(
            f"Kill it with `sprites kill {first.name}`, rename it in the manifest, "
            "or pass --adopt to let this project own it."
        ),
    )


def _check_budget(
    desired: Mapping[str, DesiredSprite],
    inventory: Inventory,
    owned: Mapping[str, OwnedRecord],
    budget: Budget,
    *,
    starts: bool = True,
) -> BudgetUsage:
    count = len(desired)
    memory = cpus = 0
    for want in desired.values():
        memory += want.memory
        cpus += want.cpus
    # Running sprites that stay whatever this apply does: not ours, not desired.
    others = 0
    for s in inventory.sprites:
        if s.is_running and s.name not in desired and s.name not in owned:
            others += 1
    host = count + others
    # maxVMs counts sprites this project does not control, so it bounds what
    # an apply starts: a plan that starts nothing (a destroy, a removal) is
    # never refused because others already fill the host.
    if starts and budget.host_max_vms is not None and host > budget.host_max_vms:
        detail = (
            f"{count} in this manifest, {others} more already running on this host"
            if others
            else ""
        )
        raise BudgetExceededError(
            "maxVMs", f"{host} sprites", str(budget.host_max_vms), detail=detail
        )
    if budget.max_vms is not None and count > budget.max_vms:
        raise BudgetExceededError(
            "maxVMs",
            f"{count} sprites",
            str(budget.max_vms),
            detail="limits.maxVMs in the manifest",
        )
    if budget.memory is not None and memory > budget.memory:
        raise BudgetExceededError(
            "memory",
            units.format_size(memory),
            units.format_size(budget.memory),
            detail="limits.memory in the manifest",
        )
    if budget.cpus is not None and cpus > budget.cpus:
        raise BudgetExceededError(
            "cpus", str(cpus), str(budget.cpus), detail="limits.cpus in the manifest"
        )
    return BudgetUsage(
        host_sprites=host,
        host_max_vms=budget.host_max_vms,
        sprites=count,
        max_vms=budget.max_vms,
        memory=memory,
        memory_limit=budget.memory,
        cpus=cpus,
        cpus_limit=budget.cpus,
    )
