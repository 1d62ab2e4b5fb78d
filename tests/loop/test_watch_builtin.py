"""The watch loop against the built-in runtime: real sprites, killed out of
band, restarted by the next pass. Skipped where the runtime cannot run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine import Engine
from tests.loop.conftest import FakeClock, manifest


def _unavailable() -> str | None:
    try:
        from reconciler.drivers import builtin

        return builtin.unavailable_reason()
    except (ImportError, AttributeError) as exc:
        return f"the built-in runtime is not importable: {exc}"


REASON = _unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    for key in list(os.environ):
        if key.startswith("SPRITES_"):
            monkeypatch.delenv(key)
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    config = {"agent": {"kind": "sprite", "runtime": "builtin", "timeout": 60}}
    (root / ".wreckit" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(root)
    engine = Engine(config_path=root / ".wreckit" / "config.json", state_dir=tmp_path / "state")
    try:
        yield engine
    finally:
        try:
            for sprite in engine.driver.list().sprites:
                try:
                    engine.driver.kill(sprite.name)
                except Exception:  # noqa: BLE001  (best effort; the next line checks)
                    pass
            assert engine.driver.list().running() == []
        finally:
            engine.close()


def running(engine: Engine) -> dict[str, str]:
    return {s.name: s.id for s in engine.driver.list().running()}


def test_a_real_sprite_killed_out_of_band_is_restarted(engine: Engine, tmp_path: Path) -> None:
    from reconciler.loop import Watcher

    path = tmp_path / "project" / "sprites.yaml"
    path.write_text(manifest("a: {memory: 64MiB, command: [sleep, '3600']}", "b: {memory: 64MiB}"))
    clock = FakeClock()
    engine.clock = clock.time
    watcher = Watcher(engine, path, interval=5.0, monotonic=clock.monotonic, wait=clock.wait)
    watcher.load()

    assert watcher.run_pass().ok
    before = running(engine)
    assert set(before) == {"a", "b"}

    engine.driver.kill("a")  # not through the engine: the state still says it runs
    assert set(running(engine)) == {"b"}
    result = watcher.run_pass()

    assert result.ok and result.result is not None
    after = running(engine)
    assert set(after) == {"a", "b"}
    assert after["b"] == before["b"]  # untouched
    state = json.loads((tmp_path / "state" / "projects" / "demo.json").read_text())
    assert state["sprites"]["a"]["restarts"] == 1
    drift = [e for e in engine.events.read() if e["type"] == "drift"]
    assert [(e["sprite"], e["reason"]) for e in drift] == [("a", "missing")]


def test_an_edit_replaces_a_real_sprite(engine: Engine, tmp_path: Path) -> None:
    from reconciler.loop import Watcher

    path = tmp_path / "project" / "sprites.yaml"
    path.write_text(manifest("a: {memory: 64MiB}"))
    watcher = Watcher(engine, path, interval=5.0)
    watcher.load()
    assert watcher.run_pass().ok
    first = running(engine)["a"]

    path.write_text(manifest("a: {memory: 96MiB}"))
    assert watcher.run_pass().ok

    listed = {s.name: s for s in engine.driver.list().sprites}
    assert listed["a"].is_running and listed["a"].id != first
    if listed["a"].memory is not None:
        assert listed["a"].memory == 96 << 20
