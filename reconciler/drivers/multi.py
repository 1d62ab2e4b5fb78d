"""Several runtimes behind one driver, so one manifest can mix them.

The engine uses it when the config's runtime, the manifest's per-sprite
``runtime:`` keys and the sprites already on this host need more than one
runtime. ``list`` merges the runtimes' inventories (each sprite says its
runtime); ``start`` goes to the runtime the request names
(``options["runtime"]``), else the default one; ``kill``, ``attach`` and
``logs`` go to the runtime that lists the sprite.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reconciler.drivers.base import CallResult, Driver, ExecResult, StartRequest
from reconciler.errors import RuntimeCallError, SpriteExistsError
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.record import replace

#: Runtimes that keep their sprites' records under ``<state_dir>/<runtime>/sprites/``.
LOCAL_RUNTIMES = ("builtin", "microvm")


def runtimes_in_use(state_dir: Path) -> list[str]:
    """The local runtimes that have sprite records on this host (cheap: no /proc, no QMP)."""
    used = []
    for runtime in LOCAL_RUNTIMES:
        try:
            entries = os.listdir(state_dir / runtime / "sprites")
        except OSError:
            continue
        if any(not entry.startswith(".") for entry in entries):
            used.append(runtime)
    return used


class MultiDriver:
    """Routes each call to one of several drivers; ``name`` is the default's."""

    def __init__(self, default: Driver, others: Sequence[Driver]) -> None:
        self.default = default
        self.drivers: dict[str, Driver] = {default.name: default}
        for driver in others:
            self.drivers.setdefault(driver.name, driver)
        self.name = default.name

    @property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(self.drivers)

    def list(self) -> Inventory:
        sprites: list[ObservedSprite] = []
        warnings: list[str] = []
        for name, driver in self.drivers.items():
            inventory = driver.list()
            for sprite in inventory.sprites:
                sprites.append(sprite if sprite.runtime else replace(sprite, runtime=name))
            warnings.extend(w for w in inventory.warnings if w not in warnings)
        raw = json.dumps([{**sprite.to_json(), "runtime": sprite.runtime} for sprite in sprites])
        return Inventory(sprites=tuple(sprites), raw=raw, warnings=tuple(warnings))

    def start(self, request: StartRequest) -> CallResult:
        runtime = request.options.get("runtime") or self.default.name
        driver = self.drivers.get(str(runtime))
        if driver is None:
            raise RuntimeCallError("start", f"the {runtime} runtime is not in use here")
        for name, other in self.drivers.items():
            if other is not driver and request.name in other.list().by_name():
                raise SpriteExistsError(
                    "start", f"sprite '{request.name}' already exists (runtime {name})"
                )
        return driver.start(request)

    def kill(self, name: str) -> CallResult:
        return self._owner(name).kill(name)

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        return self._owner(name).attach(name, interactive=interactive)

    def logs(self, name: str | None) -> CallResult:
        if name is not None:
            return self._owner(name).logs(name)
        parts = [driver.logs(None) for driver in self.drivers.values()]
        return CallResult(
            stdout="".join(part.stdout for part in parts),
            stderr="".join(part.stderr for part in parts),
        )

    def exec(self, name: str, argv: Sequence[str], **options: Any) -> ExecResult:
        driver = self._owner(name)
        run = getattr(driver, "exec", None)
        if run is None:
            raise RuntimeCallError("exec", f"the {driver.name} runtime cannot run commands")
        result: ExecResult = run(name, argv, **options)
        return result

    def close(self) -> None:
        for driver in self.drivers.values():
            driver.close()

    def _owner(self, name: str) -> Driver:
        """The driver that lists ``name``; the default one when none does
        (it then reports the sprite as not found, in its own words)."""
        for driver in self._search_order():
            if name in driver.list().by_name():
                return driver
        return self.default

    def _search_order(self) -> Iterable[Driver]:
        yield self.default
        for driver in self.drivers.values():
            if driver is not self.default:
                yield driver
