"""A watch loop against the fake wisp, on a fake clock.

:class:`Rig` holds a project directory (config pointing at a fresh fake wisp,
a private state dir, a manifest) and an :class:`Engine` whose wall clock is
the rig's :class:`FakeClock`. Watchers made by :meth:`Rig.watcher` run on the
same clock: their sleeps advance it instead of waiting, so a test can drive
hours of passes in well under a second of real time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import Engine
from reconciler.loop import Watcher
from tests.helpers.fakewisp import FakeWisp

START = 1_800_000_000.0


@dataclass
class FakeClock:
    wall: float = START
    mono: float = 5_000.0
    #: Called with the clock after every fake wait (to act "during" a sleep).
    on_wait: Callable[[FakeClock], bool] | None = None
    waited: float = 0.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def wait(self, seconds: float) -> bool:
        """A sleep that advances the clock; True (stop) when ``on_wait`` says so."""
        self.advance(seconds)
        self.waited += seconds
        return bool(self.on_wait(self)) if self.on_wait is not None else False


@dataclass
class Rig:
    root: Path
    fake: FakeWisp
    state_dir: Path
    clock: FakeClock = field(default_factory=FakeClock)
    _engine: Engine | None = None

    @property
    def manifest(self) -> Path:
        return self.root / "sprites.yaml"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(
                config_path=self.root / ".wreckit" / "config.json", state_dir=self.state_dir
            )
            self._engine.clock = self.clock.time
        return self._engine

    def write(self, text: str) -> Path:
        """Replace the manifest (a new inode and mtime, like an editor's save)."""
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.manifest)
        return self.manifest

    def watcher(self, **options: Any) -> Watcher:
        options.setdefault("interval", 10.0)
        options.setdefault("random", lambda: 1.0)
        return Watcher(
            self.engine,
            self.manifest,
            monotonic=self.clock.monotonic,
            wait=self.clock.wait,
            **options,
        )

    def running(self) -> set[str]:
        return {s["name"] for s in self.fake.inventory() if s["state"] == "running"}

    def starts(self, name: str | None = None) -> list[str]:
        return [
            e["name"]
            for e in self.fake.history()
            if e["op"] == "start" and (name is None or e["name"] == name)
        ]

    def records(self, project: str = "demo") -> dict[str, Any]:
        path = self.state_dir / "projects" / f"{project}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def events(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.engine.events.read()
            if (kind is None or e["type"] == kind)
            and all(e.get(key) == value for key, value in match.items())
        ]


def manifest(*lines: str, project: str = "demo") -> str:
    body = "".join(f"  {line}\n" for line in lines) or "  {}\n"
    return f"version: 1\nproject: {project}\nsprites:\n{body}"


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    for key in list(os.environ):
        if key.startswith("SPRITES_"):
            monkeypatch.delenv(key)
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    fake = FakeWisp(tmp_path / "fakewisp")
    config = {"agent": {"kind": "sprite", "wispPath": fake.path, "runtime": "wisp"}}
    (root / ".wreckit" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(root)
    rig = Rig(root=root, fake=fake, state_dir=tmp_path / "state")
    try:
        yield rig
    finally:
        if rig._engine is not None:
            rig._engine.close()
        fake.kill_leftovers()
