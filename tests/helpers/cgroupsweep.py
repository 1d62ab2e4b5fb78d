"""The session sweep of the cgroups built-in sprites of the tests leave behind.

A sprite's groups are ``<hierarchy>/sprites/<name>.<scope>``, the scope
standing for its state dir, so the sweep tells this run's groups from those
of another run on the same host (another user, a concurrent session) and
never kills what the other run still uses.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Collection

from reconciler.drivers.builtin import cgroups

#: A group of another run, empty for this long (seconds), belongs to a run that died.
STALE_AFTER = 600.0


def sweep(prefix: str, scopes: Collection[str], *, timeout: float) -> None:
    """Remove the sprite groups named ``<prefix>...``: those of the state dirs
    whose scopes are in ``scopes`` with whatever still runs in them, others
    only once empty and older than :data:`STALE_AFTER`."""
    hierarchy = cgroups.detect()
    if hierarchy is None:
        return
    roots = [hierarchy.unified] if hierarchy.version == 2 else [m for _, m in hierarchy.v1]
    for root in roots:
        parent = pathlib.Path(root) / cgroups.PARENT
        if not parent.is_dir():
            continue
        for group in parent.iterdir():
            if not group.is_dir() or not group.name.startswith(prefix):
                continue
            if group.name.rpartition(".")[2] in scopes:
                cgroups.remove(cgroups.SpriteCgroups(1, (str(group),), "", "", ""), timeout=timeout)
            elif not cgroups.tasks(str(group)):
                with contextlib.suppress(OSError):
                    if time.time() - group.stat().st_mtime > STALE_AFTER:
                        group.rmdir()
