"""A sprite's console seen from outside: its unix socket and the interactive
attach loop (raw terminal, Ctrl-] detaches)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import threading
from collections.abc import Iterator
from types import FrameType

from reconciler.drivers import terminal
from reconciler.drivers.hostio import connect_unix as connect


def _copy_window_size(terminal_fd: int, pts: str) -> None:
    """Give the sprite's console the size of the caller's terminal."""
    if not pts.startswith("/dev/pts/"):
        return
    try:
        size = fcntl.ioctl(terminal_fd, termios.TIOCGWINSZ, b"\0" * 8)
        rows, cols = struct.unpack("HHHH", size)[:2]
        if not rows or not cols:
            return
        fd = os.open(pts, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _follow_resizes(terminal_fd: int, pts: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_resize(_signum: int, _frame: FrameType | None) -> None:
        _copy_window_size(terminal_fd, pts)

    previous = signal.signal(signal.SIGWINCH, on_resize)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def interactive(
    socket_path: str, pts: str, name: str, *, stdin_fd: int = 0, stdout_fd: int = 1
) -> str:
    """Connect the caller's terminal to the console until the user detaches
    or the sprite ends. Returns a one-line summary of how it ended."""
    sock = connect(socket_path)
    _copy_window_size(stdin_fd, pts)
    return terminal.relay(
        sock,
        name,
        closed=f"The console of {name} closed: the sprite ended.",
        stdin_fd=stdin_fd,
        stdout_fd=stdout_fd,
        during=_follow_resizes(stdin_fd, pts),
    )
