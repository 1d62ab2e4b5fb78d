"""The built-in runtime: real isolated sprites on this host without wisp.

A sprite is a process tree in its own PID, mount, UTS, IPC and network
namespaces with cgroup limits, watched by a small compiled supervisor. The
engine uses :func:`make_driver`; ``sprites-wisp`` (see :mod:`.wispcli`) offers
the same runtime behind the wisp command-line contract.
"""

from __future__ import annotations

import pathlib

from reconciler.drivers.builtin.driver import BuiltinDriver, default_state_dir
from reconciler.drivers.builtin.driver import unavailable_reason as _unavailable_reason

__all__ = ["BuiltinDriver", "default_state_dir", "make_driver", "unavailable_reason"]


def make_driver(
    state_dir: pathlib.Path,
    *,
    timeout: float = 300.0,
    enforce_limits: bool = True,
    grace: float = 5.0,
) -> BuiltinDriver:
    """A driver keeping its records under ``<state_dir>/builtin/``.

    ``timeout`` bounds each call's waiting; ``grace`` is how long ``kill``
    waits after SIGTERM before SIGKILL; with ``enforce_limits=False`` a host
    whose cgroups cannot be written still runs sprites, unlimited, and
    ``list()`` warns about it."""
    return BuiltinDriver(
        pathlib.Path(state_dir), timeout=timeout, enforce_limits=enforce_limits, grace=grace
    )


def unavailable_reason() -> str | None:
    """None when this host can run built-in sprites (Linux, namespaces
    usable, the helper buildable); otherwise a one-line reason."""
    return _unavailable_reason()
