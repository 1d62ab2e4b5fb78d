"""The fake itself: other test folders rely on these behaviours."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.drivers import process
from reconciler.errors import RuntimeTimeoutError
from tests.helpers.fakewisp import FAKEWISP, FakeWisp


def run_fake(fake: FakeWisp, *args: str) -> process.Completed:
    return process.run([fake.path, *args], timeout=20, op="x")


def test_the_raw_executable_runs_from_its_shebang(fakewisp: FakeWisp) -> None:
    assert FAKEWISP.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(FAKEWISP, os.X_OK)
    completed = subprocess.run(
        [str(FAKEWISP), "--version"], env=fakewisp.environ(), capture_output=True, text=True
    )
    assert completed.stdout == "wisp 0.9.0-fake\n"


def test_the_wrapper_needs_no_environment(fakewisp: FakeWisp) -> None:
    clean = {"PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [fakewisp.path, "start", "agent-1"], env=clean, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    assert fakewisp.names() == ["agent-1"]


def test_the_wrapper_is_found_on_path_as_wisp(fakewisp: FakeWisp) -> None:
    completed = subprocess.run(
        ["wisp", "--version"], env=fakewisp.environ(), capture_output=True, text=True
    )
    assert completed.stdout == "wisp 0.9.0-fake\n"


def test_version_can_be_scripted(fakewisp: FakeWisp) -> None:
    fakewisp.script(version="1.2.3")
    assert run_fake(fakewisp, "--version").stdout == "wisp 1.2.3\n"


def test_history_records_totals_after_each_change(fakewisp: FakeWisp) -> None:
    run_fake(fakewisp, "start", "a", "--memory", "512MiB", "--cpus", "1")
    run_fake(fakewisp, "start", "b", "--memory", "1GiB", "--cpus", "2")
    run_fake(fakewisp, "kill", "a")
    run_fake(fakewisp, "kill", "zzz")
    history = fakewisp.history()
    rows = [(h["op"], h["name"], h["running"], h["memory_total"], h["cpus_total"]) for h in history]
    assert rows == [
        ("start", "a", 1, 512 << 20, 1),
        ("start", "b", 2, (512 << 20) + (1 << 30), 3),
        ("kill", "a", 1, 1 << 30, 2),
    ]
    assert all(isinstance(h["t"], float) for h in history)
    peak = {"running": 2, "memory_total": (512 << 20) + (1 << 30), "cpus_total": 3}
    assert fakewisp.peak() == peak


def test_concurrent_starts_respect_capacity(fakewisp: FakeWisp) -> None:
    fakewisp.script(capacity={"sprites": 3}, delay={"start": 0.05})
    names = [f"agent-{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: run_fake(fakewisp, "start", n), names))
    assert sum(r.returncode == 0 for r in results) == 3
    assert {r.stderr for r in results if r.returncode} == {"too many sprites\n"}
    assert len(fakewisp.inventory()) == 3
    assert fakewisp.peak()["running"] == 3
    ids = [s["id"] for s in fakewisp.inventory()]
    assert len(set(ids)) == 3


def test_hang_and_delay_per_name(fakewisp: FakeWisp) -> None:
    fakewisp.script(hang={"start": ["slow"]}, delay={"start": {"late": 0.3}})
    started = time.monotonic()
    run_fake(fakewisp, "start", "late")
    assert time.monotonic() - started >= 0.3
    assert run_fake(fakewisp, "start", "fast").returncode == 0
    with pytest.raises(RuntimeTimeoutError):
        process.run([fakewisp.path, "start", "slow"], timeout=0.5, op="start")


def test_exec_echoes_and_never_runs_anything(fakewisp: FakeWisp, tmp_path: Path) -> None:
    fakewisp.add_sprite("agent-1")
    marker = tmp_path / "ran"
    completed = run_fake(fakewisp, "exec", "agent-1", "--", "touch", str(marker))
    assert completed.returncode == 0
    assert completed.stdout == f"exec in agent-1: touch {marker}\n"
    assert not marker.exists()


def test_exec_exit_code_and_errors(fakewisp: FakeWisp) -> None:
    fakewisp.add_sprite("agent-1")
    fakewisp.add_sprite("down", state="stopped")
    fakewisp.script(exec_exit_code=5)
    assert run_fake(fakewisp, "exec", "agent-1", "--", "false").returncode == 5
    assert run_fake(fakewisp, "exec", "ghost", "--", "true").stderr == "sprite 'ghost' not found\n"
    assert (
        run_fake(fakewisp, "exec", "down", "--", "true").stderr == "sprite 'down' is not running\n"
    )
    assert run_fake(fakewisp, "exec", "agent-1", "true").returncode == 2
    fakewisp.script(exec="unsupported")
    assert run_fake(fakewisp, "exec", "agent-1", "--", "true").stderr == "unknown command 'exec'\n"


def test_unknown_commands_and_bad_usage(fakewisp: FakeWisp) -> None:
    unknown = run_fake(fakewisp, "frob")
    assert (unknown.returncode, unknown.stderr) == (1, "unknown command 'frob'\n")
    assert run_fake(fakewisp, "start").returncode == 2
    assert run_fake(fakewisp, "start", "BAD").returncode == 2
    assert run_fake(fakewisp, "start", "a", "--memory", "lots").returncode == 2
    assert run_fake(fakewisp, "list").returncode == 2
    assert fakewisp.history() == []


def test_start_state_can_be_scripted(fakewisp: FakeWisp) -> None:
    fakewisp.script(start_state="error")
    run_fake(fakewisp, "start", "agent-1")
    assert fakewisp.inventory()[0]["state"] == "error"
    assert fakewisp.history()[-1]["running"] == 0


def test_reset_and_call_log(fakewisp: FakeWisp) -> None:
    run_fake(fakewisp, "start", "a")
    run_fake(fakewisp, "list", "--json")
    assert fakewisp.calls() == [["start", "a"], ["list", "--json"]]
    assert len(set(fakewisp.pgids())) == 2
    fakewisp.reset()
    assert (fakewisp.inventory(), fakewisp.history(), fakewisp.calls()) == ([], [], [])
