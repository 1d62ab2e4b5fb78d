"""Pieces of the built-in runtime that need no namespaces or cgroups: the
console ring, cgroup discovery, state classification, private directories,
host checks and the CLI's usage errors."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import struct

import pytest

from reconciler.drivers.builtin import cgroups, records, wispcli
from reconciler.drivers.builtin import driver as builtin_driver

NEEDS_RUNTIME = False


# ------------------------------------------------------------- console ring


def write_ring(directory: pathlib.Path, data: bytes, total: int, size: int = 16) -> int:
    """A ring file holding ``data`` at its logical positions, ``total`` bytes written."""
    buf = bytearray(size)
    for logical in range(max(0, total - size), total):
        buf[logical % size] = data[logical - (total - len(data))]
    (directory / "console").write_bytes(struct.pack("<4sIQ", b"SPRC", size, total) + bytes(buf))
    return records.open_dir(directory)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"", b""),
        (b"hello", b"hello"),
        (b"0123456789abcdef", b"0123456789abcdef"),
        (b"0123456789abcdefXYZ", b"3456789abcdefXYZ"),
        (b"a" * 40 + b"tail-of-it", b"aaaaaatail-of-it"),
    ],
)
def test_ring_returns_the_most_recent_bytes_in_order(
    tmp_path: pathlib.Path, stream: bytes, expected: bytes
) -> None:
    fd = write_ring(tmp_path, stream, len(stream))
    try:
        assert records.read_console(fd) == expected
    finally:
        os.close(fd)


def test_ring_missing_or_foreign_file_reads_empty(tmp_path: pathlib.Path) -> None:
    fd = records.open_dir(tmp_path)
    try:
        assert records.read_console(fd) == b""
        (tmp_path / "console").write_bytes(b"not a ring at all, no")
        assert records.read_console(fd) == b""
    finally:
        os.close(fd)


def test_console_text_normalises_terminal_newlines() -> None:
    assert records.console_text(b"a\r\nb\r\n\xff") == "a\nb\n\ufffd"


# ------------------------------------------------------------------ cgroups

V1_MOUNTINFO = """\
25 20 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""


def test_detect_uses_v1_when_the_unified_tree_lacks_controllers(tmp_path: pathlib.Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(V1_MOUNTINFO)
    found = cgroups.detect(str(info))
    assert found is not None and found.version == 1
    leaf = f"web.{cgroups.scope(tmp_path)}"
    groups = cgroups.plan(found, "web", tmp_path)
    assert groups.memory_dir == f"/sys/fs/cgroup/memory/sprites/{leaf}"
    assert groups.cpu_dir == f"/sys/fs/cgroup/cpu/sprites/{leaf}"
    assert groups.pids_dir == f"/sys/fs/cgroup/pids/sprites/{leaf}"
    assert groups.oom_file == f"/sys/fs/cgroup/memory/sprites/{leaf}/memory.oom_control"


def test_detect_prefers_v2_with_all_controllers(tmp_path: pathlib.Path) -> None:
    unified = tmp_path / "cg2"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"30 25 0:27 / {unified} rw - cgroup2 cgroup2 rw\n")
    found = cgroups.detect(str(info))
    assert found == cgroups.Hierarchy(version=2, unified=str(unified))
    leaf = f"web.{cgroups.scope(tmp_path)}"
    groups = cgroups.plan(found, "web", tmp_path)
    assert groups.dirs == (f"{unified}/sprites/{leaf}",)
    assert groups.oom_file == f"{unified}/sprites/{leaf}/memory.events"


def test_detect_without_controllers(tmp_path: pathlib.Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert cgroups.detect(str(info)) is None
    assert cgroups.detect(str(tmp_path / "missing")) is None


def test_comounted_controllers_share_one_directory(tmp_path: pathlib.Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory\n"
        "3 0 0:3 / /cg/pids rw - cgroup cgroup rw,pids\n"
    )
    found = cgroups.detect(str(info))
    assert found is not None
    leaf = f"x.{cgroups.scope(tmp_path)}"
    assert cgroups.plan(found, "x", tmp_path).dirs == (
        f"/cg/memory/sprites/{leaf}",
        f"/cg/cpu,cpuacct/sprites/{leaf}",
        f"/cg/pids/sprites/{leaf}",
    )


def test_groups_are_scoped_by_the_resolved_state_dir(tmp_path: pathlib.Path) -> None:
    hierarchy = cgroups.Hierarchy(version=2, unified="/cg")
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (tmp_path / "link").symlink_to(first)
    assert re.fullmatch(r"[0-9a-f]{8}", cgroups.scope(first))
    expected = hashlib.sha256(str(first.resolve()).encode()).hexdigest()[:8]
    assert cgroups.scope(first) == expected
    # One state dir, however it is spelled, has one scope; two have two.
    assert cgroups.scope(tmp_path / "link") == cgroups.scope(first)
    assert cgroups.scope(tmp_path / "two" / ".." / "one") == cgroups.scope(first)
    assert cgroups.scope(second) != cgroups.scope(first)
    assert cgroups.plan(hierarchy, "web", first).dirs == (f"/cg/sprites/web.{expected}",)
    assert cgroups.plan(hierarchy, "web", second) != cgroups.plan(hierarchy, "web", first)


@pytest.mark.parametrize(
    ("version", "filename", "text", "kills"),
    [
        (1, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", 2),
        (2, "memory.events", "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n", 1),
        (1, "memory.oom_control", "oom_kill_disable 0\n", 0),
    ],
)
def test_oom_kills_are_read_from_either_version(
    tmp_path: pathlib.Path, version: int, filename: str, text: str, kills: int
) -> None:
    (tmp_path / filename).write_text(text)
    groups = cgroups.SpriteCgroups(version, (str(tmp_path),), str(tmp_path), "", "")
    assert cgroups.oom_kills(groups) == kills


def test_sprite_cgroups_round_trip_through_json() -> None:
    groups = cgroups.SpriteCgroups(1, ("/a", "/b"), "/a", "/b", "/b")
    assert cgroups.SpriteCgroups.from_json(groups.to_json()) == groups
    assert cgroups.SpriteCgroups.from_json({"version": 1}) is None


# ------------------------------------------------------------------ states


def record(exit_status: dict[str, str] | None) -> builtin_driver._Record:
    return builtin_driver._Record(
        name="web",
        request={"id": "sprite-0123456789ab", "memory": 64 << 20, "cpus": 1},
        limits=None,
        pids={"init_pid": "1", "init_start": "1"},
        exit=exit_status,
        starting=False,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"code": "0"}, ("stopped", "exited with code 0")),
        ({"code": "2"}, ("error", "exited with code 2")),
        ({"signal": "9"}, ("error", "killed by signal 9 (SIGKILL)")),
        ({"signal": "1"}, ("error", "killed by signal 1 (SIGHUP)")),
        ({"init_signal": "9"}, ("error", "the sprite's init was killed by signal 9 (SIGKILL)")),
        ({"init_code": "3"}, ("error", "the sprite's init exited with code 3")),
        (None, ("error", "the sprite ended without recording an exit status")),
    ],
)
def test_how_an_ended_sprite_is_classified(
    status: dict[str, str] | None, expected: tuple[str, str]
) -> None:
    assert builtin_driver._ended(record(status)) == expected


