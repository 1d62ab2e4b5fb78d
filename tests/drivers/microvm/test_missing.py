"""What a host without QEMU, lz4 or a guest image is told: the exact command
that fixes it, through the driver and through the ``sprites`` command."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from reconciler.drivers.base import StartRequest
from reconciler.drivers.microvm import MicroVMDriver, unavailable_reason
from reconciler.drivers.microvm.image import ImageError, build_image
from reconciler.errors import RuntimeCallError

APT = "apt-get install -y qemu-system-x86 busybox-static lz4"
NO_QEMU = f"Failed to start Sprite: qemu-system-x86_64 not found (install it: {APT})"


def _sprites() -> str:
    beside = pathlib.Path(sys.executable).parent / "sprites"
    found = str(beside) if beside.exists() else shutil.which("sprites")
    if found is None:
        pytest.fail("the sprites console script is not installed (pip install -e .)")
    return found


def _run(tmp_path: pathlib.Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPRITES_", "WRECKIT_"))}
    env["PATH"] = path
    env["HOME"] = str(tmp_path)
    return subprocess.run(
        [_sprites(), "--state-dir", str(tmp_path / "state"), *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_driver_names_the_apt_command(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert unavailable_reason() == f"qemu-system-x86_64 not found (install it: {APT})"
    driver = MicroVMDriver(tmp_path / "state", accel="tcg")
    with pytest.raises(RuntimeCallError) as caught:
        driver.start(StartRequest(name="vm", memory=256 << 20, cpus=1))
    assert caught.value.user_message == NO_QEMU
    assert driver.list().sprites == ()
    assert not (tmp_path / "state" / "microvm" / "sprites").exists()


def test_sprites_start_without_qemu(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _run(tmp_path, str(empty), "--runtime", "microvm", "start", "vm-1")
    assert done.returncode == 1
    assert done.stderr.strip() == f"❌ {NO_QEMU}"


def test_sprites_apply_without_qemu(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (tmp_path / "sprites.yaml").write_text(
        "version: 1\nproject: vms\nsprites:\n  vm-1: {runtime: microvm, memory: 256MiB}\n"
    )
    done = _run(tmp_path, str(empty), "--runtime", "microvm", "apply", "--auto-approve")
    assert done.returncode == 1
    assert f"vm-1: {NO_QEMU}" in done.stderr


def test_sprites_start_without_an_image(tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 99\n")
    fake.chmod(0o755)
    done = _run(tmp_path, f"{fake.parent}:/usr/bin:/bin", "--runtime", "microvm", "start", "vm-1")
    assert done.returncode == 1
    image_dir = tmp_path / "state" / "microvm" / "image"
    assert done.stderr.strip() == (
        f"❌ Failed to start Sprite: no microVM guest image in {image_dir} "
        "(build it: sprites image build)"
    )


def test_image_build_without_lz4_names_the_apt_command(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "dpkg-deb"):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed (not a Debian host)")
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ImageError) as caught:
        build_image(tmp_path / "state" / "microvm")
    assert caught.value.user_message == "Cannot build the microVM image: lz4 not found"
    assert caught.value.hint == f"Install it with: {APT}"
