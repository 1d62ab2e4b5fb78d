"""``sprites status``: the manifest's sprites against what runs, one row each.

A pure comparison (no I/O, ``now`` passed in) that reads the same facts the
planner does: a sprite is in sync when the planner would leave it alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.models.observed import Inventory
from reconciler.models.state import ProjectState
from reconciler.planner import expires_at, recover
from reconciler.record import record

if TYPE_CHECKING:
    from reconciler.manifest import LoadedManifest


@record(frozen=True, slots=True)
class SpriteStatus:
    name: str
    #: In the manifest (False: owned, no longer wanted, about to be killed).
    desired: bool
    #: Started (or adopted) by this project.
    owned: bool
    #: The observed state, or ``missing`` / ``expired`` when nothing runs.
    state: str
    in_sync: bool
    #: Why it is out of sync, or what else is worth knowing.
    note: str = ""
    uptime: float | None = None
    restarts: int = 0
    last_error: str | None = None
    ttl: float | None = None
    #: Seconds until the ttl runs out (None without a ttl).
    expires_in: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "desired": self.desired,
            "owned": self.owned,
            "state": self.state,
            "inSync": self.in_sync,
            "note": self.note,
            "uptime": None if self.uptime is None else round(self.uptime, 3),
            "restarts": self.restarts,
            "lastError": self.last_error,
            "ttl": self.ttl,
            "expiresIn": None if self.expires_in is None else round(self.expires_in, 3),
        }


@record(frozen=True, slots=True)
class StatusReport:
    project: str
    manifest: str
    runtime: str
    sprites: tuple[SpriteStatus, ...]

    @property
    def in_sync(self) -> bool:
        return all(sprite.in_sync for sprite in self.sprites)

    @property
    def synced(self) -> int:
        return sum(1 for sprite in self.sprites if sprite.in_sync)


def compare(
    loaded: LoadedManifest,
    inventory: Inventory,
    state: ProjectState,
    *,
    now: float,
    runtime: str = "",
    last_errors: Mapping[str, str] | None = None,
) -> StatusReport:
    observed = inventory.by_name()
    owned = recover(state.records, inventory, observed)
    errors = last_errors or {}
    rows: list[SpriteStatus] = []
    for name, want in loaded.desired.items():
        sprite = observed.get(name)
        record = owned.get(name)
        running = sprite is not None and sprite.is_running
        expires = expires_at(record, want) if record is not None else None
        expiry = state.expired.get(name)
        expired = (expiry is not None and expiry.manifest_digest == loaded.digest) or (
            expires is not None and now >= expires
        )
        if expired:
            gone = record is None or sprite is None
            shown = sprite.state if sprite is not None and record is not None else "expired"
            note = (
                "ttl expired; starts again when the manifest changes"
                if gone
                else "ttl expired; the next apply kills it"
            )
            in_sync = gone
        elif record is None:
            shown = sprite.state if sprite is not None else "missing"
            note = "not owned by this project" if sprite is not None else "not started yet"
            in_sync = False
        elif sprite is None:
            shown, note, in_sync = "missing", "owned but gone; the next apply starts it", False
        elif not running:
            shown, note, in_sync = sprite.state, "not running; the next apply restarts it", False
        elif record.spec != want.spec:
            shown, note, in_sync = sprite.state, "spec changed; the next apply replaces it", False
        else:
            shown, note, in_sync = sprite.state, "", True
        uptime = None
        if running and record is not None and record.started_at is not None:
            uptime = max(0.0, now - record.started_at)
        rows.append(
            SpriteStatus(
                name=name,
                desired=True,
                owned=record is not None,
                state=shown,
                in_sync=in_sync,
                note=note,
                uptime=uptime,
                restarts=record.restarts if record is not None else 0,
                last_error=(record.last_error if record is not None else None) or errors.get(name),
                ttl=want.ttl,
                expires_in=None if expires is None or expired else max(0.0, expires - now),
            )
        )
    for name in sorted(n for n in owned if n not in loaded.desired):
        sprite = observed.get(name)
        if sprite is None:
            continue
        record = owned[name]
        rows.append(
            SpriteStatus(
                name=name,
                desired=False,
                owned=True,
                state=sprite.state,
                in_sync=False,
                note="no longer in the manifest; the next apply kills it",
                restarts=record.restarts,
                last_error=record.last_error or errors.get(name),
            )
        )
    return StatusReport(
        project=loaded.project, manifest=str(loaded.path), runtime=runtime, sprites=tuple(rows)
    )
