"""Fixtures for the built-in runtime: a driver on a private state dir whose
sprites, cgroups and sockets are removed after each test, even a failing one,
plus a session-wide sweep of anything a test run left behind."""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler.drivers.builtin import cgroups, helper, make_driver, unavailable_reason
from reconciler.drivers.builtin.driver import BuiltinDriver
from tests.helpers.builtinstate import StateDirs, cleanup_state
from tests.helpers.builtinstate import seed_helper as _seed_helper

__all__ = ["cleanup_state", "_seed_helper"]

#: Every sprite made by these tests is called ``bt-...`` so the sweep can find it.
PREFIX = "bt-"
HERE = pathlib.Path(__file__).resolve().parent
STATES = StateDirs(PREFIX)


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


@pytest.fixture(scope="session")
def helper_binary(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The helper built once per session; each test links it into its state dir."""
    if RUNTIME_PROBLEM:
        pytest.skip(f"built-in runtime unavailable: {RUNTIME_PROBLEM}")
    return helper.ensure(tmp_path_factory.mktemp("helper-cache"))


@pytest.fixture(scope="session", autouse=True)
def _session_safety_net() -> Iterator[None]:
    yield
    if not RUNTIME_PROBLEM:
        STATES.sweep()


@pytest.fixture
def state_dir(tmp_path: pathlib.Path, helper_binary: pathlib.Path) -> Iterator[pathlib.Path]:
    """A fresh state dir with the helper in place; cleaned after the test."""
    state = tmp_path / "state"
    _seed_helper(state, helper_binary)
    with STATES.tracked(state):
        yield state


@pytest.fixture
def driver(state_dir: pathlib.Path) -> Iterator[BuiltinDriver]:
    drv = make_driver(state_dir, timeout=30.0, grace=2.0)
    try:
        yield drv
    finally:
        drv.close()


@pytest.fixture
def sprite_name() -> Callable[[str], str]:
    """Unique sprite names, so parallel or repeated runs never collide."""
    run = secrets.token_hex(3)

    def make(label: str = "s") -> str:
        return f"{PREFIX}{run}-{label}"[:63]

    return make


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
