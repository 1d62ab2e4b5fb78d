"""The microVM driver without booting anything: QEMU's command line, what a
failed launch reports and leaves, and the checks made before QEMU runs.
A fake ``qemu-system-x86_64`` records its argv and fails like QEMU does."""

from __future__ import annotations

import os
import pathlib
import shlex

import pytest

from reconciler.drivers.base import StartRequest
from reconciler.drivers.microvm import MicroVMDriver
from reconciler.drivers.microvm.image import IMAGE_FORMAT
from reconciler.errors import RuntimeCallError, SpriteNotFoundError

MiB = 1 << 20


@pytest.fixture
def setup(tmp_path: pathlib.Path) -> tuple[MicroVMDriver, pathlib.Path]:
    """A driver with a (fake) built image and a QEMU that writes its argv and fails."""
    argv_file = tmp_path / "argv"
    qemu = tmp_path / "bin" / "qemu-system-x86_64"
    qemu.parent.mkdir()
    qemu.write_text(
        "#!/bin/sh\n"
        f'for arg in "$@"; do printf "%s\\n" "$arg"; done > {shlex.quote(str(argv_file))}\n'
        'echo "qemu-system-x86_64: -device pvpanic: no ISA bus here" >&2\n'
        "exit 1\n"
    )
    qemu.chmod(0o755)
    image = tmp_path / "state" / "microvm" / "image"
    image.mkdir(parents=True)
    (image / "vmlinux").write_bytes(b"kernel")
    (image / "initrd.cpio.gz").write_bytes(b"initrd")
    (image / "image.json").write_text(f'{{"format": {IMAGE_FORMAT}}}')
    driver = MicroVMDriver(tmp_path / "state", accel="tcg", qemu=str(qemu), timeout=30)
    return driver, argv_file


def test_qemu_gets_the_sprites_resources_and_no_network(
    setup: tuple[MicroVMDriver, pathlib.Path],
) -> None:
    driver, argv_file = setup
    with pytest.raises(RuntimeCallError):
        driver.start(StartRequest("vm-a", 300 * MiB, 2, command=("sh", "-c", "echo hi")))
    argv = argv_file.read_text().splitlines()

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert (value("-M"), value("-accel"), value("-cpu")) == ("microvm", "tcg", "max")
    assert (value("-m"), value("-smp")) == ("300", "2")
    assert value("-nic") == "none" and "-netdev" not in argv
    assert "-daemonize" in argv and value("-display") == "none"
    assert {"-no-reboot", "-no-shutdown", "-nodefaults", "-no-user-config"} <= set(argv)
    assert value("-action") == "panic=pause" and value("-device") == "pvpanic"
    assert value("-qmp").startswith(f"unix:{driver.layout.run}/sprite-")
    assert value("-qmp").endswith(".qmp,server=on,wait=off")
    append = value("-append")
    assert "console=ttyS0" in append and "sprites.hostname=vm-a" in append
    assert "quiet" in append
    assert "tsc_early_khz=" in append  # TCG: skip the clock calibration that can hang
    # The exec agent's port: a virtio serial port on a pipe chardev (two FIFOs).
    chardevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-chardev"]
    pipe = next(c for c in chardevs if c.startswith("pipe,id=agent,"))
    assert pipe.startswith(f"pipe,id=agent,path={driver.layout.run}/sprite-")
    assert pipe.endswith(".agent")
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert "virtserialport,chardev=agent,name=sprites.agent" in devices


def test_a_failed_launch_says_why_and_leaves_nothing(
    setup: tuple[MicroVMDriver, pathlib.Path],
) -> None:
    driver, _ = setup
    # A directory a dead start left without a request is taken over.
    stale = driver.layout.sprite("vm-a")
    stale.mkdir(parents=True)
    with pytest.raises(RuntimeCallError) as caught:
        driver.start(StartRequest("vm-a", 256 * MiB, 1))
    assert caught.value.user_message == "Failed to start Sprite: -device pvpanic: no ISA bus here"
    assert os.listdir(driver.layout.sprites) == []
    assert os.listdir(driver.layout.run) == []
    assert os.listdir(driver.layout.trash) == []
    assert driver.list().sprites == ()
    with pytest.raises(SpriteNotFoundError):
        driver.kill("vm-a")


def test_too_little_memory_for_a_kernel_is_refused(
    setup: tuple[MicroVMDriver, pathlib.Path],
) -> None:
    driver, argv_file = setup
    with pytest.raises(RuntimeCallError, match="needs at least 128MiB of memory, got 64MiB"):
        driver.start(StartRequest("vm-a", 64 * MiB, 1))
    assert not argv_file.exists()


def test_a_sprites_own_kernel_must_exist(
    setup: tuple[MicroVMDriver, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    driver, argv_file = setup
    missing = str(tmp_path / "no-such-vmlinux")
    with pytest.raises(RuntimeCallError, match=f"kernel {missing} is not a file"):
        driver.start(StartRequest("vm-a", 256 * MiB, 1, options={"kernel": missing}))
    assert not argv_file.exists()


def test_a_sprites_own_initrd_boots_without_quiet(
    setup: tuple[MicroVMDriver, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    driver, argv_file = setup
    own = tmp_path / "my-initrd"
    own.write_bytes(b"mine")
    with pytest.raises(RuntimeCallError):
        driver.start(StartRequest("vm-a", 256 * MiB, 1, options={"initrd": str(own)}))
    argv = argv_file.read_text().splitlines()
    # Its kernel messages are shown: start waits for "Run /init" when no marker comes.
    assert "quiet" not in argv[argv.index("-append") + 1]
    assert argv[argv.index("-kernel") + 1] == str(driver.layout.root / "image" / "vmlinux")


def test_exec_needs_a_running_sprite_with_an_agent(
    setup: tuple[MicroVMDriver, pathlib.Path],
) -> None:
    driver, _ = setup
    with pytest.raises(SpriteNotFoundError):
        driver.exec("vm-a", ["true"])
    with pytest.raises(RuntimeCallError, match="exec needs a command"):
        driver.exec("vm-a", [])
    record = driver.layout.sprite("vm-a")
    record.mkdir(parents=True)
    # A sprite started before the runtime had an agent says so.
    (record / "request.json").write_text('{"id": "sprite-000000000000"}')
    with pytest.raises(RuntimeCallError, match="started without the exec agent"):
        driver.exec("vm-a", ["true"])
    run = driver.layout.run / "sprite-000000000000.agent"
    (record / "request.json").write_text(
        f'{{"id": "sprite-000000000000", "agent": "{run}", "qmp": "{run}.qmp"}}'
    )
    with pytest.raises(RuntimeCallError, match="sprite 'vm-a' is not running"):
        driver.exec("vm-a", ["true"])


@pytest.mark.parametrize(
    ("key", "value"),
    [("network", "host"), ("mounts", [{"source": "/srv", "target": "/srv"}]), ("user", "root")],
)
def test_settings_a_microvm_cannot_honour_are_refused(
    setup: tuple[MicroVMDriver, pathlib.Path], key: str, value: object
) -> None:
    driver, argv_file = setup
    with pytest.raises(RuntimeCallError, match=f"does not support {key} yet"):
        driver.start(StartRequest("vm-a", 256 * MiB, 1, options={key: value}))
    assert not argv_file.exists()
