"""``sprites-wisp`` end to end, as a subprocess, against the wisp CLI contract:
every call, its exact stdout, exit status and one-line stderr reasons."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from .conftest import cleanup_state, wait_for, wisp_command

Wisp = Callable[..., "subprocess.CompletedProcess[str]"]
Names = Callable[[str], str]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0
    assert result.stderr == reason + "\n", "one line with the reason"


def listing(wisp: Wisp) -> list[dict[str, object]]:
    data = json.loads(ok(wisp("list", "--json")))
    assert isinstance(data, list)
    return data


def test_version(wisp: Wisp) -> None:
    assert re.fullmatch(r"wisp \d+\.\d+\.\d+\n", ok(wisp("--version")))


def test_start_list_attach_logs_kill(wisp: Wisp, sprite_name: Names) -> None:
    name = sprite_name("cli")
    out = ok(
        wisp(
            "start",
            name,
            "--memory",
            "64MiB",
            "--cpus",
            "1",
            "--",
            "/bin/sh",
            "-c",
            "echo hello-cli; sleep 60",
        )
    )
    match = re.fullmatch(
        r"Started Sprite VM with ID: (sprite-[0-9a-f]{12})\nConnection: (unix://\S+)\n", out
    )
    assert match, out
    sprites = listing(wisp)
    assert len(sprites) == 1
    entry = sprites[0]
    assert entry["id"] == match.group(1)
    assert (entry["name"], entry["state"], entry["address"]) == (name, "running", match.group(2))
    assert isinstance(entry["pid"], int)

    assert wait_for(lambda: "hello-cli" in ok(wisp("attach", name)), 10)
    assert ok(wisp("attach", name)) == f"Connected to {name}. Console output:\nhello-cli\n"

    logs = ok(wisp("logs", name))
    assert f"started sprite {name}" in logs and "hello-cli" in logs
    assert f"started sprite {name}" in ok(wisp("logs"))

    assert ok(wisp("kill", name)) == f"Terminated VM {name} (PID: {entry['pid']})\n"
    assert listing(wisp) == []
    assert f"killed sprite {name}" in ok(wisp("logs"))


def test_default_sprite_is_a_shell(wisp: Wisp, sprite_name: Names) -> None:
    name = sprite_name("shell")
    ok(wisp("start", name, "--memory", "64MiB", "--cpus", "1"))
    assert ok(wisp("exec", name, "--", "cat", "/proc/1/cmdline"))
    assert ok(wisp("exec", name, "--", "sh", "-c", "ps -o comm= 2>/dev/null || ls /proc"))
    assert listing(wisp)[0]["state"] == "running"
    ok(wisp("kill", name))


def test_sizes_and_cpus_in_every_accepted_form(wisp: Wisp, sprite_name: Names) -> None:
    for memory in ("64MiB", "64M", str(64 << 20), "1GiB", "65536K"):
        name = sprite_name("size")
        ok(wisp("start", name, "--memory", memory, "--cpus", "2"))
        ok(wisp("kill", name))
    fails(wisp("start", sprite_name("bad"), "--memory", "lots"), _size_reason("lots"))
    result = wisp("start", sprite_name("bad"), "--cpus", "0")
    assert result.returncode != 0 and result.stderr.count("\n") == 1


def _size_reason(value: str) -> str:
    from reconciler.models import units

    try:
        units.parse_size(value)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("size should be invalid")


def test_exec_passes_output_and_status_through(wisp: Wisp, sprite_name: Names) -> None:
    name = sprite_name("exec")
    ok(wisp("start", name, "--memory", "64MiB", "--cpus", "1"))
    result = wisp("exec", name, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert ok(wisp("exec", name, "--", "cat", "/proc/sys/kernel/hostname")) == f"{name}\n"
    # exec never hands the caller's stdin to the command.
    assert ok(wisp("exec", name, "--", "sh", "-c", "cat; echo after")) == "after\n"
    fails(
        wisp("exec", sprite_name("nobody"), "--", "true"),
        f"sprite '{sprite_name('nobody')}' not found",
    )
    ok(wisp("kill", name))


def test_known_failure_reasons(wisp: Wisp, sprite_name: Names) -> None:
    name = sprite_name("fail")
    ok(wisp("start", name, "--memory", "64MiB", "--cpus", "1"))
    fails(
        wisp("start", name, "--memory", "64MiB", "--cpus", "1"), f"sprite '{name}' already exists"
    )
    other = sprite_name("missing")
    fails(wisp("kill", other), f"sprite '{other}' not found")
    fails(wisp("attach", other), f"sprite '{other}' not found")
    fails(wisp("logs", other), f"sprite '{other}' not found")
    fails(
        wisp("start", sprite_name("big"), "--memory", "1024GiB", "--cpus", "1"),
        "insufficient memory",
    )
    fails(wisp("frobnicate"), "unknown command 'frobnicate'")
    result = wisp("start", "Not_Valid")
    assert result.returncode != 0 and result.stderr.startswith("invalid name 'Not_Valid'")
    assert result.stderr.count("\n") == 1
    ok(wisp("kill", name))


def test_stopped_and_error_states_in_list(wisp: Wisp, sprite_name: Names) -> None:
    done, broken = sprite_name("done"), sprite_name("broken")
    ok(wisp("start", done, "--memory", "64MiB", "--", "true"))
    ok(wisp("start", broken, "--memory", "64MiB", "--", "sh", "-c", "exit 9"))

    def states() -> dict[object, object]:
        return {s["name"]: s["state"] for s in listing(wisp)}

    assert wait_for(lambda: states() == {done: "stopped", broken: "error"}, 10), states()
    assert all("pid" not in s for s in listing(wisp))
    ok(wisp("kill", done))
    ok(wisp("kill", broken))


def test_commands_never_read_stdin(wisp: Wisp, sprite_name: Names) -> None:
    """The fixture leaves stdin an open pipe nobody writes to: every call must
    still finish (attach, without a terminal, prints and exits)."""
    name = sprite_name("stdin")
    ok(wisp("start", name, "--memory", "64MiB", timeout=10))
    for args in (("list", "--json"), ("attach", name), ("logs",), ("logs", name), ("--version",)):
        ok(wisp(*args, timeout=10))
    ok(wisp("kill", name, timeout=10))


def test_default_state_dir_follows_xdg_state_home(
    tmp_path: pathlib.Path, state_dir: pathlib.Path, sprite_name: Names
) -> None:
    xdg = tmp_path / "xdg"
    target = xdg / "sprites"
    # Reuse the session's helper build instead of compiling again.
    (target / "bin").mkdir(parents=True, mode=0o700)
    for built in (state_dir / "bin").iterdir():
        os.link(built, target / "bin" / built.name)
    env = {k: v for k, v in os.environ.items() if k != "SPRITES_STATE_DIR"}
    env["XDG_STATE_HOME"] = str(xdg)
    name = sprite_name("xdg")
    try:
        result = subprocess.run(
            [*wisp_command(), "start", name, "--memory", "64MiB"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert (target / "builtin" / "sprites" / name).is_dir()
    finally:
        cleanup_state(target)


def test_sprites_wisp_stays_light() -> None:
    code = (
        "import sys, reconciler.drivers.builtin.wispcli;"
        "print([m for m in ('pydantic', 'yaml', 'click') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args", [(), ("start",), ("exec", "x")])
def test_usage_errors_are_one_line(wisp: Wisp, args: tuple[str, ...]) -> None:
    result = wisp(*args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.strip()
