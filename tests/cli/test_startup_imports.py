"""How the installed script starts: what a command imports, and whether the
cyclic garbage collector runs.

``sprites --help`` and ``sprites list --json`` are what people and agents run
most; they must not import pydantic (whose models alone take tens of
milliseconds to build), yaml, deepdiff or the MCP SDK, nor logging and the
state store, which they never use. A command that exits when done runs
without the collector; one that runs until stopped keeps it. Each command
runs in a fresh interpreter through the scripts' entry point, and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.cli.harness import Sprites

HEAVY = ("pydantic", "pydantic_core", "yaml", "deepdiff", "mcp")
UNUSED = (
    "logging",
    "reconciler.state",
    "reconciler.planner",
    "reconciler.models.manifest",
    "reconciler.drivers.execio",
)

PROBE = """\
import gc, json, sys
from reconciler import cli
from reconciler.cli import main
cli._exit_now = lambda code: None  # so main exits the usual way, and this reports
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
report = {"code": code, "modules": sorted(sys.modules), "collecting": gc.isenabled()}
sys.stderr.write("\\nMODULES " + json.dumps(report) + "\\n")
"""


def run(sprites: Sprites, *args: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "--state-dir", str(sprites.state_dir), *args],
        cwd=sprites.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, Any] = json.loads(completed.stderr.rpartition("\nMODULES ")[2])
    assert report["code"] in (0, None), completed.stderr
    return report


def imported(sprites: Sprites, *args: str) -> set[str]:
    return set(run(sprites, *args)["modules"])


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


def test_plan_and_apply_of_a_sound_manifest_build_no_pydantic_model(sprites: Sprites) -> None:
    sprites.use_example()
    for command in (("plan",), ("apply", "--auto-approve")):
        modules = imported(sprites, *command)
        assert {"yaml", "reconciler.planner", "reconciler.models.desired"} <= modules, command
        assert sorted(m for m in modules if m.partition(".")[0] == "pydantic") == [], command
        # Nor what it needs no part of: a debug logger, futures, OpenSSL, sockets.
        unused = ("logging", "concurrent.futures", "_hashlib", "socket", "deepdiff")
        assert sorted(m for m in unused if m in modules) == [], command


def test_a_manifest_with_a_problem_is_explained_by_the_models(sprites: Sprites) -> None:
    sprites.write_manifest("version: 1\nproject: demo\nsprites:\n  a: {memory: lots}\n")
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "--state-dir", str(sprites.state_dir), "plan"],
        cwd=sprites.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "sprites.yaml:4:" in completed.stderr and "sprites.a.memory" in completed.stderr
    report = json.loads(completed.stderr.rpartition("\nMODULES ")[2])
    assert report["code"] == 1
    assert {"pydantic", "reconciler.models.manifest"} <= set(report["modules"])


def test_short_commands_run_without_the_collector_and_watchers_with_it(sprites: Sprites) -> None:
    sprites.use_example()
    assert run(sprites, "list", "--json")["collecting"] is False
    assert run(sprites, "plan")["collecting"] is False
    assert run(sprites, "events")["collecting"] is True
    assert run(sprites, "watch", "--once", "--interval", "1s")["collecting"] is True


EXIT_PROBE = """\
import atexit, sys
from reconciler.cli import main
handler, marker = sys.argv[1:3]


class Finalized:
    def __del__(self):
        open(marker + ".finalized", "a").write("torn down;")


kept = Finalized()  # freed only by the interpreter's teardown
if handler == "with-handler":
    atexit.register(lambda: open(marker, "a").write("ran;") and print("handler output", file=sys.stderr))
sys.argv[1:3] = []
main()
"""


@pytest.mark.parametrize("handler", ["with-handler", "without"])
def test_a_command_ends_with_its_exit_status_and_all_its_output(
    sprites: Sprites, tmp_path: Any, handler: str
) -> None:
    """The entry point skips the interpreter's teardown when nothing needs
    it; output, exit status and other programs' atexit handlers (run once,
    their output flushed) survive."""
    sprites.use_example()
    marker = tmp_path / "atexit"
    common = [sys.executable, "-c", EXIT_PROBE, handler, str(marker)]
    common += ["--state-dir", str(sprites.state_dir)]
    schema = subprocess.run(
        [*common, "schema"], cwd=sprites.root, capture_output=True, text=True, timeout=60
    )
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout)["title"]  # the whole document arrived
    plan = subprocess.run(
        [*common, "plan", "--detailed-exitcode"],
        cwd=sprites.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plan.returncode == 2, plan.stderr
    assert plan.stdout.rstrip().splitlines()[-1].startswith("Plan:"), plan.stdout
    failed = subprocess.run(
        [*common, "plan", "-f", "missing.yaml"],
        cwd=sprites.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert "missing.yaml" in failed.stderr
    # Each of the three commands ran the handler once, and its output arrived.
    assert (marker.read_text() if marker.exists() else "") == (
        "ran;" * 3 if handler == "with-handler" else ""
    )
    assert failed.stderr.endswith("handler output\n") == (handler == "with-handler")
    assert not (tmp_path / "atexit.finalized").exists(), "the interpreter was torn down"
