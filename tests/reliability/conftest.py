"""Fixtures for the reliability tests: a project directory wired to a fake
wisp and a private state directory, and a runner for the real ``sprites``
command (a subprocess, as users run it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.fakewisp import FakeWisp, process_group_members

HERE = Path(__file__).resolve().parent


def sprites_command() -> list[str]:
    """The installed ``sprites`` console script, beside this interpreter."""
    script = shutil.which("sprites", path=os.path.dirname(sys.executable))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


SPRITES = sprites_command()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Project:
    """One project directory: ``.wreckit/config.json`` naming a fake wisp,
    ``sprites.yaml``, and a state directory of its own."""

    def __init__(self, root: Path, *, name: str = "demo") -> None:
        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        self.fake = FakeWisp(root / "fakewisp")
        self.state_dir = root / "state"
        self.manifest_path = root / "sprites.yaml"
        self.config_path = root / ".wreckit" / "config.json"
        self.configure()

    # -- files -----------------------------------------------------------

    def configure(self, **agent: Any) -> None:
        values: dict[str, Any] = {"kind": "sprite", "wispPath": self.fake.path, "timeout": 20}
        values.update(agent)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"agent": values}, indent=2) + "\n")

    def manifest(self, sprites: dict[str, Any] | None = None, **top: Any) -> Path:
        document: dict[str, Any] = {"version": 1, "project": self.name}
        document.update(top)
        document["sprites"] = sprites or {}
        self.manifest_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.manifest_path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "projects" / f"{self.name}.json"

    def state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        return data

    def records(self) -> dict[str, Any]:
        state = self.state()
        return {} if state is None else dict(state["sprites"])

    # -- running sprites -------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPRITES_")}
        env["SPRITES_STATE_DIR"] = str(self.state_dir)
        env["XDG_STATE_HOME"] = str(self.root / "xdg")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None, **popen: Any
    ) -> Run:
        completed = subprocess.run(
            [*SPRITES, *args],
            cwd=self.root,
            env=env or self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **popen,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*SPRITES, *args],
            cwd=self.root,
            env=env or self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def apply(self, *args: str, **kwargs: Any) -> Run:
        return self.run("apply", "--auto-approve", *args, **kwargs)

    def plan(self, *args: str, **kwargs: Any) -> Run:
        return self.run("plan", *args, **kwargs)

    def running(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.fake.inventory() if s["state"] == "running"}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(tmp_path / "project")
    try:
        yield proj
    finally:
        proj.fake.kill_leftovers()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (no timed assertion:
    the timeout only bounds a test that would otherwise hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def groups_gone(pgids: Sequence[int], timeout: float = 20.0) -> bool:
    """Whether every process of these process groups has exited."""
    return wait_for(lambda: not any(process_group_members(g) for g in pgids), timeout)


def no_duplicate_starts(history: list[dict[str, Any]], initial: Sequence[str] = ()) -> None:
    """No history line starts a name that is running at that moment."""
    running = set(initial)
    for line in history:
        if line.get("phantom"):
            continue
        if line["op"] == "start":
            assert line["name"] not in running, f"{line['name']} started while running"
            running.add(line["name"])
        else:
            running.discard(line["name"])
