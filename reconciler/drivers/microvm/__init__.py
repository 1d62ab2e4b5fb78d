"""The microVM runtime: every sprite is a QEMU ``microvm`` machine with its
own guest kernel (the strongest isolation the project offers).

The engine uses :func:`make_driver`; ``sprites image build`` uses
:func:`build_image`. A host needs ``apt-get install -y qemu-system-x86
busybox-static lz4`` and a built guest image.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from reconciler.drivers.microvm.driver import QEMU_BINARY, MicroVMDriver
from reconciler.drivers.microvm.driver import unavailable_reason as _unavailable_reason
from reconciler.drivers.microvm.image import (
    BUILD_COMMAND,
    INSTALL_COMMAND,
    Image,
    ImageError,
    Progress,
    find_image,
)

if TYPE_CHECKING:
    from reconciler.config import AgentConfig

__all__ = [
    "BUILD_COMMAND",
    "INSTALL_COMMAND",
    "Image",
    "ImageError",
    "MicroVMDriver",
    "build_image",
    "find_image",
    "make_driver",
    "unavailable_reason",
]


def make_driver(
    state_dir: pathlib.Path,
    *,
    config: AgentConfig | None = None,
    qemu: str = QEMU_BINARY,
) -> MicroVMDriver:
    """A driver keeping its records under ``<state_dir>/microvm/``, with the
    timeout and accelerator setting (``agent.accel``) from ``config``."""
    timeout = config.timeout if config is not None else 300.0
    accel = config.accel if config is not None else "auto"
    return MicroVMDriver(pathlib.Path(state_dir), timeout=timeout, accel=accel, qemu=qemu)


def unavailable_reason() -> str | None:
    """None when QEMU is installed here; otherwise a one-line reason naming
    the apt command that fixes it."""
    return _unavailable_reason()


def build_image(
    state_dir: pathlib.Path, *, progress: Progress = lambda line: None, timeout: float = 600.0
) -> Image:
    """Build (or rebuild) the guest image under ``<state_dir>/microvm/image``."""
    from reconciler.drivers.microvm import image

    return image.build_image(
        pathlib.Path(state_dir) / "microvm", progress=progress, timeout=timeout
    )
