"""Every command documents itself."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from reconciler.cli import cli, wreckit


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", commands(cli), ids=lambda p: " ".join(p) or "sprites")
def test_every_command_has_help_text(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {' '.join(path)}".rstrip())
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and len(command.help.strip()) > 20, f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"


def test_every_command_is_listed_in_the_top_level_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for name in cli.commands:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("path", commands(wreckit), ids=lambda p: " ".join(p) or "wreckit")
def test_wreckit_sprite_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(wreckit, [*path, "--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")
