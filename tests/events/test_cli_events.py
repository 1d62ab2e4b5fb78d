"""Events through the CLI: plain apply/destroy and the imperative commands log
what they do; `sprites events`, `sprites status` and `watch --json` read and
show it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.events import EventLog, EventType
from tests.cli.harness import Sprites, manifest
from tests.helpers.fakewisp import FakeWisp


@pytest.fixture
def sprites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sprites]:
    for key in list(os.environ):
        if key.startswith("SPRITES_"):
            monkeypatch.delenv(key)
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    fake = FakeWisp(tmp_path / "fakewisp")
    helper = Sprites(root=root, fake=fake, state_dir=tmp_path / "state")
    helper.write_config({"runtime": "wisp"})
    try:
        yield helper
    finally:
        fake.kill_leftovers()


def logged(sprites: Sprites, **match: Any) -> list[dict[str, Any]]:
    log = EventLog(sprites.state_dir / "events.log")
    return [e for e in log.read() if all(e.get(k) == v for k, v in match.items())]


def test_plain_apply_and_destroy_log_every_action(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}", b="{memory: 1GiB}"))
    assert sprites("apply", "--auto-approve").exit_code == 0
    assert sprites("destroy", "--auto-approve").exit_code == 0

    kinds = [(e["type"], e["action"], e.get("operation")) for e in logged(sprites)]
    assert kinds[:2] == [("observe", "list", "apply"), ("plan", "apply", None)]
    for operation, step in (("apply", "start"), ("destroy", "kill")):
        actions = logged(sprites, type="action", operation=operation)
        results = logged(sprites, type="result", operation=operation)
        assert sorted(e["sprite"] for e in actions) == ["a", "b"]
        assert sorted(e["sprite"] for e in results) == ["a", "b"]
        for event in results:
            assert event["project"] == "demo" and event["step"] == step
            assert event["outcome"] == "ok" and event["duration"] > 0
    assert logged(sprites, type="plan", action="destroy")[0]["detail"]["kill"] == 2


def test_a_refused_plan_and_a_failed_start_are_logged(sprites: Sprites) -> None:
    sprites.write_manifest(
        "version: 1\nproject: demo\nlimits: {maxVMs: 1}\nsprites:\n  a: {}\n  b: {}\n"
    )
    assert sprites("apply", "--auto-approve").exit_code == 1
    [refused] = logged(sprites, type="plan")
    assert refused["outcome"] == "failed" and "maxVMs exceeded" in refused["error"]

    sprites.write_manifest(manifest(a="{}"))
    sprites.fake.script(fail={"start": "insufficient memory"})
    assert sprites("apply", "--auto-approve").exit_code == 1
    [failed] = logged(sprites, type="result", outcome="failed")
    assert (
        failed["sprite"] == "a" and failed["error"] == "Failed to start Sprite: insufficient memory"
    )


def test_imperative_start_and_kill_are_logged_without_a_project(sprites: Sprites) -> None:
    assert sprites("start", "solo").exit_code == 0
    assert sprites("kill", "solo").exit_code == 0
    assert sprites("kill", "ghost").exit_code == 1
    results = logged(sprites, type="result")
    assert [(e["action"], e["sprite"], e["outcome"], e["project"]) for e in results] == [
        ("start", "solo", "ok", None),
        ("kill", "solo", "ok", None),
        ("kill", "ghost", "failed", None),
    ]


def test_sprites_events_prints_the_log(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    sprites("apply", "--auto-approve")
    sprites("start", "solo")

    human = sprites("events")
    assert human.exit_code == 0
    assert "demo/a: result start ok" in human.output
    assert "-/solo: result start ok" in human.output

    as_json = sprites("events", "--json", "-p", "demo")
    events = [json.loads(line) for line in as_json.output.splitlines()]
    assert events and {e["project"] for e in events} == {"demo"}

    last = sprites("events", "--json", "-n", "2").output.splitlines()
    assert [json.loads(line)["sprite"] for line in last] == ["solo", "solo"]


def test_events_follow_prints_new_events_and_stops_cleanly_on_sigint(sprites: Sprites) -> None:
    log = EventLog(sprites.state_dir / "events.log")
    log.emit(EventType.WATCH, project="demo", action="watch", outcome="started")
    follower = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from reconciler.cli import main; main()",
            "--state-dir",
            str(sprites.state_dir),
            "events",
            "--follow",
            "--json",
        ],
        cwd=sprites.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["outcome"] == "started"
        log.emit(EventType.RESULT, project="demo", sprite="a", action="start", outcome="ok")
        assert json.loads(follower.stdout.readline())["sprite"] == "a"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_status_shows_each_sprite_against_what_runs(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}", b="{ttl: 1h}"))
    sprites("apply", "--auto-approve")

    in_sync = sprites("status")
    assert in_sync.exit_code == 0
    assert "All 2 sprites of project 'demo' are in sync" in in_sync.output
    assert "SPRITE" in in_sync.output and "RESTARTS" in in_sync.output

    sprites.fake.remove_sprite("a")
    sprites.fake.script(fail={"start": "insufficient memory"})
    sprites("apply", "--auto-approve")
    document = json.loads(sprites("status", "--json").output)
    assert document["success"] is True and document["data"]["inSync"] is False
    rows = {row["name"]: row for row in document["data"]["sprites"]}
    assert rows["a"]["inSync"] is False and rows["a"]["state"] == "missing"
    assert rows["a"]["lastError"] == "Failed to start Sprite: insufficient memory"
    assert rows["b"]["inSync"] is True and rows["b"]["uptime"] >= 0
    assert 0 < rows["b"]["expiresIn"] <= 3600 and rows["b"]["ttl"] == 3600
    text = sprites("status").output
    assert "1 of 2 sprites" in text and "last error: Failed to start Sprite" in text


def test_status_of_a_bad_manifest_fails_with_its_position(sprites: Sprites) -> None:
    sprites.write_manifest("version: 1\nproject: demo\nsprites:\n  a: {cpus: 0}\n")
    result = sprites("status", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["message"].startswith("sprites.yaml:4:")


def test_watch_json_prints_each_event_as_one_json_line(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    result = sprites("watch", "--once", "--json")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [e["type"] for e in events] == ["observe", "plan", "action", "result", "pass"]
    assert events == logged(sprites)  # the same events as the log holds


def test_watch_once_human_output_and_exit_status(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    sprites.fake.script(fail={"start": "insufficient memory"})
    failed = sprites("watch", "--once")
    assert failed.exit_code == 1
    assert "demo/a: result start failed" in failed.output
    assert "insufficient memory" in failed.output

    sprites.fake.script()
    assert sprites("watch", "--once").exit_code == 0
    quiet = sprites("watch", "--once")  # in sync: routine events are not printed
    assert quiet.exit_code == 0 and quiet.output == ""


def test_watch_rejects_a_bad_interval_and_a_bad_manifest(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    bad = sprites("watch", "--interval", "soon")
    assert bad.exit_code == 1 and "--interval: invalid duration 'soon'" in bad.output
    assert sprites("watch", "--interval", "0").exit_code == 1
    sprites.write_manifest("version: 1\nproject: demo\nsprites: [a]\n")
    broken = sprites("watch", "--json")
    assert broken.exit_code == 1
    event = json.loads(broken.output)
    assert event["type"] == "error" and event["error"].startswith("sprites.yaml:3:")


def test_the_log_grows_only_by_appending(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    sprites("watch", "--once")
    before = (sprites.state_dir / "events.log").read_bytes()
    sprites("watch", "--once")
    after = (sprites.state_dir / "events.log").read_bytes()
    assert after.startswith(before) and len(after) > len(before)
