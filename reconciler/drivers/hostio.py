"""Host I/O shared by the runtimes that run sprites on this host (built-in,
microVM): the layout of their records under the state dir, private
directories, the runtime log, unix sockets, process facts read from /proc
and acted on through pidfds (so a reused pid is never hit), and building the
package's small C programs.
"""

from __future__ import annotations

import errno
import os
import pathlib
import select
import signal
import stat
import time
from typing import TYPE_CHECKING

from reconciler.record import record

if TYPE_CHECKING:
    import socket

#: The runtime log is rotated (to ``<name>.1``) once it grows past this.
RUNTIME_LOG_LIMIT = 1 << 20
#: The longest path a unix socket address holds (sun_path, without the NUL).
SUN_PATH_MAX = 107


class UnsafePathError(Exception):
    """A state path is not what the runtime created (symlink, foreign owner)."""

    def __init__(self, message: str, path: pathlib.Path) -> None:
        super().__init__(message)
        self.path = path


def c_compiler() -> str | None:
    """The C compiler the package's small programs are built with, if any."""
    import shutil

    return shutil.which("gcc") or shutil.which("cc")


def build_digest(data: bytes) -> str:
    """A short name for a program built from ``data`` (its source, flags and
    whatever else it depends on): a cache key, not a signature, as the
    program lives in a private directory. Two cheap checksums."""
    import zlib

    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def build_c_program(
    compiler: str, flags: tuple[str, ...], source: pathlib.Path, dest: pathlib.Path, timeout: float
) -> str | None:
    """Compile ``source`` into ``dest`` (mode 0700), or say why not: the
    compiler's first line of complaint. Each build writes a file of its own
    and renames it into place, so concurrent builds (threads or processes)
    leave either no program or a complete one, and never a half-written one.
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    import subprocess

    tmp = dest.with_name(f".build-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        built = subprocess.run(
            [compiler, *flags, "-o", str(tmp), str(source)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if built.returncode != 0:
            lines = built.stderr.decode("utf-8", "replace").strip().splitlines()
            return lines[0] if lines else f"{compiler} exited with status {built.returncode}"
        os.chmod(tmp, 0o700)
        os.replace(tmp, dest)
        return None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


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
        raise UnsafePathError(f"{path} is not a directory", path)
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} belongs to another user", path)


@record(frozen=True)
class Layout:
    """Where a runtime keeps its records: ``<state_dir>/<runtime>/``."""

    state_dir: pathlib.Path
    #: The runtime's directory name: "builtin", "microvm".
    runtime: str

    @property
    def root(self) -> pathlib.Path:
        return self.state_dir / self.runtime

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
        """Make the runtime's directories; UnsafePathError when one is not ours."""
        for path in (self.root, self.sprites, self.run, self.trash):
            make_private_dir(path)


# ---------------------------------------------------------------- log lines


def append_line(path: pathlib.Path, line: str, limit: int = RUNTIME_LOG_LIMIT) -> None:
    """Append one line atomically (O_APPEND, one write); keep the file bounded."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def timestamp(when: float | None = None) -> str:
    now = time.time() if when is None else when
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


# ------------------------------------------------------------- unix sockets


def connect_unix(path: str, timeout: float | None = 5.0) -> socket.socket:
    """Connect to a unix socket, even when its path is longer than sun_path allows."""
    import socket  # only consoles and QMP need it: list stays light

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
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
    if not is_alive(pid, start):
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
    """Send ``sig`` through the pidfd; a process that already exited is no error."""
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


# ------------------------------------------------------------ console and log text


def console_text(name: str, recent: str) -> str:
    """The one-shot attach output of the wisp contract."""
    return f"Connected to {name}. Console output:\n{recent}"


def sprite_logs_text(lines: list[str], console: str) -> str:
    """One sprite's log lines, then its console history."""
    out = "".join(line + "\n" for line in lines)
    out += "Console output:\n" + console
    if console and not console.endswith("\n"):
        out += "\n"
    return out


def merged_logs_text(runtime_log: str, sprites: list[tuple[str, list[str]]]) -> str:
    """The runtime's log and every sprite's (tagged with its name), by time."""
    entries = runtime_log.splitlines()
    for name, lines in sprites:
        for line in lines:
            stamp, _, message = line.partition(" ")
            entries.append(f"{stamp} [{name}] {message}")
    entries.sort(key=lambda line: line.split(" ", 1)[0])
    return "".join(line + "\n" for line in entries)