def test_an_oom_kill_names_the_limit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_driver._Record, "oom_kills", lambda self: 1)
    oom = "killed by the kernel: out of memory (limit 64MiB)"
    assert builtin_driver._ended(record({"signal": "9"})) == ("error", oom)
    assert builtin_driver._ended(record({"init_signal": "9"})) == ("error", oom)
    assert builtin_driver._ended(record(None)) == ("error", oom)
    assert builtin_driver._ended(record({"code": "1"})) == (
        "error",
        f"{oom}; exited with code 1",
    )


# ------------------------------------------------------------ private dirs


def test_private_dirs_are_created_0700(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a" / "b"
    records.make_private_dir(target)
    assert (target.stat().st_mode & 0o777) == 0o700
    assert ((tmp_path / "a").stat().st_mode & 0o777) == 0o700
    records.make_private_dir(target)  # existing and ours: fine


def test_private_dirs_refuse_symlinks_and_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    for name in ("link", "file"):
        with pytest.raises(records.UnsafePathError):
            records.make_private_dir(tmp_path / name)


def test_write_new_never_follows_or_overwrites(tmp_path: pathlib.Path) -> None:
    fd = records.open_dir(tmp_path)
    try:
        records.write_new(fd, "request", b"{}")
        assert (tmp_path / "request").stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            records.write_new(fd, "request", b"{}")
        (tmp_path / "evil").symlink_to(tmp_path / "target")
        with pytest.raises(OSError):
            records.write_new(fd, "evil", b"x")
        assert not (tmp_path / "target").exists()
    finally:
        os.close(fd)


# --------------------------------------------------------- process facts


def test_process_facts_check_the_start_time() -> None:
    facts = records.proc_stat(os.getpid())
    assert facts is not None
    state, start = facts
    assert records.is_alive(os.getpid(), start)
    assert not records.is_alive(os.getpid(), start + 1)
    assert records.open_process(os.getpid(), start + 1) is None
    assert not records.is_alive(None, start)
    fd = records.open_process(os.getpid(), start)
    assert fd is not None
    os.close(fd)


# -------------------------------------------------------------- host checks


def test_state_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("SPRITES_STATE_DIR", str(tmp_path / "explicit"))
    assert builtin_driver.default_state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SPRITES_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert builtin_driver.default_state_dir() == tmp_path / "xdg" / "sprites"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert builtin_driver.default_state_dir() == tmp_path / "home" / ".local/state/sprites"


def test_without_gcc_the_runtime_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    from reconciler import errors
    from reconciler.drivers import base, hostio

    monkeypatch.setattr(hostio, "c_compiler", lambda: None)
    monkeypatch.setenv("SPRITES_STATE_DIR", str(tmp_path / "nothing-built"))
    reason = builtin_driver.unavailable_reason()
    assert reason is not None
    if os.geteuid() == 0:  # root on Linux: the compiler is the only thing missing
        assert "apt-get install gcc" in reason
    drv = builtin_driver.BuiltinDriver(tmp_path / "fresh")
    with pytest.raises(errors.RuntimeCallError) as info:
        drv.start(base.StartRequest(name="web", memory=64 << 20, cpus=1))
    assert "apt-get install gcc" in info.value.reason
    assert not (tmp_path / "fresh" / "builtin" / "sprites" / "web").exists()


# ------------------------------------------------------------ CLI usage


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frob"], "unknown command 'frob'\n"),
        (["kill", "Bad_Name"], None),
        (["start", "web", "--memory", "12 parsecs"], None),
        (["start", "web", "--cpus", "-1"], None),
        (["exec", "web"], "exec needs a command: exec <name> -- COMMAND...\n"),
        ([], None),
    ],
)
def test_cli_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str | None
) -> None:
    assert wispcli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    if message is not None:
        assert err == message


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler import __version__

    assert wispcli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"wisp {__version__}\n"
