"""Real microVMs under TCG: boot, console, states from QMP, kill and cleanup.

Slow (each guest boots a real kernel under emulation) but run in CI: they
need only QEMU and the guest image, which the session builds.
"""

from __future__ import annotations

import os
import pathlib
import signal
import stat
import time
from collections.abc import Callable

import pytest

from reconciler.drivers.base import StartRequest
from reconciler.drivers.microvm import MicroVMDriver
from reconciler.drivers.microvm.image import Image
from reconciler.drivers.microvm.qmp import connect_unix, query_status
from reconciler.errors import SpriteExistsError, SpriteNotFoundError
from tests.drivers.microvm.conftest import qemu_processes, wait_for

pytestmark = pytest.mark.slow
MiB = 1 << 20


def _driver(state_dir: pathlib.Path) -> MicroVMDriver:
    return MicroVMDriver(state_dir, timeout=240, accel="tcg")


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode() for arg in handle.read().split(b"\0") if arg]


def _console_roundtrip(path: str, command: str, expect: str, timeout: float = 120.0) -> str:
    """Type ``command`` on the serial console; return what came back once
    ``expect`` appears on a line of its own."""
    sock = connect_unix(path, 10)
    received = b""
    deadline = time.monotonic() + timeout
    with sock:
        sock.sendall(command.encode() + b"\n")
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            lines = received.decode("utf-8", "replace").replace("\r", "").split("\n")
            if expect in lines:
                return received.decode("utf-8", "replace")
    pytest.fail(f"{expect!r} never came back on the console; got {received!r}")


def test_boot_attach_kill_leaves_nothing(
    qemu: str, guest_image: Image, state_dir: pathlib.Path
) -> None:
    driver = _driver(state_dir)
    name = "mvm-boot"
    result = driver.start(StartRequest(name=name, memory=128 * MiB, cpus=1))

    assert result.stdout.startswith("Started Sprite VM with ID: sprite-")
    assert result.id is not None and result.id in result.stdout
    assert result.address is not None and f"Connection: {result.address}" in result.stdout
    pid = result.pid
    assert pid is not None

    # The VMM is a real QEMU microvm with the sprite's resources and no network.
    argv = _cmdline(pid)
    assert os.path.basename(argv[0]) == "qemu-system-x86_64"
    assert argv[argv.index("-M") + 1] == "microvm"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "128"
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-nic") + 1] == "none"
    assert "-netdev" not in argv
    append = argv[argv.index("-append") + 1]
    assert f"sprites.hostname={name}" in append
    assert len(append.encode()) < 2048

    # The listing says running, from QMP; the sockets are private.
    listed = driver.list().by_name()[name]
    assert (listed.state, listed.pid, listed.runtime) == ("running", pid, "microvm")
    request = driver._existing("list", name).request
    for path in (request["qmp"], request["console"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert query_status(request["qmp"]) == "running"

    # One-shot attach shows the console since boot: init's marker and the shell's prompt.
    shown = driver.attach(name, interactive=False).stdout
    assert shown.startswith(f"Connected to {name}. Console output:\n")
    assert f"sprites-init: ready {name}" in shown

    # The shell's prompt carries the hostname; type once it is there (the
    # shell's line editor would take early keystrokes as a terminal reply).
    wait_for(
        lambda: f"{name}:~# " in driver.attach(name, interactive=False).stdout,
        what="the shell's prompt",
    )
    # The console is the guest's own: its kernel, its hostname.
    echoed = _console_roundtrip(request["console"], "uname -r; cat /proc/sys/kernel/hostname", name)
    assert name in echoed.replace("\r", "").split("\n")
    assert guest_image.info["kernel_release"] in echoed

    logs = driver.logs(name).stdout
    assert "started: pid" in logs and "Console output:" in logs

    with pytest.raises(SpriteExistsError):
        driver.start(StartRequest(name=name, memory=128 * MiB, cpus=1))

    # A QEMU that does not answer QMP (here: stopped) is SIGKILLed after the grace.
    os.kill(pid, signal.SIGSTOP)
    impatient = MicroVMDriver(state_dir, timeout=240, accel="tcg", grace=1)
    killed = impatient.kill(name)
    assert killed.stdout == f"Terminated VM {name} (PID: {pid})\n"

    # Nothing is left: no process, socket, record or temporary file.
    wait_for(lambda: not qemu_processes(str(state_dir)), timeout=30, what="QEMU to go")
    assert driver.list().sprites == ()
    root = state_dir / "microvm"
    assert os.listdir(root / "run") == []
    assert os.listdir(root / "sprites") == []
    assert os.listdir(root / "trash") == []
    leftovers = sorted(
        p.name for p in root.iterdir() if p.name not in ("image", "run", "sprites", "trash")
    )
    assert leftovers == [".reserve.lock", "runtime.log"]
    with pytest.raises(SpriteNotFoundError):
        driver.kill(name)


def test_list_tells_exit_and_panic_apart(
    qemu: str, guest_image: Image, make_state_dir: Callable[[str], pathlib.Path]
) -> None:
    # A state directory too long for sun_path: QEMU binds the sockets
    # relative to its run directory and the driver connects through /proc.
    state_dir = make_state_dir("x" * 60)
    driver = _driver(state_dir)
    assert len(str(driver.layout.run / "sprite-000000000000.qmp")) > 107
    sprites = {
        "mvm-clean": ["sh", "-c", "echo out-$((6*7)); exit 0"],
        "mvm-fails": ["sh", "-c", "exit 3"],
        "mvm-panics": ["sh", "-c", "echo c > /proc/sysrq-trigger"],
    }
    for name, command in sprites.items():
        driver.start(StartRequest(name=name, memory=128 * MiB, cpus=1, command=tuple(command)))
    # A sprite may boot its own kernel and initramfs (here: copies of the built ones).
    own = {"kernel": str(guest_image.kernel), "initrd": str(guest_image.initrd)}
    driver.start(
        StartRequest(name="mvm-own", memory=128 * MiB, cpus=1, command=("true",), options=own)
    )
    request = driver._existing("list", "mvm-own").request
    assert (request["kernel"], request["initrd"]) == (own["kernel"], own["initrd"])
    sprites["mvm-own"] = ["true"]

    def settled() -> bool:
        return all(sprite.state != "running" for sprite in driver.list().sprites)

    wait_for(settled, what="the guests to stop")
    listed = driver.list().by_name()
    assert (listed["mvm-clean"].state, listed["mvm-clean"].reason) == (
        "stopped",
        "exited with code 0",
    )
    assert (listed["mvm-fails"].state, listed["mvm-fails"].reason) == (
        "error",
        "exited with code 3",
    )
    assert listed["mvm-panics"].state == "error"
    assert "Kernel panic" in (listed["mvm-panics"].reason or "")
    panicked = driver._existing("list", "mvm-panics").request["qmp"]
    assert query_status(panicked) == "guest-panicked"
    assert "out-42" in driver.logs("mvm-clean").stdout
    assert listed["mvm-own"].state == "stopped"

    for name in sprites:
        driver.kill(name)
    assert not qemu_processes(str(state_dir))
    assert os.listdir(driver.layout.sprites) == []
    assert os.listdir(driver.layout.run) == []
