"""The whole declarative cycle through the installed ``sprites`` command:
plan -> apply -> plan shows no changes -> edit -> apply (replace, kill) ->
destroy, against the fake wisp, with a sprite the project does not own
running throughout. The fake's history is replayed to check that the budget
held at every moment, not just at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fakewisp import FakeWisp

GiB, MiB = 1 << 30, 1 << 20
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sprites.yaml"
HOST_MAX_VMS = 6  # the example's five sprites plus one that is not the project's
LIMITS = {"maxVMs": 5, "memory": 4 * GiB, "cpus": 8}


def sprites_command() -> str:
    beside = Path(sys.executable).parent / "sprites"
    found = str(beside) if beside.exists() else shutil.which("sprites")
    if found is None:
        pytest.fail("the sprites console script is not installed (pip install -e .)")
    return found


@dataclass
class Project:
    root: Path
    fake: FakeWisp
    env: dict[str, str]
    command: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, *args],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def edit(self, old: str, new: str) -> None:
        path = self.root / "sprites.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    fake = FakeWisp(tmp_path / "fakewisp")
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    (root / ".wreckit" / "config.json").write_text(
        json.dumps({"agent": {"kind": "sprite", "wispPath": fake.path, "maxVMs": HOST_MAX_VMS}})
    )
    shutil.copy(EXAMPLE, root / "sprites.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRITES_")}
    env["SPRITES_STATE_DIR"] = str(tmp_path / "state")
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    try:
        yield Project(root, fake, env, sprites_command())
    finally:
        fake.kill_leftovers()


def replay(fake: FakeWisp, initial: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Every moment of the fake's history: the running sprites after each change."""
    running = dict(initial)
    moments = []
    for entry in fake.history():
        if entry.get("phantom"):
            continue
        if entry["op"] == "start":
            running[entry["name"]] = {"memory": entry["memory"], "cpus": entry["cpus"]}
        else:
            running.pop(entry["name"], None)
        assert entry["running"] == len(running), entry  # the replay agrees with the fake
        moments.append(dict(running))
    return moments


def test_plan_apply_converge_edit_apply_destroy(project: Project) -> None:
    project.fake.add_sprite("theirs", memory=512 * MiB, cpus=1)
    theirs = {"theirs": {"memory": 512 * MiB, "cpus": 1}}
    example = ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]

    plan = project.run("plan")
    assert plan.returncode == 0, plan.stderr
    assert "Plan: 5 to start, 0 to replace, 0 to kill." in plan.stdout
    assert "theirs" not in plan.stdout

    applied = project.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == (
        "Apply complete! Sprites: 5 started, 0 replaced, 0 killed."
    )
    assert sorted(project.fake.names()) == sorted([*example, "theirs"])

    again = project.run("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "No changes. Sprites match the manifest."

    # Grow agent-1 to the project's memory limit exactly and give agent-2 a
    # second CPU: starting a replacement before killing the old sprite would
    # pass the host's maxVMs and the project's memory limit.
    project.edit("agent-1: {memory: 1GiB, cpus: 2}", "agent-1: {memory: 2GiB, cpus: 2}")
    project.edit("agent-2: {}", "agent-2: {cpus: 2}")
    plan = project.run("plan", "--detailed-exitcode")
    assert plan.returncode == 2
    assert "-/+ replace agent-1: memory: 1GiB -> 2GiB" in plan.stdout.splitlines()
    assert "-/+ replace agent-2: cpus: 1 -> 2" in plan.stdout.splitlines()
    assert "Plan: 0 to start, 2 to replace, 0 to kill." in plan.stdout

    applied = project.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == (
        "Apply complete! Sprites: 0 started, 2 replaced, 0 killed."
    )
    assert project.run("plan", "--detailed-exitcode").returncode == 0
    sizes = {s["name"]: (s["memory"], s["cpus"]) for s in project.fake.inventory()}
    assert sizes["agent-1"] == (2 * GiB, 2)
    assert sizes["agent-2"] == (512 * MiB, 2)

    # One worker fewer: a kill.
    project.edit("worker: {replicas: 3}", "worker: {replicas: 2}")
    applied = project.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert "  - kill worker-3: memory 512MiB, cpus 1 (no longer in the manifest)" in applied.stdout
    assert "worker-3" not in project.fake.names()
    assert project.run("plan", "--detailed-exitcode").returncode == 0

    destroyed = project.run("destroy", "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stderr
    assert destroyed.stdout.splitlines()[-1] == (
        "Destroy complete! Sprites: 0 started, 0 replaced, 4 killed."
    )
    assert project.fake.names() == ["theirs"]
    listed = project.run("list")
    assert listed.stdout == "📋 Active Sprites: 1\n\n  1. theirs (running)\n"

    # The budget at every moment of the run, from the fake's own record.
    moments = replay(project.fake, theirs)
    assert moments, "the fake recorded no history"
    for running in moments:
        mine = {name: spec for name, spec in running.items() if name != "theirs"}
        assert len(running) <= HOST_MAX_VMS, running
        assert len(mine) <= LIMITS["maxVMs"], running
        assert sum(s["memory"] for s in mine.values()) <= LIMITS["memory"], running
        assert sum(s["cpus"] for s in mine.values()) <= LIMITS["cpus"], running
    assert project.fake.peak()["running"] <= HOST_MAX_VMS
    # No sprite was ever started twice without a kill in between.
    starts = [e["name"] for e in project.fake.history() if e["op"] == "start"]
    assert sorted(starts) == sorted([*example, "agent-1", "agent-2"])


def test_a_crashed_apply_converges_without_adopt(project: Project) -> None:
    # The first apply is killed while a start hangs after the sprite was
    # recorded by the runtime; the next apply owns it and starts nothing twice.
    project.fake.script(hang_after={"start": ["worker-2"]})
    proc = subprocess.Popen(
        [project.command, "apply", "--auto-approve", "--parallelism", "1"],
        cwd=project.root,
        env=project.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line == "worker-2: Starting...\n":
                break
        # Wait until the runtime has the sprite, then kill the apply outright.
        for _ in range(600):
            if "worker-2" in project.fake.names():
                break
            time.sleep(0.05)
        assert "worker-2" in project.fake.names()
        proc.kill()
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    project.fake.kill_leftovers()
    project.fake.script()

    applied = project.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "worker-2" not in [
        line.split(":")[0] for line in applied.stdout.splitlines() if "Starting..." in line
    ]
    starts = [e["name"] for e in project.fake.history() if e["op"] == "start"]
    assert sorted(starts) == ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]
    assert project.run("plan", "--detailed-exitcode").returncode == 0
