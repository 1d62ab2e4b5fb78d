"""Commands that validate nothing start without the heavy libraries.

``sprites --help`` and ``sprites list --json`` are what people and agents run
most; they must not import pydantic (whose models alone take tens of
milliseconds to build), yaml, deepdiff or the MCP SDK, nor logging and the
state store, which they never use. Each command runs in a fresh interpreter,
as the installed script does, and reports the modules it ended up with.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli.harness import Sprites

HEAVY = ("pydantic", "pydantic_core", "yaml", "deepdiff", "mcp")
UNUSED = ("logging", "reconciler.state", "reconciler.planner", "reconciler.models.manifest")

PROBE = """\
import json, sys
from reconciler.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
sys.stderr.write("\\nMODULES " + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
"""


def imported(sprites: Sprites, *args: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "--state-dir", str(sprites.state_dir), *args],
        cwd=sprites.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = completed.stderr.rpartition("\nMODULES ")[2]
    result = json.loads(report)
    assert result["code"] in (0, None), completed.stderr
    modules: set[str] = set(result["modules"])
    return modules


@pytest.mark.parametrize(
    "args",
    [("--help",), ("list", "--json"), ("list",)],
    ids=["help", "list-json", "list"],
)
def test_light_commands_import_no_heavy_library(sprites: Sprites, args: tuple[str, ...]) -> None:
    sprites.fake.add_sprite("agent-1")
    modules = imported(sprites, *args)
    heavy = sorted(m for m in modules if m.partition(".")[0] in HEAVY)
    assert heavy == []
    assert sorted(m for m in UNUSED if m in modules) == []


def test_the_probe_sees_what_a_plan_imports(sprites: Sprites) -> None:
    sprites.use_example()
    modules = imported(sprites, "plan")
    assert {"pydantic", "yaml", "reconciler.planner"} <= modules
