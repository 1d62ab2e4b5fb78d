"""Fixtures for the agent tools: one project (config + state dir) on a runtime.

``runtime`` runs a test once on the fake wisp and once on the built-in
runtime (skipped, with the reason, where the built-in runtime cannot run);
``wisp_runtime`` is the fake wisp alone, for fault scripting and for
comparing documents that carry runtime-chosen ids. Every sprite a test
leaves behind is killed at teardown, even when the test fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.engine import Engine
from reconciler.errors import ReconcilerError
from reconciler.tools import EngineFactory, engine_factory
from tests.helpers.fakewisp import FakeWisp

MAX_VMS = 3


@dataclass
class Project:
    """A config and a state dir on one runtime, with ways to drive both front-ends."""

    runtime: str
    root: Path
    config_path: Path
    state_dir: Path
    fake: FakeWisp | None = None
    agent: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> EngineFactory:
        return engine_factory(config_path=self.config_path, state_dir=self.state_dir)

    def configure(self, **agent: Any) -> None:
        """Rewrite the config's agent block with these fields changed."""
        self.agent.update(agent)
        self.config_path.write_text(json.dumps({"agent": self.agent}))

    def cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``sprites --config ... --state-dir ... ARGS`` in-process."""
        base = ["--config", str(self.config_path), "--state-dir", str(self.state_dir)]
        result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def cli_json(self, *args: str) -> dict[str, Any]:
        _, out, _ = self.cli(*args, "--json")
        document: dict[str, Any] = json.loads(out)
        return document

    def names(self) -> list[str]:
        """The sprites the runtime knows, by name, asked below the tools."""
        with _engine(self) as engine:
            return sorted(sprite.name for sprite in engine.list().sprites)

    def write_manifest(self, text: str, name: str = "sprites.yaml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def cleanup(self) -> None:
        """Kill every sprite of the built-in runtime under this state dir (the
        fake wisp runs nothing; its leftovers are its calls' processes)."""
        if self.runtime != "builtin":
            return
        from reconciler.drivers import builtin

        driver = builtin.make_driver(self.state_dir, timeout=30)
        for sprite in driver.list().sprites:
            try:
                driver.kill(sprite.name)
            except ReconcilerError:
                pass  # gone already; teardown goes on with the rest


@contextmanager
def _engine(project: Project) -> Iterator[Engine]:
    engine = Engine(config_path=project.config_path, state_dir=project.state_dir)
    try:
        yield engine
    finally:
        engine.close()


def _builtin_unavailable() -> str | None:
    try:
        from reconciler.drivers import builtin
    except ImportError as exc:
        return f"the built-in runtime is not importable: {exc}"
    reason = builtin.unavailable_reason()
    return f"the built-in runtime cannot run here: {reason}" if reason else None


def _make_project(kind: str, tmp_path: Path) -> Project:
    root = tmp_path / "project"
    (root / ".wreckit").mkdir(parents=True)
    project = Project(
        runtime=kind,
        root=root,
        config_path=root / ".wreckit" / "config.json",
        state_dir=tmp_path / "state",
    )
    agent: dict[str, Any] = {"kind": "sprite", "maxVMs": MAX_VMS, "timeout": 30}
    if kind == "fakewisp":
        project.fake = FakeWisp(tmp_path / "fakewisp")
        agent.update(runtime="wisp", wispPath=project.fake.path)
    else:
        agent.update(runtime="builtin")
    project.configure(**agent)
    return project


def _teardown(project: Project) -> None:
    try:
        project.cleanup()
    finally:
        if project.fake is not None:
            project.fake.kill_leftovers()


@pytest.fixture(
    params=[
        "fakewisp",
        pytest.param("builtin", marks=[pytest.mark.root, pytest.mark.slow]),
    ]
)
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    if request.param == "builtin":
        reason = _builtin_unavailable()
        if reason is not None:
            pytest.skip(reason)
    project = _make_project(request.param, tmp_path)
    try:
        yield project
    finally:
        _teardown(project)


@pytest.fixture
def wisp_runtime(tmp_path: Path) -> Iterator[Project]:
    project = _make_project("fakewisp", tmp_path)
    try:
        yield project
    finally:
        _teardown(project)


@pytest.fixture
def fake(wisp_runtime: Project) -> FakeWisp:
    assert wisp_runtime.fake is not None
    return wisp_runtime.fake
