"""Runtime faults, scripted in the fake wisp, through the real command.

Garbage and truncated ``list`` output, every reason the guide names on a
non-zero exit, a start that hangs past the timeout (and ignores SIGTERM, and
forks), a kill of a sprite that vanished meanwhile, and a runtime that says
"started" but does not list the sprite. Each is reported as the guide words
it, never as a traceback, and the next apply converges.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from reconciler.drivers.process import KILL_GRACE
from reconciler.drivers.wisp import OUTPUT_EXCERPT_BYTES
from reconciler.errors import RuntimeCallError
from tests.reliability.conftest import Project, groups_gone

GUIDE_REASONS = [
    "/dev/kvm not found or no access",
    "permission denied",
    "insufficient memory",
    "sprite '{name}' already exists",
    "sprite '{name}' not found",
]


def message(op: str, reason: str) -> str:
    """How the engine words a failed call (``Failed to start Sprite: ...``)."""
    return RuntimeCallError(op, reason).user_message


def no_changes_to_runtime(project: Project) -> bool:
    return all(call[0] not in ("start", "kill") for call in project.fake.calls())


# -- list output that is not the contract's --------------------------------


def raw_list_output(project: Project) -> str:
    completed = subprocess.run(
        [project.fake.path, "list", "--json"], capture_output=True, text=True, check=False
    )
    return completed.stdout


@pytest.mark.parametrize("mode", ["garbage", "truncated", "custom"])
@pytest.mark.parametrize("command", [("list",), ("plan",), ("apply", "--auto-approve")])
def test_unparseable_list_output_shows_its_first_200_bytes(
    project: Project, mode: str, command: tuple[str, ...]
) -> None:
    for number in range(12):
        project.fake.add_sprite(f"s-{number}")
    project.manifest({"s-1": {}, "new": {}})
    if mode == "custom":
        text = "".join(f"<{i:03d}>" for i in range(100))  # 500 distinct bytes
        project.fake.script(list_output=text)
    else:
        project.fake.script(list=mode)
        text = raw_list_output(project)
        assert len(text.encode()) > OUTPUT_EXCERPT_BYTES
    result = project.run(*command)
    assert result.code == 1
    assert "Traceback" not in result.output
    assert "invalid JSON from 'wisp list --json': " in result.output, result.output
    excerpt = text.encode()[:OUTPUT_EXCERPT_BYTES].decode()
    assert excerpt in result.output
    assert text.encode()[: OUTPUT_EXCERPT_BYTES + 1].decode() not in result.output
    assert no_changes_to_runtime(project)
    assert project.state() is None


# -- every guide reason, for every operation --------------------------------


@pytest.mark.parametrize("reason", GUIDE_REASONS)
@pytest.mark.parametrize(
    "op,argv",
    [
        ("start", ("start", "box")),
        ("kill", ("kill", "box")),
        ("attach", ("attach", "box")),
        ("logs", ("logs", "box")),
        ("list", ("list",)),
    ],
)
def test_each_guide_reason_surfaces_as_failed_to_op(
    project: Project, op: str, argv: tuple[str, ...], reason: str
) -> None:
    if op != "start":
        project.fake.add_sprite("box")
    project.fake.script(fail={op: reason})
    # list names no sprite, so the fake fills in an empty name.
    expected = message(op, reason.replace("{name}", "" if op == "list" else "box"))
    human = project.run(*argv)
    assert human.code == 1
    assert f"❌ {expected}" in human.stderr, human.output
    assert "Traceback" not in human.output
    as_json = project.run(*argv, "--json")
    assert as_json.code == 1
    document = json.loads(as_json.stdout)
    assert document["success"] is False and document["message"] == expected


@pytest.mark.parametrize("reason", GUIDE_REASONS[:3])
def test_apply_reports_each_failed_start_and_the_next_apply_converges(
    project: Project, reason: str
) -> None:
    project.manifest({"good": {}, "bad": {}})
    project.fake.script(fail={"start": {"bad": reason}})
    failed = project.apply()
    assert failed.code == 1
    assert f"❌ bad: {message('start', reason)}" in failed.stderr, failed.output
    assert "Traceback" not in failed.output
    assert set(project.running()) == {"good"}
    assert set(project.records()) == {"good"}
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert set(project.running()) == {"good", "bad"}
    assert "No changes" in project.plan().stdout


def test_destroy_reports_a_refused_kill_and_keeps_the_record(project: Project) -> None:
    project.manifest({"a": {}, "b": {}})
    assert project.apply().code == 0
    project.fake.script(fail={"kill": {"a": "permission denied"}})
    destroyed = project.run("destroy", "--auto-approve")
    assert destroyed.code == 1
    assert f"❌ a: {message('kill', 'permission denied')}" in destroyed.stderr
    assert set(project.running()) == {"a"}
    assert set(project.records()) == {"a"}
    project.fake.script()
    assert project.run("destroy", "--auto-approve").code == 0
    assert project.fake.names() == [] and project.records() == {}


# -- hangs ------------------------------------------------------------------


def test_a_hung_start_that_ignores_sigterm_is_killed_with_its_children(project: Project) -> None:
    project.configure(timeout=1)
    project.fake.script(hang=["start"], ignore_sigterm=True, hang_child=True)
    began = time.monotonic()
    result = project.run("start", "box")
    took = time.monotonic() - began
    assert result.code == 1
    assert f"❌ {message('start', 'Command timed out after 1 seconds')}" in result.stderr
    # SIGTERM was ignored, so only SIGKILL, KILL_GRACE seconds later, ended it.
    assert took >= 1 + KILL_GRACE - 0.5
    records = project.fake.call_records()
    forked = [r for r in records if "child" in r]
    assert forked, "the hung call did not fork (the scenario did not happen)"
    assert groups_gone([r["pgid"] for r in records])
    assert project.fake.names() == []


def test_a_hung_start_in_an_apply_fails_alone_and_the_next_apply_converges(
    project: Project,
) -> None:
    project.configure(timeout=1)
    project.manifest({"a": {}, "b": {}, "c": {}})
    project.fake.script(hang={"start": ["b"]}, hang_child=True)
    failed = project.apply()
    assert failed.code == 1
    assert f"❌ b: {message('start', 'Command timed out after 1 seconds')}" in failed.stderr
    assert set(project.running()) == {"a", "c"}
    assert groups_gone([r["pgid"] for r in project.fake.call_records()])
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert set(project.running()) == {"a", "b", "c"}
    assert "No changes" in project.plan().stdout


def test_a_start_that_times_out_after_acting_still_counts_against_the_budget(
    project: Project,
) -> None:
    """A timed-out start may have started the sprite: until the runtime says
    otherwise it holds its place in the budget, so another start does not
    go past maxVMs while a slow kill is still freeing room."""
    project.configure(maxVMs=2, timeout=1)
    project.manifest({"old": {}})
    assert project.apply().code == 0
    project.manifest({"a": {}, "b": {}})
    project.fake.script(hang_after={"start": ["a"]}, delay={"kill": {"old": 4}})
    result = project.apply("--parallelism", "4")
    assert result.code == 1  # a timed out
    assert project.fake.peak()["running"] <= 2, project.fake.history()
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert set(project.running()) == {"a", "b"}
    assert project.fake.peak()["running"] <= 2
    assert all(r["status"] == "running" for r in project.records().values())


# -- a sprite that vanished, a start that did not stick ---------------------


def test_a_kill_of_a_sprite_that_vanished_meanwhile_is_done(project: Project) -> None:
    project.manifest({"a": {}, "b": {}, "c": {}})
    assert project.apply().code == 0
    project.manifest({"a": {}})
    project.fake.script(vanish_on_kill=["b"])
    result = project.apply()
    assert result.code == 0, result.output
    assert set(project.running()) == {"a"}
    assert set(project.records()) == {"a"}
    destroyed = project.run("destroy", "--auto-approve")
    assert destroyed.code == 0
    assert project.records() == {}


def test_a_start_the_runtime_does_not_list_is_reported_and_started_next_time(
    project: Project,
) -> None:
    project.manifest({"a": {}, "ghost": {}})
    project.fake.script(phantom=["ghost"])
    result = project.apply()
    assert result.code == 1
    assert "reported 'ghost' started, but it is not listed" in result.stderr, result.output
    assert set(project.running()) == {"a"}
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert set(project.running()) == {"a", "ghost"}
    assert "No changes" in project.plan().stdout


def test_a_start_that_boots_into_error_is_reported_and_restarted_next_time(
    project: Project,
) -> None:
    project.manifest({"a": {}})
    project.fake.script(start_state="error")
    result = project.apply()
    assert result.code == 1
    assert "reported 'a' started, but it is error" in result.stderr, result.output
    project.fake.script()
    again = project.apply()
    assert again.code == 0, again.output
    assert set(project.running()) == {"a"}
    assert "No changes" in project.plan().stdout


def test_log_noise_around_the_list_and_on_stderr_is_tolerated(project: Project) -> None:
    project.manifest({"a": {}, "b": {}})
    project.fake.script(list="noise", stderr_noise=True)
    assert project.apply().code == 0
    assert "No changes" in project.plan().stdout
