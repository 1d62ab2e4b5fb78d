"""Parsing of wisp output and resolution of the wisp binary, without wisp."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.drivers.wisp import (
    failure_reason,
    memory_argument,
    parse_list_output,
    resolve_wisp,
)
from reconciler.errors import RuntimeOutputError

ENTRY = {"id": "sprite-abc123", "name": "agent-1", "state": "running", "pid": 12345}
ARRAY = json.dumps([ENTRY])


@pytest.mark.parametrize(
    "stdout",
    [
        ARRAY,
        ARRAY + "\n",
        "  " + ARRAY + "  \n",
        "level=info msg=starting\n" + ARRAY + "\n",
        ARRAY + "\nlevel=info msg=done\n",
        "log 1\nlog 2\n" + json.dumps([ENTRY], indent=2) + "\ntrailer\n",
        "[wisp] scanning\n[1/2] checking\n" + ARRAY + "\n[2/2] done\n",
        "[1, 2, 3] retries left\n" + ARRAY + "\n",
        "[] cache empty\n" + ARRAY + "\n",
        '{"level": "info"}\n' + ARRAY + "\n",
        ARRAY + " (1 sprite)\n",
    ],
    ids=[
        "plain",
        "newline",
        "padded",
        "log-before",
        "log-after",
        "pretty",
        "bracketed-logs",
        "numeric-array-log",
        "empty-array-log",
        "json-log",
        "same-line-trailer",
    ],
)
def test_the_array_is_found_among_log_lines(stdout: str) -> None:
    assert parse_list_output(stdout) == [ENTRY]


def test_an_empty_array() -> None:
    assert parse_list_output("[]\n") == []


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "\n",
        "not json",
        '[{"id": "a"',
        '{"sprites": []}',
        "null",
        "[1, 2]",
        "Error: daemon not running\n",
        "x" * 500,
    ],
)
def test_no_array_is_an_output_error(stdout: str) -> None:
    with pytest.raises(RuntimeOutputError) as caught:
        parse_list_output(stdout)
    prefix = "Failed to list Sprites: invalid JSON from 'wisp list --json': "
    assert str(caught.value) == prefix + stdout.encode()[:200].decode()


def test_the_excerpt_is_200_bytes_and_never_splits_a_character() -> None:
    stdout = "é" * 150  # 300 bytes
    with pytest.raises(RuntimeOutputError) as caught:
        parse_list_output(stdout)
    assert caught.value.reason.endswith(": " + "é" * 100)


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        ("insufficient memory\n", "insufficient memory"),
        ("level=warn msg=slow\npermission denied\n\n", "permission denied"),
        ("Error: sprite 'a' not found\n", "sprite 'a' not found"),
        ("  /dev/kvm not found or no access  \n", "/dev/kvm not found or no access"),
        ("", "exit status 7"),
        ("\n \n", "exit status 7"),
    ],
)
def test_failure_reason_is_the_last_stderr_line(stderr: str, reason: str) -> None:
    assert failure_reason(stderr, 7) == reason


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (512 << 20, "512MiB"),
        (1 << 30, "1GiB"),
        (1536 << 20, "1536MiB"),
        (4 << 10, "4KiB"),
        (2 << 40, "2048GiB"),
        (1000, "1000"),
    ],
)
def test_memory_is_given_in_the_contracts_units(size: int, shown: str) -> None:
    assert memory_argument(size) == shown


def _executable(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho wisp 1.0.0\n")
    path.chmod(mode)
    return path


def test_a_bare_name_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wisp = _executable(tmp_path / "bin" / "wisp")
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}{wisp.parent}")
    assert resolve_wisp("wisp") == str(wisp)


def test_a_bare_name_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_wisp("wisp") is None


def test_an_absolute_path(tmp_path: Path) -> None:
    wisp = _executable(tmp_path / "opt" / "wisp")
    assert resolve_wisp(str(wisp)) == str(wisp)


def test_a_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wisp = _executable(tmp_path / "tools" / "wisp")
    monkeypatch.chdir(tmp_path)
    assert resolve_wisp("./tools/wisp") == str(wisp)
    assert resolve_wisp("tools/wisp") == str(wisp)


def test_a_path_is_not_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(tmp_path / "bin" / "wisp")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.chdir(tmp_path)
    assert resolve_wisp("sub/wisp") is None


@pytest.mark.parametrize("case", ["missing", "not-executable", "directory", "empty"])
def test_unusable_paths(tmp_path: Path, case: str) -> None:
    if case == "missing":
        value = str(tmp_path / "nope" / "wisp")
    elif case == "not-executable":
        value = str(_executable(tmp_path / "wisp", mode=0o644))
    elif case == "directory":
        (tmp_path / "wisp").mkdir()
        value = str(tmp_path / "wisp")
    else:
        value = ""
    assert resolve_wisp(value) is None
