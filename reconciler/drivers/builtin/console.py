"""A sprite's console seen from outside: its unix socket and the interactive
attach loop (raw terminal, Ctrl-] detaches)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

DETACH_BYTE = b"\x1d"  # Ctrl-]
DETACH_KEY = "Ctrl-]"
_SUN_PATH_MAX = 107


def connect(path: str, timeout: float | None = 5.0) -> socket.socket:
    """Connect to a console socket, even when its path is longer than sun_path allows."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(path)
        else:
            directory, base = os.path.split(path)
            dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{base}")
            finally:
                os.close(dir_fd)
    except OSError:
        sock.close()
        raise
    return sock


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
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])


def interactive(
    socket_path: str, pts: str, name: str, *, stdin_fd: int = 0, stdout_fd: int = 1
) -> str:
    """Connect the caller's terminal to the console until the user detaches
    or the sprite ends. Returns a one-line summary of how it ended."""
    sock = connect(socket_path)
    sock.settimeout(None)
    _copy_window_size(stdin_fd, pts)
    ended = f"Detached from {name}."
    # Raw mode first: switching flushes typed-ahead input, so nothing the
    # user types after the banner may be lost.
    with sock, _raw_terminal(stdin_fd), _follow_resizes(stdin_fd, pts):
        _write_all(
            stdout_fd,
            f"Connected to {name}. Console output ({DETACH_KEY} to detach):\r\n".encode(),
        )
        sock_fd = sock.fileno()
        while True:
            try:
                readable, _, _ = select.select([stdin_fd, sock_fd], [], [])
            except InterruptedError:
                continue
            if sock_fd in readable:
                data = sock.recv(65536)
                if not data:
                    ended = f"The console of {name} closed: the sprite ended."
                    break
                _write_all(stdout_fd, data)
            if stdin_fd in readable:
                data = os.read(stdin_fd, 4096)
                if not data:
                    break
                before, found, _ = data.partition(DETACH_BYTE)
                if before:
                    sock.sendall(before)
                if found:
                    break
    _write_all(stdout_fd, f"\r\n{ended}\r\n".encode())
    return ended
