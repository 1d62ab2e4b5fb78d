"""Configuration as the CLI meets it: environment variables, --config,
--verbose, and the guide's config errors."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from tests.cli.harness import Sprites


def test_the_state_dir_comes_from_sprites_state_dir(sprites: Sprites) -> None:
    sprites.use_example()
    elsewhere = sprites.root.parent / "env-state"
    result = sprites(
        "apply", "--auto-approve", env={"SPRITES_STATE_DIR": str(elsewhere)}, state_dir=False
    )
    assert result.exit_code == 0
    assert (elsewhere / "projects" / "demo.json").is_file()
    assert not sprites.state_dir.exists()
    assert (elsewhere.stat().st_mode & 0o777) == 0o700


def test_the_default_state_dir_follows_xdg_state_home(sprites: Sprites) -> None:
    sprites.use_example()
    xdg = sprites.root.parent / "xdg"
    result = sprites("apply", "--auto-approve", env={"XDG_STATE_HOME": str(xdg)}, state_dir=False)
    assert result.exit_code == 0
    assert (xdg / "sprites" / "projects" / "demo.json").is_file()


def test_options_come_from_sprites_environment_variables(sprites: Sprites) -> None:
    sprites.use_example()
    # apply --auto-approve as SPRITES_APPLY_AUTO_APPROVE, --parallelism likewise.
    result = sprites(
        "apply", env={"SPRITES_APPLY_AUTO_APPROVE": "true", "SPRITES_APPLY_PARALLELISM": "1"}
    )
    assert result.exit_code == 0, result.output
    assert len(sprites.running()) == 5


def test_the_config_path_and_runtime_from_the_environment(sprites: Sprites) -> None:
    other = sprites.root.parent / "other-config.json"
    other.write_text(json.dumps({"agent": {"kind": "sprite", "wispPath": "/no/such/wisp"}}))
    result = sprites("list", env={"SPRITES_CONFIG": str(other), "SPRITES_RUNTIME": "wisp"})
    assert result.exit_code == 1
    assert result.stderr == (
        "❌ Wisp CLI not found at '/no/such/wisp'. Install Wisp to enable Sprite support\n"
    )


def test_config_flag_picks_a_config(sprites: Sprites) -> None:
    other = sprites.root.parent / "other-config.json"
    other.write_text(
        json.dumps({"agent": {"kind": "sprite", "wispPath": sprites.fake.path, "maxVMs": 1}})
    )
    assert sprites("--config", str(other), "start", "a").exit_code == 0
    result = sprites("--config", str(other), "start", "b")
    assert result.exit_code == 1
    assert result.stderr.startswith("❌ maxVMs exceeded: 2 sprites desired, limit 1")


def test_the_config_is_found_from_a_subdirectory(
    sprites: Sprites, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = sprites.root / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    sprites.fake.add_sprite("a")
    assert sprites("list").stdout == "📋 Active Sprites: 1\n\n  1. a (running)\n"


def test_runtime_wisp_with_a_missing_wisp_gives_the_guides_error(sprites: Sprites) -> None:
    sprites.write_config({"runtime": "wisp", "wispPath": "wisp-not-installed-here"})
    for args in (["list"], ["start", "a"], ["kill", "a"], ["plan"]):
        if args == ["plan"]:
            sprites.use_example()
        result = sprites(*args)
        assert result.exit_code == 1, args
        assert result.stderr == (
            "❌ Wisp CLI not found at 'wisp-not-installed-here'. "
            "Install Wisp to enable Sprite support\n"
        )
    result = sprites("list", "--json")
    assert json.loads(result.stdout) == {
        "success": False,
        "message": (
            "Wisp CLI not found at 'wisp-not-installed-here'. Install Wisp to enable Sprite support"
        ),
        "data": {},
    }


def test_another_agent_kind_gives_the_guides_error(sprites: Sprites) -> None:
    sprites.write_config({"kind": "claude_sdk"})
    result = sprites("list")
    assert result.exit_code == 1
    assert result.stderr == (
        "Agent kind must be 'sprite' to use Sprite commands. Current kind: 'claude_sdk'\n"
    )
    assert sprites.fake.calls() == []


def test_an_invalid_local_overlay_is_reported_with_its_position(sprites: Sprites) -> None:
    local = sprites.root / ".wreckit" / "config.local.json"
    local.write_text('{\n  "agent": {"maxVMs": 3,}\n}\n')
    result = sprites("list")
    assert result.exit_code == 1
    assert result.stderr == (
        f"❌ {local}:2:25: invalid JSON: Expecting property name enclosed in double quotes\n"
    )


def test_an_unknown_agent_field_is_reported_with_its_position(sprites: Sprites) -> None:
    config = sprites.root / ".wreckit" / "config.json"
    config.write_text(
        '{\n  "merge_mode": "pr",\n  "agent": {\n    "kind": "sprite",\n    "maxVM": 3\n  }\n}\n'
    )
    result = sprites("list")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"❌ {config}:5:14: agent.maxVM: unknown field; expected one of"
    )


def test_verbose_logs_each_runtime_call_with_its_duration(sprites: Sprites) -> None:
    sprites.fake.add_sprite("a")
    result = sprites("--verbose", "list")
    assert result.exit_code == 0
    assert result.stdout == "📋 Active Sprites: 1\n\n  1. a (running)\n"
    assert re.search(
        rf"^\[sprites\] {re.escape(sprites.fake.path)} list --json -> exit 0 in [\d.]+s$",
        result.stderr,
        re.M,
    ), result.stderr
    quiet = sprites("list")
    assert quiet.stderr == ""


def test_verbose_logs_failures_too(sprites: Sprites) -> None:
    sprites.fake.script(fail={"kill": "permission denied"})
    sprites.fake.add_sprite("a")
    result = sprites("-v", "kill", "a")
    assert result.exit_code == 1
    assert re.search(r"kill a -> exit 1 in [\d.]+s", result.stderr)
    assert result.stderr.endswith("❌ Failed to kill Sprite: permission denied\n")


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("sprites, version ")


def test_unknown_commands_and_options_exit_1() -> None:
    runner = CliRunner()
    for args in (["nope"], ["list", "--bogus"], ["start"], ["apply", "--parallelism", "0"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, args
        assert "Error:" in result.stderr


def test_verbose_leaves_no_logging_behind(sprites: Sprites) -> None:
    import logging

    logger = logging.getLogger("sprites")
    before = (list(logger.handlers), logger.level)
    assert sprites("--verbose", "list").exit_code == 0
    assert (list(logger.handlers), logger.level) == before
