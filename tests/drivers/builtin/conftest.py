"""Fixtures for the built-in runtime: a driver on a private state dir whose
sprites, cgroups and sockets are removed after each test, even a failing one,
plus a session-wide sweep of anything a test run left behind."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from reconciler.drivers.builtin import cgroups, unavailable_reason
from tests.helpers.builtinstate import StateDirs, cleanup_state, runtime_fixtures
from tests.helpers.builtinstate import seed_helper as _seed_helper

__all__ = ["cleanup_state", "_seed_helper"]

#: Every sprite made by these tests is called ``bt-...`` so the sweep can find it.
PREFIX = "bt-"
HERE = pathlib.Path(__file__).resolve().parent


def _runtime_problem() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    if os.geteuid() != 0:
        return "needs root: the tests set real cgroup limits and namespaces"
    if cgroups.detect() is None:
        return "the kernel offers no memory, cpu and pids cgroup controllers"
    return None


RUNTIME_PROBLEM = _runtime_problem()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = pathlib.Path(str(item.fspath)).resolve()
        module = getattr(item, "module", None)
        if HERE not in path.parents or not getattr(module, "NEEDS_RUNTIME", True):
            continue
        item.add_marker(pytest.mark.root)
        if RUNTIME_PROBLEM:
            item.add_marker(
                pytest.mark.skip(reason=f"built-in runtime unavailable: {RUNTIME_PROBLEM}")
            )


STATES = StateDirs(PREFIX)
(helper_binary, _session_safety_net, state_dir, driver, sprite_name) = runtime_fixtures(
    STATES, RUNTIME_PROBLEM, grace=2.0
)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return predicate()


def wisp_command() -> list[str]:
    found = shutil.which("sprites-wisp")
    if found:
        return [found]
    return [sys.executable, "-m", "reconciler.drivers.builtin.wispcli"]


@pytest.fixture
def wisp(state_dir: pathlib.Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``sprites-wisp`` on the test's state dir; stdin is an open pipe
    nobody writes to, as the contract allows callers to leave it."""

    def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, SPRITES_STATE_DIR=str(state_dir), SPRITES_GRACE="2")
        proc = subprocess.Popen(
            [*wisp_command(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"sprites-wisp {' '.join(args)} hung (did it read stdin?)")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
