"""Crash safety: ``sprites apply`` killed with SIGKILL at many points.

The apply runs as a subprocess against a fake wisp whose calls take time
(delays) or never answer after acting (hang_after), so the kill lands at a
chosen moment: before any runtime call, while a start or kill is in flight,
after the runtime acted but before the apply recorded it, and between a
state file's write and its rename (``SPRITES_FAULT=after-tmp-write:N``).
After each crash, a second apply converges: every desired sprite runs
exactly once, nothing the project started is orphaned or left behind, the
state file parses, and the unowned sprite is untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.models.desired import canonical_spec
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.state import StateStore
from tests.reliability.conftest import Project, groups_gone, no_duplicate_starts, wait_for

MiB = 1 << 20
GiB = 1 << 30
HOST_MAX = 7
LIMITS = {"memory": "4GiB", "cpus": 7}

#: What the project runs before the apply under test (all recorded as owned).
V1 = {
    "keep": (512 * MiB, 1),
    "change": (512 * MiB, 1),
    "drop": (512 * MiB, 1),
    "web-1": (512 * MiB, 1),
    "web-2": (512 * MiB, 1),
}
#: The manifest applied: kill drop, replace change, start web-3 and new.
V2_MANIFEST = {"keep": {}, "change": {"memory": "1GiB"}, "web": {"replicas": 3}, "new": {"cpus": 2}}
V2 = {
    "keep": (512 * MiB, 1),
    "change": (GiB, 1),
    "web-1": (512 * MiB, 1),
    "web-2": (512 * MiB, 1),
    "web-3": (512 * MiB, 1),
    "new": (512 * MiB, 2),
}
STARTED_BY_V2 = {"change", "web-3", "new"}
THEIRS = "theirs"


def baseline(project: Project) -> int:
    """Plant V1 as if applied earlier, plus one sprite the project does not
    own; returns how many fake wisp calls were made so far."""
    project.configure(maxVMs=HOST_MAX, timeout=20)
    for name, (memory, cpus) in V1.items():
        project.fake.add_sprite(name, memory=memory, cpus=cpus)
    project.fake.add_sprite(THEIRS, memory=GiB)
    state = ProjectState(project=project.name)
    for name, (memory, cpus) in V1.items():
        state.records[name] = OwnedRecord(
            name=name, status="running", spec=canonical_spec(memory, cpus), runtime="wisp"
        )
    StateStore(project.state_dir).save(state)
    project.manifest(V2_MANIFEST, limits=LIMITS)
    return len(project.fake.call_records())


def crash(
    project: Project,
    landed: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run apply and SIGKILL it once ``landed()`` holds (unless it exited)."""
    proc = project.popen("apply", "--auto-approve", "--parallelism", "2", env=env)
    try:
        wait_for(lambda: proc.poll() is not None or landed(), timeout=60)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def calls_since(project: Project, mark: int) -> list[dict[str, Any]]:
    return [r for r in project.fake.call_records()[mark:] if "argv" in r]


def called(project: Project, mark: int, *argv: str) -> Callable[[], bool]:
    return lambda: any(r["argv"][: len(argv)] == list(argv) for r in calls_since(project, mark))


def recorded(project: Project, op: str, name: str) -> Callable[[], bool]:
    return lambda: any(h["op"] == op and h["name"] == name for h in project.fake.history())


