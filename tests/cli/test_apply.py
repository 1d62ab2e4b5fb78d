"""``sprites apply`` and ``sprites destroy``: confirmation, progress, failures
that do not stop the rest, NDJSON events, the lock, and ownership."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest

from reconciler.state import StateStore
from tests.cli.harness import Sprites, manifest

EXAMPLE_NAMES = ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]
PROMPT = "Do you want to perform these actions? Only 'yes' will be accepted: "


class _TtyStdin:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _TtySys:
    """``sys`` as the CLI sees it when stdin is a terminal."""

    @property
    def stdin(self) -> _TtyStdin:
        return _TtyStdin(sys.stdin)

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("reconciler.cli.sys", _TtySys())


# -- confirmation ----------------------------------------------------------------------------


def test_apply_without_a_terminal_refuses_unless_auto_approved(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("apply")
    assert result.exit_code == 1
    assert result.stderr == (
        "❌ Refusing to apply without confirmation: stdin is not a terminal\n"
        "Pass --auto-approve to apply non-interactively.\n"
    )
    assert "Plan: 5 to start, 0 to replace, 0 to kill." in result.stdout
    assert sprites.fake.names() == []
    assert sprites.state() == {}


def test_apply_on_a_terminal_asks_and_yes_applies(sprites: Sprites, tty: None) -> None:
    sprites.use_example()
    result = sprites("apply", input="yes\n")
    assert result.exit_code == 0, result.output
    assert f"\n\n{PROMPT}yes\n\n" in result.stdout
    assert sorted(sprites.running()) == EXAMPLE_NAMES


@pytest.mark.parametrize("answer", ["no", "y", "YES please", ""])
def test_apply_on_a_terminal_applies_nothing_without_yes(
    sprites: Sprites, tty: None, answer: str
) -> None:
    sprites.use_example()
    result = sprites("apply", input=f"{answer}\n")
    assert result.exit_code == 1
    assert result.stderr == "❌ Apply cancelled.\n"
    assert sprites.fake.names() == []


def test_nothing_to_do_asks_nothing(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    result = sprites("apply")  # no TTY and no --auto-approve: nothing to approve
    assert result.exit_code == 0
    assert result.stdout.endswith("No changes. Sprites match the manifest.\n")


# -- progress and results ----------------------------------------------------------------------


def test_apply_prints_a_progress_line_per_action(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for name in EXAMPLE_NAMES:
        assert f"{name}: Starting..." in lines
        started = [line for line in lines if line.startswith(f"{name}: Started after ")]
        assert len(started) == 1 and re.fullmatch(rf"{name}: Started after [\d.]+m?s", started[0])
        assert lines.index(f"{name}: Starting...") < lines.index(started[0])
    assert lines[-1] == "Apply complete! Sprites: 5 started, 0 replaced, 0 killed."
    assert sorted(sprites.state()) == EXAMPLE_NAMES
    assert {rec["status"] for rec in sprites.state().values()} == {"running"}


def test_applying_twice_gives_no_changes(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    calls = len(sprites.fake.calls())
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    assert result.stdout.endswith("No changes. Sprites match the manifest.\n")
    assert [c[0] for c in sprites.fake.calls()[calls:]] == ["list"]
    assert len(sprites.started_names()) == 5


def test_a_replace_kills_then_starts_with_the_new_spec(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.write_manifest(manifest(a="{memory: 1GiB, cpus: 2}"))
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    (replace,) = [line for line in lines if line.startswith("-/+ replace a: ")]
    assert sorted(replace.removeprefix("-/+ replace a: ").split("; ")) == [
        "cpus: 1 -> 2",
        "memory: 512MiB -> 1GiB",
    ]
    assert lines.index("a: Killing...") < lines.index("a: Starting...")
    assert lines[-1] == "Apply complete! Sprites: 0 started, 1 replaced, 0 killed."
    (sprite,) = sprites.fake.inventory()
    assert (sprite["memory"], sprite["cpus"]) == (1 << 30, 2)
    assert sprites.state()["a"]["spec"] == {"memory": 1 << 30, "cpus": 2}


def test_a_stopped_owned_sprite_is_restarted(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.fake.set_state("a", "error")
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    assert "  ~ restart a: memory 512MiB, cpus 1 (error; will be started again)" in result.stdout
    assert sprites.running() == {"a"}
    assert sprites.state()["a"]["restarts"] == 1


def test_a_failed_action_does_not_stop_the_others_and_a_rerun_converges(
    sprites: Sprites,
) -> None:
    sprites.use_example()
    sprites.fake.script(fail={"start": {"worker-2": "insufficient memory"}})
    result = sprites("apply", "--auto-approve", "--parallelism", "1")
    assert result.exit_code == 1
    assert sorted(sprites.running()) == ["agent-1", "agent-2", "worker-1", "worker-3"]
    assert re.search(
        r"^worker-2: Failed to start after [\d.]+m?s: Failed to start Sprite: insufficient memory$",
        result.stdout,
        re.M,
    )
    assert result.stdout.splitlines()[-1] == (
        "Apply failed! Sprites: 4 started, 0 replaced, 0 killed; 1 failed."
    )
    assert result.stderr == "❌ worker-2: Failed to start Sprite: insufficient memory\n"
    assert "worker-2" not in sprites.state()

    sprites.fake.script()
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    assert "  + start worker-2: memory 512MiB, cpus 1 (new in the manifest)" in result.stdout
    assert "Plan: 1 to start, 0 to replace, 0 to kill." in result.stdout
    assert sorted(sprites.running()) == EXAMPLE_NAMES
    assert sprites.started_names().count("worker-2") == 1
    assert sprites("plan", "--detailed-exitcode").exit_code == 0


def test_every_failure_is_reported_at_the_end(sprites: Sprites) -> None:
    sprites.use_example()
    sprites.fake.script(fail={"start": {"agent-2": "permission denied", "worker-3": "boom"}})
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 1
    assert sorted(result.stderr.splitlines()) == [
        "❌ agent-2: Failed to start Sprite: permission denied",
        "❌ worker-3: Failed to start Sprite: boom",
    ]
    assert "; 2 failed." in result.stdout


def test_a_failed_kill_keeps_ownership_so_a_rerun_finishes_it(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}", b="{}"))
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.write_manifest(manifest(a="{}"))
    sprites.fake.script(fail={"kill": {"b": "permission denied"}})
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 1
    assert "b" in sprites.state()
    sprites.fake.script()
    assert sprites("apply", "--auto-approve").exit_code == 0
    assert sprites.fake.names() == ["a"]
    assert set(sprites.state()) == {"a"}


def test_a_sprite_that_dies_after_starting_is_reported(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(a="{}"))
    sprites.fake.script(phantom=["a"])
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 1
    assert "the runtime reported 'a' started, but it is not listed" in result.stderr
    sprites.fake.script()
    assert sprites("apply", "--auto-approve").exit_code == 0
    assert sprites.running() == {"a"}


def test_apply_json_streams_events_with_the_version_first(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("apply", "--auto-approve", "--json")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "version"
    assert events[0]["format_version"] == "1"
    types = [e["type"] for e in events]
    assert types.count("planned_change") == 5
    assert types.index("change_summary") > types.index("planned_change")
    assert types.count("apply_start") == types.count("apply_complete") == 5
    assert types[-1] == "apply_summary"
    summary = events[-1]
    assert (summary["ok"], summary["failed"]) == (True, 0)
    assert summary["changes"] == {"start": 5, "replace": 0, "kill": 0}
    assert all("timestamp" in e for e in events)


def test_apply_json_reports_failures_as_events(sprites: Sprites) -> None:
    sprites.use_example()
    sprites.fake.script(fail={"start": {"agent-1": "insufficient memory"}})
    result = sprites("apply", "--auto-approve", "--json")
    assert result.exit_code == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    errored = [e for e in events if e["type"] == "apply_errored"]
    assert [(e["sprite"], e["step"]) for e in errored] == [("agent-1", "start")]
    diagnostics = [e for e in events if e["type"] == "diagnostic"]
    assert [d["summary"] for d in diagnostics] == ["Failed to start Sprite: insufficient memory"]
    assert events[-1]["ok"] is False and events[-1]["failed"] == 1


def test_apply_json_without_auto_approve_refuses_as_an_event(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("apply", "--json")
    assert result.exit_code == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "version"
    assert events[-1]["type"] == "diagnostic"
    assert events[-1]["severity"] == "error"
    assert events[-1]["summary"].startswith("Refusing to apply without confirmation")
    assert sprites.fake.names() == []


def test_the_budget_holds_at_every_moment_of_a_replace(sprites: Sprites) -> None:
    sprites.write_config({"maxVMs": 5})
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.write_manifest(
        "version: 1\nproject: demo\nlimits: {maxVMs: 5, memory: 5GiB, cpus: 10}\n"
        "sprites:\n  agent-1: {memory: 1GiB, cpus: 2}\n  agent-2: {memory: 1GiB, cpus: 2}\n"
        "  worker: {replicas: 3, memory: 1GiB, cpus: 2}\n"
    )
    sprites.fake.script(delay={"kill": 0.05, "start": 0.05})
    result = sprites("apply", "--auto-approve", "--parallelism", "10")
    assert result.exit_code == 0, result.output
    assert "Apply complete! Sprites: 0 started, 4 replaced, 0 killed." in result.stdout
    peak = sprites.fake.peak()
    assert peak["running"] <= 5
    assert peak["memory_total"] <= 5 << 30
    assert peak["cpus_total"] <= 10


# -- the lock ----------------------------------------------------------------------------------


def test_a_held_lock_is_reported_with_its_holder(sprites: Sprites) -> None:
    sprites.use_example()
    with StateStore(sprites.state_dir).lock("demo", "destroy"):
        result = sprites("apply", "--auto-approve")
        assert result.exit_code == 1
        assert result.stderr.startswith("❌ state of project 'demo' is locked by destroy (pid ")
        result = sprites("apply", "--auto-approve", "--lock-timeout", "0.2s")
        assert result.exit_code == 1
        assert "after waiting 0.2s" in result.stderr
    assert sprites.fake.names() == []
    assert sprites("apply", "--auto-approve").exit_code == 0


def test_a_bad_lock_timeout(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("apply", "--auto-approve", "--lock-timeout", "soon")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ --lock-timeout: invalid duration 'soon'")


def test_force_unlock_command(sprites: Sprites) -> None:
    result = sprites("force-unlock", "demo")
    assert (result.exit_code, result.stdout) == (0, "Project 'demo' is not locked.\n")
    with StateStore(sprites.state_dir).lock("demo", "apply"):
        result = sprites("force-unlock", "demo")
        assert result.exit_code == 1
        assert "which is still running" in result.stderr


def test_corrupt_state_stops_the_apply_and_is_left_alone(sprites: Sprites) -> None:
    sprites.use_example()
    path = sprites.state_dir / "projects" / "demo.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"❌ {path}:1:2: state file is not valid JSON")
    assert path.read_text() == "{not json"
    assert sprites.fake.names() == []


# -- ownership and destroy --------------------------------------------------------------------


def test_apply_and_destroy_never_touch_unowned_sprites(sprites: Sprites) -> None:
    sprites.fake.add_sprite("theirs")
    assert sprites("start", "imperative").exit_code == 0
    sprites.write_config({"maxVMs": 10})
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    # Removing everything from the manifest kills only what the project owns.
    sprites.write_manifest(manifest(**{"agent-1": "{memory: 1GiB, cpus: 2}"}))
    result = sprites("apply", "--auto-approve")
    assert result.exit_code == 0
    assert "theirs" not in result.stdout and "imperative" not in result.stdout
    assert sprites.running() == {"theirs", "imperative", "agent-1"}
    result = sprites("destroy", "--auto-approve")
    assert result.exit_code == 0
    assert "  - kill agent-1: memory 1GiB, cpus 2 (destroy requested)" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "Destroy complete! Sprites: 0 started, 0 replaced, 1 killed."
    )
    assert sprites.running() == {"theirs", "imperative"}
    assert sprites.state() == {}
    killed = [e["name"] for e in sprites.fake.history() if e["op"] == "kill"]
    assert sorted(killed) == EXAMPLE_NAMES


def test_destroy_by_project_name_without_a_manifest(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    (sprites.root / "sprites.yaml").unlink()
    result = sprites("destroy", "-p", "demo", "--auto-approve")
    assert result.exit_code == 0
    assert sprites.fake.names() == []
    result = sprites("destroy", "-p", "demo", "--auto-approve")
    assert result.exit_code == 0
    assert "No changes." in result.stdout


def test_destroy_needs_confirmation_like_apply(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    result = sprites("destroy")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ Refusing to apply without confirmation")
    assert len(sprites.running()) == 5


def test_destroy_rejects_both_a_manifest_and_a_project(sprites: Sprites) -> None:
    sprites.use_example()
    result = sprites("destroy", "-f", "sprites.yaml", "-p", "demo", "--auto-approve")
    assert result.exit_code == 1
    assert result.stderr == "❌ Give either -f FILE or -p PROJECT, not both.\n"


def test_projects_own_only_their_own_sprites(sprites: Sprites) -> None:
    sprites.write_manifest(manifest(**{"agent-1": "{}", "shared": "{}"}), "a.yaml")
    sprites.write_manifest(
        manifest(**{"agent-2": "{}"}).replace("project: demo", "project: other"), "b.yaml"
    )
    assert sprites("apply", "-f", "a.yaml", "--auto-approve").exit_code == 0
    assert sprites("apply", "-f", "b.yaml", "--auto-approve").exit_code == 0
    assert set(sprites.state("demo")) == {"agent-1", "shared"}
    assert set(sprites.state("other")) == {"agent-2"}
    # A name another project owns is a conflict, not something to take over.
    sprites.write_manifest(
        manifest(**{"agent-2": "{}", "shared": "{}"}).replace("project: demo", "project: other"),
        "b.yaml",
    )
    result = sprites("apply", "-f", "b.yaml", "--auto-approve")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "❌ sprite 'shared' is already running but is not owned by project 'other'"
    )
    assert sprites("destroy", "-p", "other", "--auto-approve").exit_code == 0
    assert sprites.running() == {"agent-1", "shared"}
    assert sprites("plan", "-f", "a.yaml", "--detailed-exitcode").exit_code == 0
