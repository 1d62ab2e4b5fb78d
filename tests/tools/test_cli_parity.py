"""The CLI's ``--json`` and the tools print the same document for the same operation.

The fake wisp numbers sprites from the start of its inventory, so running an
operation through the CLI, resetting the fake, and running it again through
the tool gives byte-identical runtime output: any difference is ours.
"""

from __future__ import annotations

from reconciler.tools import attach_sprite, kill_sprite, list_sprites, spawn_sprite
from tests.helpers.fakewisp import FakeWisp
from tests.tools.conftest import Project


def test_start_and_spawn_sprite_are_the_same_document(
    wisp_runtime: Project, fake: FakeWisp
) -> None:
    by_cli = wisp_runtime.cli_json("start", "agent-session-1", "--memory", "1GiB", "--cpus", "2")
    fake.reset()
    by_tool = spawn_sprite("agent-session-1", memory="1GiB", cpus="2", engine=wisp_runtime.engine)

    assert by_cli["success"] is True
    assert by_tool == by_cli


def test_list_and_list_sprites_are_the_same_document(wisp_runtime: Project, fake: FakeWisp) -> None:
    assert list_sprites(engine=wisp_runtime.engine) == wisp_runtime.cli_json("list")
    fake.add_sprite("agent-1", pid=12345)
    fake.add_sprite("test-vm", pid=12346, state="stopped")

    by_cli = wisp_runtime.cli_json("list")

    assert len(by_cli["data"]["sprites"]) == 2
    assert list_sprites(engine=wisp_runtime.engine) == by_cli


def test_kill_and_kill_sprite_are_the_same_document(wisp_runtime: Project, fake: FakeWisp) -> None:
    fake.add_sprite("doomed", pid=12345, id="sprite-abc123")
    by_cli = wisp_runtime.cli_json("kill", "doomed")
    fake.add_sprite("doomed", pid=12345, id="sprite-abc123")
    by_tool = kill_sprite("doomed", engine=wisp_runtime.engine)

    assert by_cli["message"] == "Killed Sprite 'doomed'"
    assert by_tool == by_cli


def test_attach_and_attach_sprite_are_the_same_document(
    wisp_runtime: Project, fake: FakeWisp
) -> None:
    fake.add_sprite("console", pid=12345)

    by_cli = wisp_runtime.cli_json("attach", "console")

    assert by_cli["message"] == "Attached to Sprite 'console'"
    assert attach_sprite("console", engine=wisp_runtime.engine) == by_cli


def test_failures_are_the_same_document(wisp_runtime: Project, fake: FakeWisp) -> None:
    wisp_runtime.configure(maxVMs=1)
    fake.add_sprite("running", pid=1)
    fake.script(fail={"attach": "permission denied"})

    pairs = [
        (
            wisp_runtime.cli_json("start", "extra"),
            spawn_sprite("extra", engine=wisp_runtime.engine),
        ),
        (wisp_runtime.cli_json("start", "BAD"), spawn_sprite("BAD", engine=wisp_runtime.engine)),
        (
            wisp_runtime.cli_json("start", "x", "--cpus", "many"),
            spawn_sprite("x", cpus="many", engine=wisp_runtime.engine),
        ),
        (wisp_runtime.cli_json("kill", "ghost"), kill_sprite("ghost", engine=wisp_runtime.engine)),
        (
            wisp_runtime.cli_json("attach", "running"),
            attach_sprite("running", engine=wisp_runtime.engine),
        ),
    ]

    for by_cli, by_tool in pairs:
        assert by_cli["success"] is False
        assert by_tool == by_cli


def test_the_cli_exit_code_matches_the_envelope(wisp_runtime: Project) -> None:
    code, _, _ = wisp_runtime.cli("kill", "ghost", "--json")

    assert code == 1
    assert kill_sprite("ghost", engine=wisp_runtime.engine)["success"] is False
