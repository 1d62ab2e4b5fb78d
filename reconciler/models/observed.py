"""What a runtime reports: the observed inventory.

Plain frozen records, not pydantic models: ``sprites list`` must start
fast and validates nothing. Nothing here assumes a single host: ``pid`` is
optional and ``address`` is an opaque string (``unix://...``, ``tcp://...``).
"""

from __future__ import annotations

from typing import Any, Literal

from reconciler.record import field, record

SpriteState = Literal["running", "stopped", "error"]
STATES: tuple[str, ...] = ("running", "stopped", "error")


@record(frozen=True, slots=True)
class ObservedSprite:
    """One sprite as a runtime lists it."""

    id: str
    name: str
    state: str
    pid: int | None = None
    address: str | None = None
    #: Which driver reported it ("wisp", "builtin", ...).
    runtime: str = ""
    #: Resources when the runtime reports them (wisp does not).
    memory: int | None = None
    cpus: int | None = None
    #: Unix time the sprite started, when known.
    started_at: float | None = None
    #: Why a sprite is in ``error``/``stopped`` when the runtime says.
    reason: str | None = None

    @property
    def is_running(self) -> bool:
        return self.state == "running"

    def to_json(self) -> dict[str, Any]:
        """The guide's list entry: id, name, state and pid when known."""
        data: dict[str, Any] = {"id": self.id, "name": self.name, "state": self.state}
        if self.pid is not None:
            data["pid"] = self.pid
        if self.address is not None:
            data["address"] = self.address
        return data


@record(frozen=True, slots=True)
class Inventory:
    """Every sprite the runtimes report, plus their raw output for agents."""

    sprites: tuple[ObservedSprite, ...] = ()
    raw: str = ""
    #: Notes the runtimes want shown with the listing (e.g. limits not enforced).
    warnings: tuple[str, ...] = field(default=())

    def by_name(self) -> dict[str, ObservedSprite]:
        return {sprite.name: sprite for sprite in self.sprites}

    def running(self) -> list[ObservedSprite]:
        return [sprite for sprite in self.sprites if sprite.is_running]
