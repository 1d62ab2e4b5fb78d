"""Bulk work without the cyclic garbage collector running over it.

Loading a 10,000-sprite manifest, its state and its runtime's listing makes
hundreds of thousands of objects that stay alive until the plan is made.
Each time enough of them have been allocated, CPython scans every tracked
object, and the scans grow with the heap: they tripled the time of such a
plan. What the bulk work frees goes by reference counting anyway, so the
collector is paused for its duration and left to catch up afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic garbage collection inside the block.

    Nests and tolerates threads: only the block that found the collector
    running turns it back on, and a program that disabled it keeps it off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
