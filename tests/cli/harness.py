"""The CLI test harness: a project directory with a Wreckit config pointing
at a fake wisp, a private state directory, and a ``sprites`` runner that
invokes the click group in-process (``CliRunner``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from reconciler.cli import cli
from tests.helpers.fakewisp import FakeWisp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sprites.yaml"


@dataclass
class Sprites:
    """Runs ``sprites <args>`` in :attr:`root` against :attr:`fake`."""

    root: Path
    fake: FakeWisp
    state_dir: Path
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        state_dir: bool = True,
    ) -> Result:
        argv = (["--state-dir", str(self.state_dir)] if state_dir else []) + list(args)
        return self.runner.invoke(cli, argv, input=input, env=env, catch_exceptions=False)

    def write_config(self, agent: dict[str, Any] | None = None, **top: Any) -> Path:
        block = {"kind": "sprite", "wispPath": self.fake.path, **(agent or {})}
        path = self.root / ".wreckit" / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"base_branch": "main", **top, "agent": block}, indent=2))
        return path

    def write_manifest(self, text: str, name: str = "sprites.yaml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def use_example(self) -> Path:
        return self.write_manifest(EXAMPLE.read_text())

    def state(self, project: str = "demo") -> dict[str, Any]:
        path = self.state_dir / "projects" / f"{project}.json"
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())["sprites"]
        return data

    def running(self) -> set[str]:
        return {s["name"] for s in self.fake.inventory() if s["state"] == "running"}

    def started_names(self) -> list[str]:
        return [e["name"] for e in self.fake.history() if e["op"] == "start"]


DEMO = """\
version: 1
project: demo
sprites:
{body}"""


def manifest(**sprites: str) -> str:
    """A demo-project manifest; each keyword is a sprite and its flow mapping."""
    body = "".join(f"  {name}: {spec}\n" for name, spec in sprites.items())
    return DEMO.format(body=body or "  {}\n").replace("sprites:\n  {}\n", "sprites: {}\n")
