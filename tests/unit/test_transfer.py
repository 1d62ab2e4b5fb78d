"""The copy mechanism without a runtime: locations, paths inside a sprite,
and unpacking what comes out of a sprite, which is not trusted."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from reconciler import transfer
from reconciler.drivers.base import ExecResult
from reconciler.errors import UsageError


def test_locations() -> None:
    assert transfer.parse_location("box:/work/a") == transfer.Location("/work/a", "box")
    assert transfer.parse_location("box-1:rel") == transfer.Location("rel", "box-1")
    assert transfer.parse_location("./box:a") == transfer.Location("./box:a")
    assert transfer.parse_location("/abs/box:a") == transfer.Location("/abs/box:a")
    assert transfer.parse_location("Not_A_Name:x") == transfer.Location("Not_A_Name:x")
    with pytest.raises(UsageError):
        transfer.parse_location("box:")


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/work/a", "/work/a"),
        ("work/a", "/work/a"),
        ("//work//a", "/work/a"),
        ("/work/a/", "/work/a/"),
        ("/work/a/.", "/work/a/."),
        ("/work/x/../a", "/work/a"),
        ("/", "/"),
    ],
)
def test_sprite_paths(path: str, normal: str) -> None:
    assert transfer.sprite_path(path) == normal


@pytest.mark.parametrize("path", ["/..", "../x", "/work/../../etc", "a/../../b"])
def test_paths_above_the_root_are_refused(path: str) -> None:
    with pytest.raises(transfer.CopyError) as info:
        transfer.sprite_path(path)
    assert "resolves outside the sprite's root" in info.value.user_message


def fake_sprite(archive: bytes, kind: str = "dir") -> Callable[..., ExecResult]:
    """An exec that answers the probe with ``kind`` and ``tar -c`` with ``archive``."""

    def run(argv: Sequence[str], stdin: Any, stdout: Any) -> ExecResult:
        if argv[0] == "sh":
            return ExecResult(0, f"{kind}\n".encode())
        assert argv[:2] == ["tar", "-c"]
        stdout.write(archive)
        return ExecResult(0)

    return run


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = fields.pop("mode", 0o644)
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def copy_out(tmp_path: pathlib.Path, data: bytes) -> transfer.Copied:
    return transfer.copy_from(
        fake_sprite(data),
        transfer.Location("/work/out", "box"),
        transfer.Location(str(tmp_path / "dest")),
    )


def test_a_clean_archive_lands_renamed_with_its_modes(tmp_path: pathlib.Path) -> None:
    data = archive(
        (entry("out", tarfile.DIRTYPE, mode=0o750), b""),
        (entry("out/run.sh", mode=0o4755, uid=0), b"#!/bin/sh\n"),
        (entry("out/link", tarfile.SYMTYPE, linkname="run.sh"), b""),
        (entry("out/hard", tarfile.LNKTYPE, linkname="out/run.sh", mode=0o755), b""),
    )
    copied = copy_out(tmp_path, data)
    dest = tmp_path / "dest"
    assert copied.target == str(dest) and copied.files == 4
    assert (dest / "run.sh").read_text() == "#!/bin/sh\n"
    assert oct((dest / "run.sh").stat().st_mode & 0o7777) == oct(0o755)  # no setuid on the host
    assert oct(dest.stat().st_mode & 0o777) == oct(0o750)
    assert os.readlink(dest / "link") == "run.sh"
    assert (dest / "hard").stat().st_ino == (dest / "run.sh").stat().st_ino


@pytest.mark.parametrize(
    "members",
    [
        [(entry("/etc/evil"), b"x")],
        [(entry("out/../../evil"), b"x")],
        [(entry("../evil"), b"x")],
        [
            (entry("out", tarfile.DIRTYPE), b""),
            (entry("out/up", tarfile.SYMTYPE, linkname="/"), b""),
            (entry("out/up/evil"), b"x"),
        ],
        [
            (entry("out", tarfile.DIRTYPE), b""),
            (entry("out/up", tarfile.SYMTYPE, linkname="../.."), b""),
            (entry("out/up/evil"), b"x"),
        ],
        [(entry("out/hard", tarfile.LNKTYPE, linkname="/etc/passwd"), b"")],
        [(entry("out/hard", tarfile.LNKTYPE, linkname="out/../../x"), b"")],
        [(entry("out/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")],
        [(entry("out/fifo", tarfile.FIFOTYPE), b"")],
    ],
    ids=[
        "absolute",
        "dotdot inside",
        "dotdot first",
        "through an absolute link",
        "through a relative link",
        "hardlink out",
        "hardlink dotdot",
        "device",
        "fifo",
    ],
)
def test_what_would_leave_the_destination_is_refused(
    tmp_path: pathlib.Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    with pytest.raises(transfer.CopyError) as info:
        copy_out(tmp_path, archive(*members))
    assert "refusing" in info.value.user_message
    assert not (tmp_path / "evil").exists() and not pathlib.Path("/etc/evil").exists()


def test_a_link_already_at_the_destination_is_replaced_not_followed(
    tmp_path: pathlib.Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out").mkdir()
    (dest / "out" / "file").symlink_to(victim)
    data = archive((entry("out", tarfile.DIRTYPE), b""), (entry("out/file"), b"new\n"))
    transfer.copy_from(
        fake_sprite(data),
        transfer.Location("/work/out", "box"),
        transfer.Location(str(dest)),
    )
    assert victim.read_text() == "keep me\n"
    assert (dest / "out" / "file").read_text() == "new\n"
    assert not (dest / "out" / "file").is_symlink()


def test_a_refused_archive_is_still_read_to_its_end(tmp_path: pathlib.Path) -> None:
    """tar inside must never block on a pipe nobody reads."""
    big = archive((entry("/abs"), b"x"), (entry("out/big"), b"y" * (4 << 20)))

    def run(argv: Sequence[str], stdin: Any, stdout: Any) -> ExecResult:
        if argv[0] == "sh":
            return ExecResult(0, b"dir\n")
        for offset in range(0, len(big), 65536):
            stdout.write(big[offset : offset + 65536])
        return ExecResult(0)

    with pytest.raises(transfer.CopyError):
        transfer.copy_from(run, transfer.Location("/x", "box"), transfer.Location(str(tmp_path)))


def test_a_failing_tar_inside_is_reported(tmp_path: pathlib.Path) -> None:
    def run(argv: Sequence[str], stdin: Any, stdout: Any) -> ExecResult:
        if argv[0] == "sh":
            return ExecResult(0, b"missing\n")
        while stdin is not None and os.read(stdin, 65536):
            pass
        return ExecResult(2, b"", b"tar: /work: Cannot open: Permission denied\n")

    source = tmp_path / "f"
    source.write_text("x")
    with pytest.raises(transfer.CopyError) as info:
        transfer.copy_to(run, transfer.Location(str(source)), transfer.Location("/work/f", "box"))
    assert info.value.user_message == (
        "Failed to copy files of Sprite: tar could not unpack the files in the sprite: "
        "tar: /work: Cannot open: Permission denied"
    )
