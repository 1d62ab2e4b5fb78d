"""start / list / attach / kill / logs: the guide's outputs byte for byte."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from reconciler.cli import wreckit
from tests.cli.harness import Sprites


def socket(sprites: Sprites, number: int) -> str:
    return f"unix://{sprites.fake.directory}/sprite-{number:06x}.sock"


def test_start_prints_the_guides_text(sprites: Sprites) -> None:
    result = sprites("start", "agent-session-1")
    assert result.exit_code == 0
    assert result.stdout == (
        "✅ Started Sprite 'agent-session-1'\n"
        "\n"
        "Output:\n"
        "Started Sprite VM with ID: sprite-000001\n"
        f"Connection: {socket(sprites, 1)}\n"
    )
    assert result.stderr == ""
    (sprite,) = sprites.fake.inventory()
    assert (sprite["name"], sprite["memory"], sprite["cpus"]) == ("agent-session-1", 512 << 20, 1)


def test_start_json_is_the_guides_envelope(sprites: Sprites) -> None:
    result = sprites("start", "agent-session-3", "--json")
    assert result.exit_code == 0
    stdout = f"Started Sprite VM with ID: sprite-000001\\nConnection: {socket(sprites, 1)}\\n"
    assert result.stdout == (
        "{\n"
        '  "success": true,\n'
        '  "message": "Started Sprite \'agent-session-3\'",\n'
        '  "data": {\n'
        '    "name": "agent-session-3",\n'
        '    "memory": "512MiB",\n'
        '    "cpus": "1",\n'
        f'    "stdout": "{stdout}",\n'
        '    "stderr": ""\n'
        "  }\n"
        "}\n"
    )


def test_start_with_custom_resources(sprites: Sprites) -> None:
    result = sprites("start", "agent-session-2", "--memory", "1GiB", "--cpus", "2", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)["data"]
    assert (data["memory"], data["cpus"]) == ("1GiB", "2")
    (sprite,) = sprites.fake.inventory()
    assert (sprite["memory"], sprite["cpus"]) == (1 << 30, 2)
    assert sprites.fake.calls()[-1] == [
        "start",
        "agent-session-2",
        "--memory",
        "1GiB",
        "--cpus",
        "2",
    ]


def test_start_uses_the_config_defaults(sprites: Sprites) -> None:
    sprites.write_config({"defaultMemory": "2G", "defaultCPUs": "4"})
    result = sprites("start", "x", "--json")
    data = json.loads(result.stdout)["data"]
    assert (data["memory"], data["cpus"]) == ("2GiB", "4")


def test_start_refuses_past_max_vms(sprites: Sprites) -> None:
    sprites.write_config({"maxVMs": 2})
    sprites.fake.add_sprite("someone-elses")
    assert sprites("start", "a").exit_code == 0
    result = sprites("start", "b")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "❌ maxVMs exceeded: 3 sprites desired, limit 2 (2 already running)\n"
    assert sorted(sprites.fake.names()) == ["a", "someone-elses"]
    result = sprites("start", "b", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["success"] is False
    assert document["message"].startswith("maxVMs exceeded: 3 sprites desired, limit 2")
    assert document["data"]["name"] == "b"


def test_stopped_sprites_do_not_count_against_max_vms(sprites: Sprites) -> None:
    sprites.write_config({"maxVMs": 1})
    sprites.fake.add_sprite("old", state="stopped")
    assert sprites("start", "a").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "512XB"], "Invalid size '512XB'"),
        (["--cpus", "0"], "Invalid cpus '0'"),
    ],
)
def test_start_rejects_bad_values_before_calling_wisp(
    sprites: Sprites, args: list[str], message: str
) -> None:
    result = sprites("start", "a", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"❌ {message}")
    assert sprites.fake.calls() == []


@pytest.mark.parametrize("name", ["Bad_Name", "-rf", "a" * 64, "a b"])
def test_invalid_names_never_reach_wisp(sprites: Sprites, name: str) -> None:
    for command in ("start", "kill", "attach"):
        result = sprites(command, "--", name) if name.startswith("-") else sprites(command, name)
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.startswith("❌ Invalid name")
    assert sprites.fake.calls() == []


def test_a_runtime_failure_uses_the_guides_wording(sprites: Sprites) -> None:
    sprites.fake.script(fail={"start": "/dev/kvm not found or no access"})
    result = sprites("start", "a")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "❌ Failed to start Sprite: /dev/kvm not found or no access\n"
    result = sprites("start", "a", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "success": False,
        "message": "Failed to start Sprite: /dev/kvm not found or no access",
        "data": {"name": "a", "stdout": "", "stderr": "/dev/kvm not found or no access\n"},
    }


def test_list_prints_the_guides_text(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-session-1", pid=12345)
    sprites.fake.add_sprite("test-vm", pid=12346)
    result = sprites("list")
    assert result.exit_code == 0
    assert result.stdout == (
        "📋 Active Sprites: 2\n\n  1. agent-session-1 (running)\n  2. test-vm (running)\n"
    )


def test_list_shows_each_sprites_state(sprites: Sprites) -> None:
    sprites.fake.add_sprite("a")
    sprites.fake.add_sprite("b", state="stopped")
    sprites.fake.add_sprite("c", state="error")
    assert sprites("list").stdout == (
        "📋 Active Sprites: 3\n\n  1. a (running)\n  2. b (stopped)\n  3. c (error)\n"
    )


def test_an_empty_list(sprites: Sprites) -> None:
    result = sprites("list")
    assert (result.exit_code, result.stdout) == (0, "📋 No active Sprites\n")


def test_list_json_is_the_guides_envelope(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-session-1", pid=12345, id="sprite-abc123")
    sprites.fake.add_sprite("test-vm", pid=12346, id="sprite-def456")
    result = sprites("list", "--json")
    assert result.exit_code == 0
    assert result.stdout.startswith('{\n  "success": true,\n  "message": "Active Sprites: 2",\n')
    document = json.loads(result.stdout)
    assert list(document) == ["success", "message", "data"]
    assert document["data"]["sprites"] == [
        {"id": "sprite-abc123", "name": "agent-session-1", "state": "running", "pid": 12345},
        {"id": "sprite-def456", "name": "test-vm", "state": "running", "pid": 12346},
    ]


def test_list_tolerates_log_noise_from_wisp(sprites: Sprites) -> None:
    sprites.fake.add_sprite("a")
    sprites.fake.script(list="noise", stderr_noise=True)
    assert sprites("list").stdout == "📋 Active Sprites: 1\n\n  1. a (running)\n"


def test_list_garbage_is_an_error_showing_the_output(sprites: Sprites) -> None:
    sprites.fake.script(list="garbage")
    result = sprites("list")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ Failed to list Sprite")
    assert "invalid JSON from 'wisp list --json': <html><head>" in result.stderr
    assert len(result.stderr.encode()) < 400  # an excerpt, not the whole output


def test_attach_prints_the_guides_text(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-session-1")
    result = sprites("attach", "agent-session-1")
    assert result.exit_code == 0
    assert result.stdout == (
        "✅ Attached to Sprite 'agent-session-1'\n"
        "\n"
        "Output:\n"
        "Connected to agent-session-1. Console output:\n"
        "$ [Agent is running...] (running)\n"
    )
    document = json.loads(sprites("attach", "agent-session-1", "--json").stdout)
    assert document["success"] is True
    assert document["message"] == "Attached to Sprite 'agent-session-1'"
    assert document["data"]["name"] == "agent-session-1"


def test_kill_prints_the_guides_text(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-session-1", pid=12345)
    result = sprites("kill", "agent-session-1")
    assert result.exit_code == 0
    assert result.stdout == (
        "✅ Killed Sprite 'agent-session-1'\n"
        "\n"
        "Output:\n"
        "Terminated VM agent-session-1 (PID: 12345)\n"
    )
    assert sprites.fake.names() == []


def test_kill_json_and_kill_of_an_unknown_sprite(sprites: Sprites) -> None:
    sprites.fake.add_sprite("a", pid=7)
    assert json.loads(sprites("kill", "a", "--json").stdout) == {
        "success": True,
        "message": "Killed Sprite 'a'",
        "data": {"name": "a", "stdout": "Terminated VM a (PID: 7)\n", "stderr": ""},
    }
    result = sprites("kill", "a")
    assert result.exit_code == 1
    assert result.stderr == "❌ Failed to kill Sprite: sprite 'a' not found\n"
    result = sprites("kill", "a", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert (document["success"], document["message"]) == (
        False,
        "Failed to kill Sprite: sprite 'a' not found",
    )


def test_kill_is_explicit_and_kills_any_sprite(sprites: Sprites) -> None:
    sprites.use_example()
    assert sprites("apply", "--auto-approve").exit_code == 0
    sprites.fake.add_sprite("theirs")
    assert sprites("kill", "theirs").exit_code == 0
    assert sprites("kill", "agent-1").exit_code == 0
    assert "theirs" not in sprites.fake.names()
    assert "agent-1" not in sprites.fake.names()


def test_logs(sprites: Sprites) -> None:
    sprites.fake.add_sprite("a")
    result = sprites("logs", "a")
    assert result.exit_code == 0
    assert result.stdout.startswith("a: started sprite-")
    assert json.loads(sprites("logs", "--json").stdout)["message"] == "Logs of all Sprites"


def test_wreckit_sprite_is_the_same_command_group(sprites: Sprites) -> None:
    sprites.fake.add_sprite("agent-session-1")
    runner = CliRunner()
    result = runner.invoke(wreckit, ["sprite", "--state-dir", str(sprites.state_dir), "list"])
    assert result.exit_code == 0
    assert result.stdout == sprites("list").stdout
    result = runner.invoke(
        wreckit, ["sprite", "--state-dir", str(sprites.state_dir), "kill", "nope"]
    )
    assert result.exit_code == 1
    assert result.stderr == "❌ Failed to kill Sprite: sprite 'nope' not found\n"
