"""The built-in runtime's records on disk and the process facts read from /proc.

Layout under ``<state_dir>/builtin/`` (directories 0700, files 0600)::

    sprites/<name>/   one directory per sprite; flock on it = a start or kill in progress
        request       JSON written by ``start`` before the name becomes visible
        limits        JSON: the cgroups made for the sprite (absent: no limits)
        pids          key=value from the helper once the sprite runs
        exit          key=value: how the sprite ended (init or supervisor)
        log           the supervisor's log lines
        console       ring of recent console output
        root/         where the sprite's root is built (in its own mount namespace)
    files/<name>/     the sprite's tmp, work and home (kept after kill with ``keep``)
    run/<id>.sock     console sockets (kept short for sun_path)
    trash/            records and files being removed
    runtime.log       start/kill lines of the runtime itself

The layout itself, private directories, the runtime log and the process
facts are :mod:`reconciler.drivers.hostio`'s, shared with the microVM
runtime, and named here too for the built-in runtime's callers.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import struct
import time
from typing import Any

from reconciler.drivers.hostio import UnsafePathError as UnsafePathError
from reconciler.drivers.hostio import append_line as append_line
from reconciler.drivers.hostio import is_alive as is_alive
from reconciler.drivers.hostio import make_private_dir as make_private_dir
from reconciler.drivers.hostio import mem_available as mem_available
from reconciler.drivers.hostio import open_process as open_process
from reconciler.drivers.hostio import proc_stat as proc_stat
from reconciler.drivers.hostio import signal_process as signal_process
from reconciler.drivers.hostio import timestamp as timestamp
from reconciler.drivers.hostio import wait_exit as wait_exit

RING = struct.Struct("<4sIQ")
RING_MAGIC = b"SPRC"


# ----------------------------------------------------------------- file I/O


def open_dir(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Create ``name`` in the directory exclusively (never through a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_json(dir_fd: int, name: str, value: dict[str, Any]) -> None:
    write_new(dir_fd, name, json.dumps(value, sort_keys=True).encode())


def read_bytes(dir_fd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        chunks = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(65536, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(dir_fd: int, name: str) -> dict[str, Any] | None:
    data = read_bytes(dir_fd, name)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_kv(dir_fd: int, name: str) -> dict[str, str] | None:
    data = read_bytes(dir_fd, name, 65536)
    if data is None:
        return None
    result: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key.strip()] = value.strip()
    return result


def try_lock_shared(dir_fd: int) -> bool:
    """True when nobody holds the record's lock (no start or kill in progress)."""
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(dir_fd, fcntl.LOCK_UN)
    return True


def lock_exclusive(dir_fd: int, timeout: float) -> bool:
    """Take the record's lock, waiting up to ``timeout`` for a start or kill to finish."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# ------------------------------------------------------------- console ring


def read_console(dir_fd: int) -> bytes:
    """The recent console output kept in the ring file, oldest first.

    The supervisor may write while we read: bytes it overwrote meanwhile are
    dropped rather than shown out of order."""
    try:
        fd = os.open("console", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return b""
    try:
        head = os.pread(fd, RING.size, 0)
        if len(head) < RING.size:
            return b""
        magic, size, first_total = RING.unpack(head)
        if magic != RING_MAGIC or size == 0:
            return b""
        data = os.pread(fd, size, RING.size)
        last_total = RING.unpack(os.pread(fd, RING.size, 0))[2]
    finally:
        os.close(fd)
    if len(data) < size:
        data = data + b"\0" * (size - len(data))
    low = max(first_total - min(first_total, size), last_total - size)
    count = first_total - low
    if count <= 0:
        return b""
    start = low % size
    if start + count <= size:
        return data[start : start + count]
    return data[start:] + data[: count - (size - start)]


def console_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\r\n", "\n")
