"""State dirs for tests that run real built-in sprites: the session's helper
build put in place, and everything a test's sprites held removed after it
(processes, cgroups, sockets, records, files), even when the test failed.

``StateDirs`` keeps the dirs a session uses, so a session-end sweep catches
what an interrupted test left, and the cgroup scopes they used, so the
sweep touches no other run's cgroups.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from reconciler.drivers.builtin import cgroups, helper, make_driver, records
from reconciler.drivers.builtin.driver import BuiltinDriver
from tests.helpers import cgroupsweep

#: Seconds to wait for a sprite's cgroups to empty before removing them.
CGROUP_TIMEOUT = 5.0


def seed_helper(state_dir: pathlib.Path, built: pathlib.Path) -> None:
    """Put the session's helper build where a driver on ``state_dir`` looks."""
    target = helper.helper_path(state_dir)
    records.make_private_dir(target.parent)
    if not target.exists():
        try:
            os.link(built, target)
        except OSError:
            shutil.copy2(built, target)


def cleanup_state(state_dir: pathlib.Path) -> None:
    """Kill every sprite recorded under ``state_dir``, then make sure nothing
    it held is left: processes, cgroups, sockets, records, files."""
    driver = make_driver(state_dir, timeout=10.0, grace=0.5)
    sprites_dir = driver.layout.sprites
    leftovers: list[tuple[list[str], list[tuple[int, int]]]] = []
    if sprites_dir.is_dir():
        for entry in sorted(sprites_dir.iterdir()):
            groups: list[str] = []
            procs: list[tuple[int, int]] = []
            try:
                fd = records.open_dir(entry)
            except OSError:
                continue
            try:
                limits, pids = records.read_json(fd, "limits"), records.read_kv(fd, "pids")
            finally:
                os.close(fd)
            if limits:
                groups = [str(d) for d in limits.get("dirs", [])]
            for key in ("init", "supervisor"):
                if pids and f"{key}_pid" in pids:
                    procs.append((int(pids[f"{key}_pid"]), int(pids[f"{key}_start"])))
            leftovers.append((groups, procs))
            try:
                driver.kill(entry.name)
            except Exception:
                pass
    for groups, procs in leftovers:
        for pid, began in procs:
            pidfd = records.open_process(pid, began)
            if pidfd is not None:
                records.signal_process(pidfd, signal.SIGKILL)
                records.wait_exit(pidfd, 2.0)
                os.close(pidfd)
        if groups:
            cgroups.remove(
                cgroups.SpriteCgroups(1, tuple(groups), "", "", ""), timeout=CGROUP_TIMEOUT
            )
    for directory in (driver.layout.run, driver.layout.sprites, driver.layout.files):
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)


class StateDirs:
    """The state dirs one test session's sprites live in."""

    def __init__(self, prefix: str) -> None:
        #: Every sprite of these tests is named with it, so the sweep finds it.
        self.prefix = prefix
        self.live: list[pathlib.Path] = []
        self.scopes: set[str] = set()

    @contextmanager
    def tracked(self, state_dir: pathlib.Path) -> Iterator[pathlib.Path]:
        """``state_dir`` for one test, cleaned up after it."""
        self.live.append(state_dir)
        try:
            yield state_dir
        finally:
            self.cleanup(state_dir)
            self.live.remove(state_dir)

    def cleanup(self, state_dir: pathlib.Path) -> None:
        self.scopes.add(cgroups.scope(state_dir))
        cleanup_state(state_dir)

    def sweep(self) -> None:
        """At the session's end: whatever a test could not clean up."""
        for state_dir in list(self.live):
            self.cleanup(state_dir)
        cgroupsweep.sweep(self.prefix, self.scopes, timeout=CGROUP_TIMEOUT)


def runtime_fixtures(states: StateDirs, problem: str | None, *, grace: float) -> tuple[Any, ...]:
    """The fixtures a test folder of real built-in sprites needs, for its
    conftest to bind by name::

        STATES = StateDirs("bt-")
        (helper_binary, _session_safety_net, state_dir, driver, sprite_name) = (
            runtime_fixtures(STATES, RUNTIME_PROBLEM, grace=2.0)
        )

    ``problem`` (why the runtime cannot run here, or None) skips the tests
    that need the helper; every sprite name starts with the prefix of
    ``states``, whose sweep at the session's end finds what an interrupted
    test left; ``grace`` is the driver's SIGTERM-to-SIGKILL wait.
    """
    prefix = states.prefix

    @pytest.fixture(scope="session")
    def helper_binary(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
        """The helper built once per session; each test links it into its state dir."""
        if problem:
            pytest.skip(f"built-in runtime unavailable: {problem}")
        return helper.ensure(tmp_path_factory.mktemp("helper-cache"))

    @pytest.fixture(scope="session", autouse=True)
    def _session_safety_net() -> Iterator[None]:
        yield
        if not problem:
            states.sweep()

    @pytest.fixture
    def state_dir(tmp_path: pathlib.Path, helper_binary: pathlib.Path) -> Iterator[pathlib.Path]:
        """A fresh state dir with the helper in place; cleaned after the test."""
        state = tmp_path / "state"
        seed_helper(state, helper_binary)
        with states.tracked(state):
            yield state

    @pytest.fixture
    def driver(state_dir: pathlib.Path) -> Iterator[BuiltinDriver]:
        drv = make_driver(state_dir, timeout=30.0, grace=grace)
        try:
            yield drv
        finally:
            drv.close()

    @pytest.fixture
    def sprite_name() -> Callable[[str], str]:
        """Unique sprite names, so parallel or repeated runs never collide."""
        run = secrets.token_hex(3)

        def make(label: str = "s") -> str:
            return f"{prefix}{run}-{label}"[:63]

        return make

    return helper_binary, _session_safety_net, state_dir, driver, sprite_name