def assert_converges(project: Project, mark: int) -> None:
    """A second apply (no faults) converges, and every promise holds."""
    crashed_calls = calls_since(project, mark)
    # The killed apply's runtime calls do not outlive it.
    assert groups_gone([r["pgid"] for r in crashed_calls]), "a runtime call outlived its apply"
    # The state file parses, whatever the moment of the crash.
    if project.state_file.exists():
        ProjectState.from_json(json.loads(project.state_file.read_text()))

    project.fake.script()
    again = project.apply("--lock-timeout", "30s")
    assert again.code == 0, again.output
    assert "already exists" not in again.output
    assert "Traceback" not in again.output
    plan = project.plan()
    assert "No changes. Sprites match the manifest." in plan.stdout, plan.output

    inventory = {s["name"]: s for s in project.fake.inventory()}
    # Every desired sprite runs, with the desired resources ...
    for name, (memory, cpus) in V2.items():
        assert inventory[name]["state"] == "running", name
        assert (inventory[name]["memory"], inventory[name]["cpus"]) == (memory, cpus), name
    # ... nothing else of the project's runs, the unowned sprite is untouched ...
    assert set(inventory) == set(V2) | {THEIRS}
    assert not any(h["name"] == THEIRS for h in project.fake.history())
    # ... each was started exactly once (no duplicate start of a running name) ...
    history = project.fake.history()
    no_duplicate_starts(history, list(V1) + [THEIRS])
    starts = [h["name"] for h in history if h["op"] == "start" and not h.get("phantom")]
    assert sorted(starts) == sorted(STARTED_BY_V2), starts
    # ... and every running sprite of the project is recorded, settled.
    records = project.records()
    assert set(records) == set(V2)
    for name, record in records.items():
        assert record["status"] == "running", (name, record)
        assert record["spec"] == canonical_spec(*V2[name])
    # No start ever went past the budget.
    for line in history:
        if line["op"] == "start":
            assert line["running"] <= HOST_MAX
            assert line["cpus_total"] - 1 <= LIMITS["cpus"]
            assert line["memory_total"] - GiB <= 4 * GiB
    # No half-written state file is left behind.
    leftovers = [p.name for p in project.state_file.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# -- kills landed by the runtime's pace -------------------------------------

SCENARIOS: dict[str, tuple[dict[str, Any], Callable[[Project, int], Callable[[], bool]]]] = {
    # The apply is listing: nothing has been planned or recorded yet.
    "while-listing": ({"delay": {"list": 2}}, lambda p, m: called(p, m, "list")),
    # A start is in flight (the runtime has not acted yet).
    "during-start": ({"delay": {"start": {"new": 3}}}, lambda p, m: called(p, m, "start", "new")),
    # The runtime started the sprite, the apply has not heard back.
    "after-start": ({"hang_after": {"start": ["new"]}}, lambda p, m: recorded(p, "start", "new")),
    # A kill is in flight.
    "during-kill": ({"delay": {"kill": {"drop": 3}}}, lambda p, m: called(p, m, "kill", "drop")),
    # The runtime killed the sprite, the apply has not heard back.
    "after-kill": ({"hang_after": {"kill": ["drop"]}}, lambda p, m: recorded(p, "kill", "drop")),
    # A replace is half done: killed, its start in flight.
    "replace-between-steps": (
        {"delay": {"start": {"change": 3}}},
        lambda p, m: called(p, m, "start", "change"),
    ),
    # A replace's kill happened, the apply has not heard back.
    "after-replace-kill": (
        {"hang_after": {"kill": ["change"]}},
        lambda p, m: recorded(p, "kill", "change"),
    ),
    # A replace's start happened, the apply has not heard back.
    "after-replace-start": (
        {"hang_after": {"start": ["change"]}},
        lambda p, m: recorded(p, "start", "change"),
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sigkill_at_a_runtime_moment_then_apply_converges(project: Project, scenario: str) -> None:
    faults, moment = SCENARIOS[scenario]
    mark = baseline(project)
    project.fake.script(**faults)
    result = crash(project, moment(project, mark))
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout, result.stderr)
    assert_converges(project, mark)


@pytest.mark.parametrize("after", [0.4, 0.8, 1.2, 1.6, 2.0, 2.6])
def test_sigkill_at_a_time_then_apply_converges(project: Project, after: float) -> None:
    """Every runtime call takes 0.3 s; the kill lands wherever ``after``
    seconds into the apply happen to be (the assertions hold at any point)."""
    mark = baseline(project)
    project.fake.script(delay={"list": 0.3, "start": 0.3, "kill": 0.3})
    proc = project.popen("apply", "--auto-approve", "--parallelism", "2")
    try:
        try:
            proc.wait(timeout=after)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_converges(project, mark)


# -- kills between a state file's write and its rename ----------------------


def test_sigkill_between_journal_write_and_rename_at_every_write(project: Project) -> None:
    """Kill at the 1st, 2nd, ... state write of an apply until one completes:
    every write of an apply is a crash point that must converge."""
    crashed = 0
    for nth in range(1, 40):
        proj = Project(project.root.parent / f"nth-{nth}")
        try:
            mark = baseline(proj)
            proj.fake.script(delay={"start": 0.05, "kill": 0.05})
            run = proj.apply(
                "--parallelism", "2", env=proj.env(SPRITES_FAULT=f"after-tmp-write:{nth}")
            )
            if run.code == 0:
                # The apply wrote fewer than nth times: every point was covered.
                break
            assert run.code == -signal.SIGKILL, run.output
            crashed += 1
            leftovers = [p for p in proj.state_file.parent.iterdir() if p.name.endswith(".tmp")]
            assert leftovers, "the fault point did not fire between write and rename"
            assert_converges(proj, mark)
        finally:
            proj.fake.kill_leftovers()
    else:
        pytest.fail("the apply never completed: the fault point fires on every write")
    assert crashed >= 4, f"only {crashed} write points were tried"


def test_fault_point_is_inert_without_the_variable(project: Project) -> None:
    mark = baseline(project)
    run = project.apply("--parallelism", "2", env=project.env(SPRITES_FAULT=""))
    assert run.code == 0, run.output
    assert_converges(project, mark)


def test_the_recovering_apply_notes_the_dead_holder(project: Project) -> None:
    mark = baseline(project)
    project.fake.script(delay={"start": {"new": 3}})
    crash(project, called(project, mark, "start", "new"))
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert "Recovered the lock of project 'demo'" in again.stderr
    assert "exited without releasing it" in again.stderr
