"""Fixtures for the microVM runtime.

The guest image is built once per test session (``apt-get download`` of a
Debian kernel and busybox, about 30MB) and linked into each test's state
directory. The tests that boot real guests skip only when apt cannot
download the packages or QEMU is not installed, and say so. Every test's
state directory is swept afterwards, even when the test failed: its VMs are
killed through the driver, then any QEMU whose command line names the
directory is SIGKILLed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler.drivers.microvm import MicroVMDriver
from reconciler.drivers.microvm.driver import QEMU_BINARY, unavailable_reason
from reconciler.drivers.microvm.image import DownloadError, Image, build_image

#: A shared cache: a directory where the image is built once and reused by
#: later sessions (e.g. a CI cache). Default: a fresh build per session.
CACHE_ENV = "SPRITES_TEST_MICROVM_CACHE"


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The guest image, built once per session (or taken from the shared cache)."""
    cached = os.environ.get(CACHE_ENV)
    root = pathlib.Path(cached) if cached else tmp_path_factory.mktemp("microvm-image")
    from reconciler.drivers.microvm.image import find_image

    found = find_image(root)
    if found is not None:
        return found
    try:
        return build_image(root)
    except DownloadError as exc:
        pytest.skip(f"apt cannot download the guest image packages: {exc.user_message}")


@pytest.fixture(scope="session")
def qemu() -> str:
    problem = unavailable_reason(QEMU_BINARY)
    if problem is not None:
        pytest.skip(f"QEMU is not installed: {problem}")
    path = shutil.which(QEMU_BINARY)
    assert path is not None
    return path


def qemu_processes(marker: str) -> list[int]:
    """Live QEMU processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if (
            marker.encode() in argv
            and b"qemu" in argv.split(b"\0")[0]
            and state not in (b"Z", b"X")
        ):
            found.append(int(entry))
    return found


def sweep(state_dir: pathlib.Path) -> None:
    """Kill whatever a test left in ``state_dir``: through the driver, then by force."""
    driver = MicroVMDriver(state_dir, timeout=30, accel="tcg")
    try:
        names = os.listdir(driver.layout.sprites)
    except OSError:
        names = []
    for name in names:
        try:
            driver.kill(name)
        except Exception:  # noqa: BLE001  (best effort: the force below follows)
            pass
    for pid in qemu_processes(str(state_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def make_state_dir(guest_image: Image) -> Iterator[Callable[[str], pathlib.Path]]:
    """A factory of state directories with the session's image linked in."""
    made: list[pathlib.Path] = []

    def make(suffix: str = "") -> pathlib.Path:
        base = pathlib.Path(tempfile.mkdtemp(prefix="mvm-"))
        state_dir = base / suffix if suffix else base
        (state_dir / "microvm").mkdir(parents=True, mode=0o700)
        os.symlink(guest_image.kernel.parent, state_dir / "microvm" / "image")
        made.append(base)
        return state_dir

    try:
        yield make
    finally:
        for base in made:
            sweep(base)


@pytest.fixture
def state_dir(make_state_dir: Callable[[str], pathlib.Path]) -> pathlib.Path:
    return make_state_dir("")


def wait_for(
    check: Callable[[], bool], *, timeout: float = 120.0, what: str = "the condition"
) -> None:
    """Poll ``check`` until it holds; the timeout is only a safety net."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
