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
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import select
import signal
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any

RUNTIME_LOG_LIMIT = 1 << 20
RING = struct.Struct("<4sIQ")
RING_MAGIC = b"SPRC"


class UnsafePathError(Exception):
    """A state path is not what the runtime created (symlink, foreign owner)."""


def make_private_dir(path: pathlib.Path) -> None:
    """Create ``path`` (and missing parents) as 0700 directories, or check
    that the existing one is a real directory of ours."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        make_private_dir(path.parent)
        try:
            os.mkdir(path, 0o700)
            return
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} belongs to another user")


@dataclass(frozen=True)
class Layout:
    state_dir: pathlib.Path

    @property
    def root(self) -> pathlib.Path:
        return self.state_dir / "builtin"

    @property
    def sprites(self) -> pathlib.Path:
        return self.root / "sprites"

    @property
    def run(self) -> pathlib.Path:
        return self.root / "run"

    @property
    def trash(self) -> pathlib.Path:
        return self.root / "trash"

    @property
    def files(self) -> pathlib.Path:
        return self.root / "files"

    @property
    def runtime_log(self) -> pathlib.Path:
        return self.root / "runtime.log"

    def sprite(self, name: str) -> pathlib.Path:
        return self.sprites / name

    def socket(self, sprite_id: str) -> pathlib.Path:
        return self.run / f"{sprite_id}.sock"

    def ensure(self) -> None:
        for path in (self.root, self.sprites, self.run, self.trash):
            make_private_dir(path)


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


def append_line(path: pathlib.Path, line: str) -> None:
    """Append one line atomically (O_APPEND, one write); keep the file bounded."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size > RUNTIME_LOG_LIMIT:
            os.replace(path, path.with_name(path.name + ".1"))
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def timestamp(when: float | None = None) -> str:
    now = time.time() if when is None else when
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


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


# ------------------------------------------------------------ process facts


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0].decode(), int(fields[19])


def is_alive(pid: int | None, start: int | None) -> bool:
    """The process with this pid is the one recorded (same start time) and has not exited."""
    if not pid or start is None:
        return False
    facts = proc_stat(pid)
    return facts is not None and facts[1] == start and facts[0] not in ("Z", "X")


def open_process(pid: int | None, start: int | None) -> int | None:
    """A pidfd for the recorded process, or None when it is gone or the pid was reused.

    The start time is checked after the pidfd is open, so the pidfd cannot
    refer to a newer process that took the pid."""
    if not pid or start is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    facts = proc_stat(pid)
    if facts is None or facts[1] != start or facts[0] in ("Z", "X"):
        os.close(fd)
        return None
    return fd


def wait_exit(pidfd: int, timeout: float) -> bool:
    """True when the process exits within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if poller.poll(max(0, int(remaining * 1000))):
                return True
        except InterruptedError:
            continue
        if remaining <= 0:
            return False


def signal_process(pidfd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
