"""An in-memory runtime implementing the Driver protocol, for property tests.

It plays the fake wisp's part without a process per call, so hypothesis can
try hundreds of examples a second. Like the fake wisp it refuses a start of a
name it already has and a kill of a name it lacks, and it appends a history
line after every change with the totals of the running sprites (and their
names, so a test can total any subset, such as one project's sprites).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.drivers.base import CallResult, StartRequest
from reconciler.errors import SpriteExistsError, SpriteNotFoundError
from reconciler.models.observed import Inventory, ObservedSprite


@dataclass
class MemSprite:
    name: str
    state: str
    memory: int
    cpus: int
    id: str


@dataclass
class HistoryLine:
    op: str
    name: str
    running: int
    memory_total: int
    cpus_total: int
    #: name -> (memory, cpus) of every running sprite after the change.
    running_sprites: dict[str, tuple[int, int]]


@dataclass
class MemoryDriver:
    """A thread-safe runtime in a dict; ``delays`` (seconds per sprite name)
    vary the order in which parallel calls finish."""

    sprites: dict[str, MemSprite] = field(default_factory=dict)
    delays: Mapping[str, float] = field(default_factory=dict)
    name: str = "memory"
    history: list[HistoryLine] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _next: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, state: str, memory: int, cpus: int) -> MemSprite:
        sprite = MemSprite(name, state, memory, cpus, f"mem-{self._next:04d}")
        self._next += 1
        self.sprites[name] = sprite
        return sprite

    # -- the protocol ----------------------------------------------------

    def list(self) -> Inventory:
        with self._lock:
            self.calls.append(("list", ""))
            sprites = tuple(
                ObservedSprite(id=s.id, name=s.name, state=s.state, runtime=self.name)
                for s in self.sprites.values()
            )
        return Inventory(sprites=sprites)

    def start(self, request: StartRequest) -> CallResult:
        self._pause(request.name)
        with self._lock:
            self.calls.append(("start", request.name))
            if request.name in self.sprites:
                raise SpriteExistsError("start", f"sprite '{request.name}' already exists")
            sprite = self.add(request.name, "running", request.memory, request.cpus)
            self._record("start", request.name)
        return CallResult(stdout=f"Started Sprite VM with ID: {sprite.id}\n", id=sprite.id)

    def kill(self, name: str) -> CallResult:
        self._pause(name)
        with self._lock:
            self.calls.append(("kill", name))
            if self.sprites.pop(name, None) is None:
                raise SpriteNotFoundError("kill", f"sprite '{name}' not found")
            self._record("kill", name)
        return CallResult(stdout=f"Terminated VM {name}\n")

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        return CallResult(stdout=f"Connected to {name}. Console output:\n")

    def logs(self, name: str | None) -> CallResult:
        return CallResult()

    def close(self) -> None:
        return None

    # -- inspection ------------------------------------------------------

    def changes(self) -> list[tuple[str, str]]:
        """Every start and kill call (successful or not), in order."""
        return [call for call in self.calls if call[0] != "list"]

    def running(self, names: Iterable[str] | None = None) -> dict[str, MemSprite]:
        wanted = None if names is None else set(names)
        return {
            n: s
            for n, s in self.sprites.items()
            if s.state == "running" and (wanted is None or n in wanted)
        }

    def snapshot(self) -> dict[str, Any]:
        return {n: (s.state, s.memory, s.cpus, s.id) for n, s in self.sprites.items()}

    # -- internals -------------------------------------------------------

    def _pause(self, name: str) -> None:
        delay = self.delays.get(name, 0.0)
        if delay:
            time.sleep(delay)

    def _record(self, op: str, name: str) -> None:
        running = {n: (s.memory, s.cpus) for n, s in self.sprites.items() if s.state == "running"}
        self.history.append(
            HistoryLine(
                op=op,
                name=name,
                running=len(running),
                memory_total=sum(m for m, _ in running.values()),
                cpus_total=sum(c for _, c in running.values()),
                running_sprites=running,
            )
        )
