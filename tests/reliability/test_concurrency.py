"""Concurrent applies on one project, and locks left behind.

Two and ten ``sprites apply`` processes at once: each sprite is started
exactly once; the others wait (``--lock-timeout``) or fail with an error
naming the lock holder (operation, pid, user@host). A lock whose holder is
gone is recovered automatically when that is safe (a dead local holder: the
kernel released its lock) and otherwise reported with the command that
clears it (``sprites force-unlock <project>``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.conftest import Project, Run, wait_for

SPRITES = {f"s-{n}": {} for n in range(1, 6)}
HOLDER_RE = re.compile(r"locked by apply \(pid (\d+), [^@\s]+@\S+, since [^)]+\)")


def launch(project: Project, count: int, *args: str) -> list[subprocess.Popen[str]]:
    return [project.popen("apply", "--auto-approve", *args) for _ in range(count)]


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[Run]:
    runs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        runs.append(Run(proc.returncode, out, err))
    return runs


def start_counts(project: Project) -> Counter[str]:
    return Counter(call[1] for call in project.fake.calls() if call[0] == "start")


def assert_converged(project: Project) -> None:
    assert start_counts(project) == Counter(dict.fromkeys(SPRITES, 1))
    assert set(project.running()) == set(SPRITES)
    assert set(project.records()) == set(SPRITES)
    plan = project.plan()
    assert "No changes. Sprites match the manifest." in plan.stdout, plan.output


@pytest.mark.parametrize("count", [2, 10])
def test_concurrent_applies_wait_for_the_lock_and_start_each_sprite_once(
    project: Project, count: int
) -> None:
    project.configure(maxVMs=10)
    project.manifest(SPRITES)
    project.fake.script(delay={"start": 0.3})
    runs = finish(launch(project, count, "--lock-timeout", "60s"))
    for run in runs:
        assert run.code == 0, run.output
        assert "Traceback" not in run.output
    assert sum("Apply complete!" in run.stdout for run in runs) == 1
    assert sum("No changes" in run.stdout for run in runs) == count - 1
    assert_converged(project)


@pytest.mark.parametrize("count", [2, 10])
def test_concurrent_applies_without_waiting_fail_naming_the_holder(
    project: Project, count: int
) -> None:
    """Launched together with --lock-timeout 0: whoever does not get the lock
    fails at once, and its error names the holder, never an anonymous one."""
    project.configure(maxVMs=10)
    project.manifest(SPRITES)
    project.fake.script(delay={"start": 0.5})
    procs = launch(project, count)
    pids = {proc.pid for proc in procs}
    runs = finish(procs)
    for run in runs:
        assert run.code in (0, 1), run.output
        assert "Traceback" not in run.output
        if run.code == 1:
            match = HOLDER_RE.search(run.stderr)
            assert match, run.stderr
            assert int(match.group(1)) in pids
            assert "--lock-timeout" in run.stderr
    assert_converged(project)


def test_while_an_apply_holds_the_lock_nine_others_fail_naming_it(project: Project) -> None:
    project.configure(maxVMs=10, timeout=6)
    project.manifest(SPRITES)
    project.fake.script(hang={"start": ["s-3"]})
    holder = project.popen("apply", "--auto-approve")
    try:
        assert wait_for(
            lambda: any(c[:2] == ["start", "s-3"] for c in project.fake.calls()), timeout=30
        )
        runs = finish(launch(project, 9))
        for run in runs:
            assert run.code == 1, run.output
            match = HOLDER_RE.search(run.stderr)
            assert match and int(match.group(1)) == holder.pid, run.stderr
            assert "Traceback" not in run.output
        unlock = project.run("force-unlock", project.name)
        assert unlock.code == 1 and "still running" in unlock.stderr, unlock.output
    finally:
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 1  # its s-3 start timed out
    project.fake.script()
    assert project.apply().code == 0
    assert start_counts(project)["s-3"] == 2  # the hung attempt, then the real one
    assert set(project.running()) == set(SPRITES)


# -- locks left behind ------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    proc.wait()
    return proc.pid


def plant_record(project: Project, *, pid: int, host: str, user: str = "ci") -> Path:
    lock = project.state_dir / "projects" / f"{project.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"pid": pid, "host": host, "user": user, "operation": "apply", "since": time.time()}
    lock.write_text(json.dumps(record))
    lock.chmod(0o600)
    return lock


def test_a_dead_local_holder_is_recovered_and_noted(project: Project) -> None:
    project.manifest(SPRITES)
    pid = dead_pid()
    plant_record(project, pid=pid, host=socket.gethostname())
    run = project.apply()
    assert run.code == 0, run.output
    assert f"Recovered the lock of project 'demo' left by apply (pid {pid}," in run.stderr
    assert_converged(project)


def test_a_remote_holder_is_refused_with_the_force_unlock_command(project: Project) -> None:
    project.manifest(SPRITES)
    plant_record(project, pid=4242, host="build-7.example.com")
    refused = project.apply()
    assert refused.code == 1
    assert "locked by apply (pid 4242, ci@build-7.example.com" in refused.stderr
    assert "sprites force-unlock demo" in refused.stderr
    assert "Traceback" not in refused.output
    assert project.fake.calls() == [] or all(c[0] == "list" for c in project.fake.calls())
    assert project.state() is None
    cleared = project.run("force-unlock", "demo")
    assert cleared.code == 0 and "Cleared the lock of project 'demo'" in cleared.stdout
    assert project.apply().code == 0
    assert_converged(project)


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_held_for_a_dead_holder_is_reported_with_the_command(project: Project) -> None:
    """The recorded holder is dead but the kernel lock is still held (by a
    process that inherited it): apply cannot recover it on its own and says
    how to clear it; force-unlock then detaches the file from that process."""
    project.manifest(SPRITES)
    pid = dead_pid()
    lock = plant_record(project, pid=pid, host=socket.gethostname())
    keeper = subprocess.Popen(
        [sys.executable, "-S", "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert keeper.stdout is not None and keeper.stdout.readline() == "held\n"
        refused = project.apply()
        assert refused.code == 1
        assert f"stale lock: apply (pid {pid}," in refused.stderr
        assert "is no longer running" in refused.stderr
        assert "sprites force-unlock demo" in refused.stderr
        assert project.state() is None
        cleared = project.run("force-unlock", "demo")
        assert cleared.code == 0, cleared.output
        assert "Removed the stale lock of project 'demo'" in cleared.stdout
        run = project.apply()
        assert run.code == 0, run.output
        assert_converged(project)
    finally:
        keeper.kill()
        keeper.wait()


def test_force_unlock_of_an_unlocked_project_says_so(project: Project) -> None:
    result = project.run("force-unlock", "demo")
    assert result.code == 0 and "is not locked" in result.stdout
    assert not os.path.exists(project.state_dir / "projects" / "demo.lock")
