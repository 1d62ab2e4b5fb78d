"""Fixtures for the sandbox tests: real built-in sprites (as root) on a
private state dir, and a project (config + state dir) for the engine, the CLI
and the agent tools, on the built-in runtime or the fake wisp.

Whatever a test leaves behind is removed at its teardown, even when it
fails: sprites (their processes, cgroups, sockets, records and files, kept
ones too), host processes and files it planted. A session sweep catches
cgroups of a run that died.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.drivers import base
from reconciler.drivers.builtin import cgroups, unavailable_reason
from reconciler.drivers.builtin.driver import BuiltinDriver
from reconciler.engine import Engine
from tests.helpers.builtinstate import StateDirs, runtime_fixtures, seed_helper
from tests.helpers.fakewisp import FakeWisp

#: Every sprite these tests start is called ``sx-...``, so the sweep finds it.
PREFIX = "sx-"
HERE = pathlib.Path(__file__).resolve().parent
MiB = 1 << 20
#: The Python a sprite sees: its root has the host's /usr.
SPRITE_PYTHON = "/usr/bin/python3"


def _runtime_problem() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    if os.geteuid() != 0:
        return "needs root: the tests run real sprites with cgroup limits"
    if cgroups.detect() is None:
        return "the kernel offers no memory, cpu and pids cgroup controllers"
    if not os.access(SPRITE_PYTHON, os.X_OK):
        return f"{SPRITE_PYTHON} is missing: the escape attempts run it inside sprites"
    return None


RUNTIME_PROBLEM = _runtime_problem()
needs_runtime = pytest.mark.skipif(
    RUNTIME_PROBLEM is not None, reason=f"built-in runtime unavailable: {RUNTIME_PROBLEM}"
)


STATES = StateDirs(PREFIX)
(helper_binary, _session_safety_net, state_dir, driver, sprite_name) = runtime_fixtures(
    STATES, RUNTIME_PROBLEM, grace=1.0
)
Names = Callable[[str], str]


def start(
    driver: BuiltinDriver,
    name: str,
    *command: str,
    memory: int = 128 * MiB,
    **options: object,
) -> base.CallResult:
    """Start a sprite (default command: sleep, so it stays up for exec)."""
    env = options.pop("env", {})
    assert isinstance(env, dict)
    return driver.start(
        base.StartRequest(
            name=name,
            memory=memory,
            cpus=1,
            command=command or ("sleep", "3600"),
            env=env,
            options=options,
        )
    )


def run_in(driver: BuiltinDriver, name: str, *argv: str, **options: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command inside the sprite."""
    result = driver.exec(name, list(argv), timeout=60, **options)
    return (
        result.exit_code,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def py_in(driver: BuiltinDriver, name: str, code: str, **options: Any) -> tuple[int, str, str]:
    """Run Python code inside the sprite (the host's system Python, from /usr)."""
    return run_in(driver, name, SPRITE_PYTHON, "-c", code, **options)


@pytest.fixture
def host_process() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start host processes (sleep) that are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def planted() -> Iterator[Callable[[pathlib.Path, str], pathlib.Path]]:
    """Plant files on the host (removed at teardown)."""
    made: list[pathlib.Path] = []

    def plant(directory: pathlib.Path, text: str) -> pathlib.Path:
        path = directory / f"sprites-planted-{secrets.token_hex(4)}"
        path.write_text(text)
        made.append(path)
        return path

    yield plant
    for path in made:
        path.unlink(missing_ok=True)


# -- a project for the engine, the CLI and the tools --------------------------


@dataclass
class Project:
    """A config and a state dir on one runtime ("builtin" or "fakewisp")."""

    runtime: str
    root: pathlib.Path
    config_path: pathlib.Path
    state_dir: pathlib.Path
    fake: FakeWisp | None = None
    agent: dict[str, Any] = field(default_factory=dict)

    def engine(self) -> Engine:
        return Engine(config_path=self.config_path, state_dir=self.state_dir)

    def cli(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        from click.testing import CliRunner

        from reconciler.cli import cli

        base_args = ["--config", str(self.config_path), "--state-dir", str(self.state_dir)]
        result = CliRunner().invoke(cli, [*base_args, *args], input=stdin, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def sprite_dir(self, tmp: pathlib.Path) -> str:
        """A directory path valid inside a sprite of this runtime: the fake
        wisp runs commands on this host, so it gets a private host directory."""
        if self.runtime == "fakewisp":
            tmp.mkdir(parents=True, exist_ok=True)
            return str(tmp)
        return "/work"


def make_project(kind: str, tmp_path: pathlib.Path, built: pathlib.Path | None) -> Project:
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    project = Project(kind, root, root / ".wreckit" / "config.json", tmp_path / "state")
    agent: dict[str, Any] = {"kind": "sprite", "maxVMs": 5, "timeout": 60}
    if kind == "fakewisp":
        project.fake = FakeWisp(tmp_path / "fakewisp")
        project.fake.script(exec="run")
        agent.update(runtime="wisp", wispPath=project.fake.path)
    else:
        assert built is not None
        seed_helper(project.state_dir, built)
        agent.update(runtime="builtin")
    project.agent = agent
    project.config_path.write_text(json.dumps({"agent": agent}))
    return project


@pytest.fixture(
    params=["fakewisp", pytest.param("builtin", marks=[pytest.mark.root, needs_runtime])]
)
def project(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Project]:
    """The same test on the fake wisp (commands run on this host) and on the
    built-in runtime (real sprites)."""
    built = None
    if request.param == "builtin":
        built = request.getfixturevalue("helper_binary")
    proj = make_project(request.param, tmp_path, built)
    try:
        if request.param == "builtin":
            with STATES.tracked(proj.state_dir):
                yield proj
        else:
            yield proj
    finally:
        if proj.fake is not None:
            proj.fake.kill_leftovers()
