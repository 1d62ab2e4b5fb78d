"""A microVM's serial console seen from outside.

QEMU serves the guest's serial port on a unix socket and appends
everything the guest writes to a log file (``logfile=`` of the chardev),
whether or not a client is connected. The runtime keeps that file bounded
(:func:`trim`) and shows its tail for one-shot ``attach`` and ``logs``; an
interactive attach relays the caller's raw terminal to the socket until
the user detaches with Ctrl-].
"""

from __future__ import annotations

import os
import re

from reconciler.drivers import terminal
from reconciler.drivers.hostio import connect_unix

#: The console log is cut back to KEEP bytes once it grows past LIMIT.
LIMIT = 1 << 20
KEEP = 256 << 10
#: How much of the console one-shot ``attach`` shows.
SHOWN = 64 << 10

_CSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def tail(path: str, size: int = SHOWN) -> bytes:
    """The last ``size`` bytes of the console log (empty when there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        length = os.fstat(fd).st_size
        start = max(0, length - size)
        data = os.pread(fd, length - start, start)
    finally:
        os.close(fd)
    if start:
        # Start at a line boundary rather than mid-line.
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:
            data = data[newline + 1 :]
    return data


def trim(path: str, limit: int = LIMIT, keep: int = KEEP) -> None:
    """Cut the log back to its last ``keep`` bytes once it is over ``limit``.

    QEMU appends with O_APPEND, so its next write lands after what is kept;
    output written between the read and the truncate is lost, which is
    acceptable for a history of recent output."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        length = os.fstat(fd).st_size
        if length <= limit:
            return
        data = os.pread(fd, keep, length - keep)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def text(raw: bytes) -> str:
    """Console bytes as plain text: CRLF to LF, terminal control sequences removed."""
    decoded = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return _CSI_RE.sub("", decoded).replace("\r", "")


def interactive(
    socket_path: str, name: str, recent: bytes, *, stdin_fd: int = 0, stdout_fd: int = 1
) -> str:
    """Connect the caller's terminal to the console until the user detaches
    or the VM goes away. Returns a one-line summary of how it ended."""
    sock = connect_unix(socket_path, 5.0)
    return terminal.relay(
        sock,
        name,
        closed=f"The console of {name} closed: the VM ended.",
        recent=recent,
        stdin_fd=stdin_fd,
        stdout_fd=stdout_fd,
    )
