"""The bad input corpus (``bad/``, described by ``bad/cases.yaml``), each case
run through the real command: ``sprites plan`` and ``sprites apply
--auto-approve``.

Every case exits 1 with one clear message (``file:line:col: ...`` where
there is a position), never a traceback, and leaves the runtime (the fake
wisp's inventory, and no start or kill call) and the state directory exactly
as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from reconciler.models.desired import canonical_spec
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.state import StateStore
from tests.reliability.conftest import Project

BAD = Path(__file__).resolve().parent / "bad"
MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    file: str
    role: str
    expect: str
    at: str | None
    generate: str | None = None


def load_cases() -> list[Case]:
    entries = yaml.safe_load((BAD / "cases.yaml").read_text(encoding="utf-8"))
    return [Case(**entry) for entry in entries]


CASES = load_cases()


def test_the_corpus_has_at_least_40_files_each_in_the_table() -> None:
    files = {p.name for p in BAD.iterdir() if p.name != "cases.yaml"}
    listed = {case.file for case in CASES if case.generate is None}
    assert files == listed, (files - listed, listed - files)
    assert len(files) >= 40
    assert len({case.file for case in CASES}) == len(CASES)


def generate(case: Case, target: Path) -> None:
    if case.generate == "huge":
        # 50 MB of a valid-looking manifest: refused by size, never parsed.
        with target.open("w") as handle:
            handle.write("version: 1\nproject: demo\nsprites:\n")
            line = "  s-{:07d}: {{memory: 512MiB, cpus: 1}}\n"
            written = 0
            number = 0
            while written < 50 * 1000 * 1000:
                text = line.format(number)
                handle.write(text)
                written += len(text)
                number += 1
    elif case.generate == "deep":
        target.write_text("version: 1\nproject: demo\nsprites: " + "[" * 200_000 + "]" * 200_000 + "\n")
    else:
        raise AssertionError(f"unknown generator {case.generate!r}")


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``directory``: mode and content digest."""
    result = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        result[str(path.relative_to(directory))] = (info.st_mode, digest)
    return result


@pytest.fixture
def arranged(project: Project) -> Project:
    """A project that already runs something: one owned sprite recorded in
    the state, one sprite of someone else's, and a valid manifest that would
    start a second sprite if anything let a bad input through."""
    project.fake.add_sprite("agent-1")
    project.fake.add_sprite("theirs")
    state = ProjectState(project="demo")
    state.records["agent-1"] = OwnedRecord(
        name="agent-1", status="running", spec=canonical_spec(512 * MiB, 1), runtime="wisp"
    )
    StateStore(project.state_dir).save(state)
    project.manifest({"agent-1": {}, "agent-2": {}})
    return project


def place(case: Case, project: Project) -> tuple[list[str], str]:
    """Put the case's file in place; the extra arguments and the file as
    the error names it."""
    if case.role == "manifest":
        target = project.root / case.file
        if case.generate:
            generate(case, target)
        else:
            shutil.copyfile(BAD / case.file, target)
        return ["-f", case.file], case.file
    if case.role == "config":
        target = project.config_path
    elif case.role == "config.local":
        target = project.config_path.with_name("config.local.json")
    else:
        raise AssertionError(f"unknown role {case.role!r}")
    shutil.copyfile(BAD / case.file, target)
    return [], str(target)


@pytest.mark.parametrize("command", ["plan", "apply"])
@pytest.mark.parametrize("case", CASES, ids=[case.file for case in CASES])
def test_bad_input_is_refused_cleanly(arranged: Project, case: Case, command: str) -> None:
    project = arranged
    extra, shown = place(case, project)
    inventory_before = project.fake.state_file.read_bytes()
    state_before = snapshot(project.state_dir)

    argv = ["plan"] if command == "plan" else ["apply", "--auto-approve"]
    result = project.run(*argv, *extra)

    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, lines  # the message, and at most one hint
    message = lines[0]
    assert case.expect in message, message
    if case.at is None:
        assert not re.search(r":\d+:\d+: ", message), message
    else:
        assert message.startswith(f"❌ {shown}:{case.at}: "), (message, shown, case.at)
    # Nothing reached the runtime, nothing changed in the state directory.
    calls = project.fake.calls()
    assert all(call[0] not in ("start", "kill") for call in calls), calls
    assert project.fake.state_file.read_bytes() == inventory_before
    assert snapshot(project.state_dir) == state_before


def test_the_arranged_project_would_change_with_good_input(arranged: Project) -> None:
    """The control: with the good manifest, plan shows the start that every
    bad case above must prevent."""
    plan = arranged.plan()
    assert plan.code == 0
    assert "+ start agent-2" in plan.stdout
    assert json.loads(arranged.run("plan", "--json").stdout)["summary"]["start"] == 1
