"""The guest image's parts: the initramfs archive, the sprite's command
script, the kernel extraction from a bzImage, and the built image itself."""

from __future__ import annotations

import gzip
import os
import pathlib
import stat
import struct
import subprocess

import pytest

from reconciler.drivers.microvm import agent, image
from reconciler.drivers.microvm.image import Image, ImageError


def parse_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, content, (rdev major, minor)) of a newc archive."""
    entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        content = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, content, rdev)


def test_the_archive_holds_dirs_files_and_device_nodes() -> None:
    data = image.cpio_archive(
        ("bin", "dev"),
        {"init": b"#!/bin/sh\n", "etc/x": b"abc"},
        executables={"init"},
        devices=True,
    )
    assert len(data) % 512 == 0
    entries = parse_cpio(data)
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["init"][1] == b"#!/bin/sh\n" and stat.S_IMODE(entries["init"][0]) == 0o755
    assert stat.S_IMODE(entries["etc/x"][0]) == 0o644
    console = entries["dev/console"]
    assert stat.S_ISCHR(console[0]) and console[2] == (5, 1)


def test_the_sprite_script_keeps_every_argument_intact(tmp_path: pathlib.Path) -> None:
    argv = ["printf", "[%s]\\n", "two words", "it's", "$HOME", "`id`", "a\nb", "*"]
    script = image.sprite_script(argv, {"GREETING": "hello 'world' $x"})
    path = tmp_path / "run"
    path.write_text(script + 'printf "%s\\n" "$GREETING"\n')
    done = subprocess.run(["/bin/sh", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout == "[two words]\n[it's]\n[$HOME]\n[`id`]\n[a\nb]\n[*]\n"
    env = subprocess.run(
        [
            "/bin/sh",
            "-c",
            image.sprite_script(
                ["sh", "-c", 'printf %s "$GREETING"'], {"GREETING": "hello 'world' $x"}
            ),
        ],
        capture_output=True,
        text=True,
    )
    assert env.stdout == "hello 'world' $x"


def test_the_sprite_script_starts_in_its_workdir(tmp_path: pathlib.Path) -> None:
    workdir = tmp_path / "a dir" / "work"
    script = image.sprite_script(["pwd"], {}, str(workdir))
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    assert done.stdout == f"{workdir}\n"


def test_the_sprite_initrd_follows_the_base_archive(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(gzip.compress(image.cpio_archive(("bin",), {"init": b"x"})))
    target = tmp_path / "initrd"
    image.sprite_initrd(base, target, {"sprite/run": b"exec true\n"})
    data = target.read_bytes()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert data.startswith(base.read_bytes())
    extra = data[len(base.read_bytes()) :].lstrip(b"\0")
    assert parse_cpio(extra)["sprite/run"][1] == b"exec true\n"


def test_the_kernel_package_is_read_from_the_meta_package() -> None:
    depends = "linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"
    assert image._kernel_dependency(depends) == "linux-image-6.1.0-57-cloud-amd64=6.1.192-3"
    with pytest.raises(ImageError):
        image._kernel_dependency("initramfs-tools")


def _elf_with_pvh_note() -> bytes:
    """A minimal 64-bit ELF whose only program header is a note with the PVH entry."""
    name = b"Xen\0"
    note = struct.pack("<III", len(name), 4, 18) + name + struct.pack("<I", 0x1000000)
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = 2  # 64-bit
    header[5] = 1  # little endian
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def _bzimage(payload: bytes, size: int) -> bytes:
    """A bzImage-shaped file: setup sectors, the boot header, then the payload."""
    setup_sects = 1
    data = bytearray((setup_sects + 1) * 512)
    data[0x1F1] = setup_sects
    data[0x202:0x206] = b"HdrS"
    body = payload + struct.pack("<I", size)
    struct.pack_into("<II", data, 0x248, 0, len(body))
    return bytes(data) + body


def test_vmlinux_comes_out_of_the_bzimage_payload(tmp_path: pathlib.Path) -> None:
    elf = _elf_with_pvh_note()
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(_bzimage(gzip.compress(elf), len(elf)))
    target = tmp_path / "vmlinux"
    image.extract_vmlinux(bz, target, tmp_path, deadline=float("inf"))
    assert target.read_bytes() == elf
    assert image.has_pvh_entry(target)


def test_a_payload_of_the_wrong_size_is_refused(tmp_path: pathlib.Path) -> None:
    elf = _elf_with_pvh_note()
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(_bzimage(gzip.compress(elf), len(elf) + 1))
    with pytest.raises(ImageError, match="expected"):
        image.extract_vmlinux(bz, tmp_path / "vmlinux", tmp_path, deadline=float("inf"))


def test_not_a_bzimage_is_refused(tmp_path: pathlib.Path) -> None:
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="not a bzImage"):
        image.extract_vmlinux(bz, tmp_path / "vmlinux", tmp_path, deadline=float("inf"))


def test_the_built_image_boots_through_pvh_and_carries_the_init(guest_image: Image) -> None:
    assert image.has_pvh_entry(guest_image.kernel)
    archive = gzip.decompress(guest_image.initrd.read_bytes())
    entries = parse_cpio(archive)
    assert entries["init"][1].decode() == image.INIT_SCRIPT
    assert stat.S_IMODE(entries["bin/busybox"][0]) == 0o755
    assert any(name.endswith("pvpanic-mmio.ko") for name in entries)
    # The exec agent, the modules of its virtio serial port, in load order, and the users.
    agent_entry = entries["bin/sprites-agent"]
    assert stat.S_IMODE(agent_entry[0]) == 0o755
    assert agent_entry[1].decode() == agent.AGENT_SCRIPT
    modules = sorted(name for name in entries if name.startswith("lib/modules/"))
    loaded = [name.split("-", 1)[1] for name in modules]
    assert loaded[-4:] == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_console.ko"]
    assert b"sprite:x:1000:1000:" in entries["etc/passwd"][1]
    assert stat.S_ISDIR(entries["work"][0])  # where files are copied to, as on every runtime
    assert guest_image.info["kernel_package"].startswith("linux-image-")
