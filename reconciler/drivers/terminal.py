"""The interactive attach of the runtimes that serve a sprite's console on a
unix socket (built-in, microVM): the caller's terminal in raw mode, relayed
to and from the socket until the user detaches with Ctrl-] or the console
closes."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import termios
import tty
from collections.abc import Iterator

DETACH_BYTE = b"\x1d"  # Ctrl-]
DETACH_KEY = "Ctrl-]"


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])


def relay(
    sock: socket.socket,
    name: str,
    *,
    closed: str,
    recent: bytes = b"",
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    during: contextlib.AbstractContextManager[object] | None = None,
) -> str:
    """Relay the terminal and the connected console ``sock`` (closed on return)
    until the user detaches or the console closes; ``recent`` is shown after
    the greeting, ``closed`` is the summary when the console closes and
    ``during`` is held while the terminal is raw. Returns a one-line summary
    of how it ended."""
    sock.settimeout(None)
    ended = f"Detached from {name}."
    # Raw mode first: switching flushes typed-ahead input, so nothing the
    # user types after the banner may be lost.
    with sock, raw_terminal(stdin_fd), during or contextlib.nullcontext():
        greeting = f"Connected to {name}. Console output ({DETACH_KEY} to detach):\r\n"
        write_all(stdout_fd, greeting.encode() + recent)
        sock_fd = sock.fileno()
        while True:
            try:
                readable, _, _ = select.select([stdin_fd, sock_fd], [], [])
            except InterruptedError:
                continue
            if sock_fd in readable:
                data = sock.recv(65536)
                if not data:
                    ended = closed
                    break
                write_all(stdout_fd, data)
            if stdin_fd in readable:
                data = os.read(stdin_fd, 4096)
                if not data:
                    break
                before, found, _ = data.partition(DETACH_BYTE)
                if before:
                    sock.sendall(before)
                if found:
                    break
    write_all(stdout_fd, f"\r\n{ended}\r\n".encode())
    return ended
