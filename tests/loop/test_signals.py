"""SIGTERM/SIGINT stop `sprites watch` cleanly: the pass in progress finishes,
the exit status is 0, and the sprites keep running. Real processes, the fake
wisp as the runtime."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fakewisp import FakeWisp

#: Generous: the machine may be slow and busy; nothing here is timed.
DEADLINE = 120.0


class Watch:
    """A `sprites watch --json` process whose events are read on a thread."""

    def __init__(self, cwd: Path, state_dir: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from reconciler.cli import main; main()",
                "--state-dir",
                str(state_dir),
                "watch",
                "--json",
                *args,
            ],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("SPRITES_")},
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def until(self, **match: Any) -> dict[str, Any]:
        while True:
            event = self.events.get(timeout=DEADLINE)
            assert event is not None, f"watch ended first: {self.stderr()}"
            self.seen.append(event)
            if all(event.get(key) == value for key, value in match.items()):
                return event

    def rest(self) -> list[dict[str, Any]]:
        while (event := self.events.get(timeout=DEADLINE)) is not None:
            self.seen.append(event)
        return self.seen

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr else ""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, Path, FakeWisp]]:
    fake = FakeWisp(tmp_path / "fakewisp")
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    config = {"agent": {"kind": "sprite", "wispPath": fake.path, "runtime": "wisp"}}
    (root / ".wreckit" / "config.json").write_text(json.dumps(config))
    (root / "sprites.yaml").write_text("version: 1\nproject: demo\nsprites:\n  a: {}\n  b: {}\n")
    try:
        yield root, tmp_path / "state", fake
    finally:
        fake.kill_leftovers()


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for watch in started:
        if watch.process.poll() is None:
            watch.process.kill()
            watch.process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_between_passes_exits_0_and_keeps_the_sprites(
    project: tuple[Path, Path, FakeWisp], watches: list[Watch], signum: int
) -> None:
    root, state_dir, fake = project
    watch = Watch(root, state_dir, "--interval", "1h")
    watches.append(watch)
    watch.until(type="watch", outcome="started")
    watch.until(type="pass", outcome="ok")

    watch.process.send_signal(signum)

    assert watch.process.wait(timeout=DEADLINE) == 0
    stopped = watch.rest()[-1]
    assert (stopped["type"], stopped["outcome"]) == ("watch", "stopped")
    assert {s["name"] for s in fake.inventory() if s["state"] == "running"} == {"a", "b"}
    assert [e["op"] for e in fake.history()] == ["start", "start"]  # nothing killed


def test_sigterm_during_a_pass_lets_the_pass_finish(
    project: tuple[Path, Path, FakeWisp], watches: list[Watch]
) -> None:
    root, state_dir, fake = project
    fake.script(delay={"start": 1.0})
    watch = Watch(root, state_dir, "--interval", "1h")
    watches.append(watch)
    watch.until(type="action", step="start")  # a start is in flight

    watch.process.send_signal(signal.SIGTERM)

    assert watch.process.wait(timeout=DEADLINE) == 0
    events = watch.rest()
    results = [e for e in events if e["type"] == "result"]
    assert sorted(e["sprite"] for e in results) == ["a", "b"]
    assert all(e["outcome"] == "ok" for e in results)
    assert [e["type"] for e in events[-2:]] == ["pass", "watch"]
    assert {s["name"] for s in fake.inventory() if s["state"] == "running"} == {"a", "b"}
    state = json.loads((state_dir / "projects" / "demo.json").read_text())
    assert {name: r["status"] for name, r in state["sprites"].items()} == {
        "a": "running",
        "b": "running",
    }


def test_a_sprite_killed_out_of_band_is_restarted_by_a_running_watch(
    project: tuple[Path, Path, FakeWisp], watches: list[Watch]
) -> None:
    root, state_dir, fake = project
    watch = Watch(root, state_dir, "--interval", "1s")
    watches.append(watch)
    watch.until(type="pass", outcome="ok")

    fake.remove_sprite("a")
    drift = watch.until(type="drift", sprite="a")
    restarted = watch.until(type="result", sprite="a")

    assert drift["reason"] == "missing" and restarted["outcome"] == "ok"
    watch.process.send_signal(signal.SIGTERM)
    assert watch.process.wait(timeout=DEADLINE) == 0
    assert {s["name"] for s in fake.inventory() if s["state"] == "running"} == {"a", "b"}
