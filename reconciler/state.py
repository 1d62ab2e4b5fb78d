"""The state directory: one JSON file and one lock per project.

Writes are atomic (a new file created with O_EXCL, fsync, rename, fsync of
the directory), never follow a symlink, and never replace a file that could
not be read: a corrupt state file is reported, not overwritten. The state
directory is created, or tightened, to 0700 and its files are 0600.

A lock guards each project: an OS file lock (``flock``; released by the
kernel when its holder dies) plus a record of the holder (pid, host, user,
operation, time) written into the lock file for messages.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.errors import LockError, StateError
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.record import record

PROJECTS_DIR = "projects"
#: Seconds a held lock may go without a holder record (its holder is taking
#: or releasing it) before a busy error calls the holder anonymous.
LOCK_SETTLE = 2.0


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` as 0700, or tighten it when it already exists and is ours."""
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{path} is not a directory")
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        os.chmod(path, 0o700)
    return path


#: A crash-test hook, inert unless this variable is set: with
#: ``SPRITES_FAULT=after-tmp-write:N`` the process SIGKILLs itself after its
#: Nth atomic write (default the first) has written and synced the temp file,
#: before the rename, so tests can land a kill exactly between the two.
FAULT_VARIABLE = "SPRITES_FAULT"
_writes = 0


def _fault_point(point: str) -> None:
    global _writes
    wanted, _, nth = os.environ.get(FAULT_VARIABLE, "").partition(":")
    if wanted != point:
        return
    _writes += 1
    if _writes == (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600), never following links."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_nonce()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _fault_point("after-tmp-write")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def open_lock_file(path: Path, *, create: bool = True) -> int:
    """A lock file's descriptor, never through a symlink."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(
                f"refusing to follow a symlink at {path}",
                hint="Lock files are never opened through links; remove the link.",
            ) from None
        if isinstance(exc, FileNotFoundError) and not create:
            raise
        raise StateError(f"cannot open lock file {path}: {exc.strerror}") from None


def read_private_file(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist; a symlink is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(
                f"refusing to follow a symlink at {path}",
                hint="State files are never read or written through links; remove the link.",
            ) from None
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(", ", ": "))


def encode_state(data: dict[str, Any]) -> bytes:
    """A state file's bytes: JSON, keys sorted, one sprite (or expiry) per line.

    An apply writes the whole file before and after its runtime calls, so
    with 10,000 sprites the encoding counts: ``indent=`` would run json's
    pure-Python encoder, several times slower than the C one used here."""
    parts = [_encode_part(key, data[key]) for key in sorted(data)]
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def _encode_part(key: str, value: Any) -> str:
    if key in ("sprites", "expired") and isinstance(value, dict) and value:
        return _encode_block(
            key, [_entry_line(name, entry) for name, entry in sorted(value.items())]
        )
    return f" {_ENCODER.encode(key)}: {_ENCODER.encode(value)}"


def _entry_line(name: str, entry: Any) -> str:
    return f"  {_ENCODER.encode(name)}: {_ENCODER.encode(entry)}"


def _encode_block(key: str, lines: list[str]) -> str:
    """A key whose object has one entry (already encoded) per line."""
    return f" {_ENCODER.encode(key)}: {{\n" + ",\n".join(lines) + "\n }"


@record(frozen=True)
class Holder:
    pid: int
    host: str
    user: str
    operation: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.operation} (pid {self.pid}, {self.user}@{self.host}, since {when})"

    def is_local(self) -> bool:
        return self.host == _hostname()

    def is_alive(self) -> bool:
        """Only meaningful for a local holder."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @staticmethod
    def current(operation: str) -> Holder:
        return Holder(os.getpid(), _hostname(), _user(), operation, time.time())

    @staticmethod
    def parse(raw: bytes) -> Holder | None:
        try:
            data = json.loads(raw)
            return Holder(
                int(data["pid"]),
                str(data["host"]),
                str(data["user"]),
                str(data["operation"]),
                float(data["since"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class StateStore:
    """Everything under the state directory that the engine owns."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._ready = False
        #: Per project, each record last saved and its line in the file.
        self._lines: dict[str, dict[str, tuple[OwnedRecord, str]]] = {}

    @property
    def projects_dir(self) -> Path:
        return self.state_dir / PROJECTS_DIR

    def _ensure(self) -> None:
        if not self._ready:
            try:
                ensure_private_dir(self.state_dir)
                ensure_private_dir(self.projects_dir)
            except PermissionError as exc:
                raise StateError(
                    f"cannot create state directory {self.state_dir}: {exc.strerror}"
                ) from None
            self._ready = True

    def state_path(self, project: str) -> Path:
        return self.projects_dir / f"{project}.json"

    def lock_path(self, project: str) -> Path:
        return self.projects_dir / f"{project}.lock"

    def load(self, project: str) -> ProjectState:
        path = self.state_path(project)
        raw = read_private_file(path)
        if raw is None:
            return ProjectState(project=project)
        try:
            state = ProjectState.from_json(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{path}:{exc.lineno}:{exc.colno}: state file is not valid JSON ({exc.msg}); it was left unchanged",
                hint="Move it aside to start over; sprites it recorded will then be treated as unowned.",
            ) from None
        except ValueError as exc:
            raise StateError(
                f"{path}: state file is invalid ({exc}); it was left unchanged"
            ) from None
        if state.project != project:
            raise StateError(
                f"{path}: state file belongs to project '{state.project}', not '{project}'"
            )
        return state

    def save(self, state: ProjectState) -> None:
        self._ensure()
        state.serial += 1
        write_private_file(self.state_path(state.project), self._encode(state))

    def _encode(self, state: ProjectState) -> bytes:
        """What ``encode_state(state.to_json())`` gives, reusing the line of
        each record that is the same object as at the last save: an apply
        saves the whole file many times, changing a few records each time."""
        previous = self._lines.get(state.project, {})
        lines: dict[str, tuple[OwnedRecord, str]] = {}
        for name, owned in sorted(state.records.items()):
            known = previous.get(name)
            if known is None or known[0] is not owned:
                known = (owned, _entry_line(name, owned.to_json()))
            lines[name] = known
        self._lines[state.project] = lines
        data = state.to_json(records=False)
        data["sprites"] = {}
        parts = [
            _encode_block(key, [line for _, line in lines.values()])
            if key == "sprites" and lines
            else _encode_part(key, data[key])
            for key in sorted(data)
        ]
        return ("{\n" + ",\n".join(parts) + "\n}\n").encode()

    def projects(self) -> list[str]:
        if not self.projects_dir.is_dir():
            return []
        return sorted(p.stem for p in self.projects_dir.glob("*.json"))

    @contextmanager
    def lock(self, project: str, operation: str, *, timeout: float = 0.0) -> Iterator[list[str]]:
        """Hold the project's lock; yields notes (e.g. a recovered stale lock)."""
        self._ensure()
        path = self.lock_path(project)
        fd = open_lock_file(path)
        notes: list[str] = []
        try:
            self._acquire(fd, project, timeout)
            previous = Holder.parse(os.pread(fd, 4096, 0))
            if previous is not None:
                if not previous.is_local():
                    raise LockError(
                        f"state of project '{project}' is locked by {previous.describe()}",
                        hint=(
                            "That holder is on another host, so its liveness cannot be checked here. "
                            f"If it is gone, run `sprites force-unlock {project}`."
                        ),
                    )
                notes.append(
                    f"Recovered the lock of project '{project}' left by {previous.describe()}, "
                    "which exited without releasing it."
                )
            self._remove_leftovers(project)
            record = json.dumps(Holder.current(operation).__dict__).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            os.fsync(fd)
            try:
                yield notes
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remove_leftovers(self, project: str) -> None:
        """Temp files of state writes that a killed holder never renamed; the
        state file itself is intact (the rename is atomic). Only a lock
        holder writes the project's state, so none of them is in use."""
        prefix = f".{self.state_path(project).name}."
        try:
            names = os.listdir(self.projects_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                try:
                    os.unlink(self.projects_dir / name)
                except FileNotFoundError:
                    pass

    def _acquire(self, fd: int, project: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        settle: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now >= deadline:
                # A held lock with no record: its holder is between taking the
                # lock and recording itself (or clearing its record and letting
                # go). Give it a moment, so the error can name it or the lock
                # turns out free.
                if settle is None and Holder.parse(os.pread(fd, 4096, 0)) is None:
                    settle = now + LOCK_SETTLE
                if settle is None or now >= settle or Holder.parse(os.pread(fd, 4096, 0)):
                    raise self._busy_error(fd, project, timeout)
                time.sleep(0.005)
                continue
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 0.2)

    def _busy_error(self, fd: int, project: str, timeout: float) -> LockError:
        holder = Holder.parse(os.pread(fd, 4096, 0))
        waited = f" after waiting {timeout:g}s" if timeout else ""
        if holder is None:
            return LockError(
                f"state of project '{project}' is locked by another sprites process{waited}",
                hint="Wait for it to finish, or pass --lock-timeout to wait longer.",
            )
        if holder.is_local() and not holder.is_alive():
            return LockError(
                f"state of project '{project}' has a stale lock: {holder.describe()} is no longer running",
                hint=f"Run `sprites force-unlock {project}` to clear it.",
            )
        return LockError(
            f"state of project '{project}' is locked by {holder.describe()}{waited}",
            hint="Wait for it to finish, or pass --lock-timeout to wait longer.",
        )

    def force_unlock(self, project: str) -> str:
        """Clear a lock record left behind; refuses while a live local holder runs."""
        path = self.lock_path(project)
        try:
            fd = open_lock_file(path, create=False)
        except FileNotFoundError:
            return f"Project '{project}' is not locked."
        try:
            holder = Holder.parse(os.pread(fd, 4096, 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # No record under a held lock: its holder is taking or releasing
                # it right now, so it is alive; removing the file would let a
                # second apply in beside it.
                if holder is None or (holder.is_local() and holder.is_alive()):
                    who = holder.describe() if holder else "another sprites process"
                    raise LockError(
                        f"state of project '{project}' is locked by {who}, which is still running",
                        hint="force-unlock only clears locks whose holder is gone.",
                    ) from None
                # The kernel lock is held by a process that is not the recorded
                # holder (an inherited descriptor): detach the file from it.
                os.unlink(path)
                return f"Removed the stale lock of project '{project}'."
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if holder is None:
            return f"Project '{project}' is not locked."
        return f"Cleared the lock of project '{project}' left by {holder.describe()}."

    @contextmanager
    def host_lock(self, *, timeout: float = 30.0) -> Iterator[None]:
        """Serialises admission of imperative starts against the host-wide maxVMs."""
        self._ensure()
        fd = open_lock_file(self.state_dir / "host.lock")
        try:
            self._acquire(fd, "host", timeout)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _hostname() -> str:
    """This host's name, as ``socket.gethostname()`` gives it on Linux
    (without importing socket, which short commands do not otherwise need)."""
    return os.uname().nodename


def _user() -> str:
    """The login name, found as ``getpass.getuser()`` finds it."""
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        name = os.environ.get(variable)
        if name:
            return name
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _nonce() -> str:
    """Eight random hex digits: a temp file name no one can guess ahead."""
    return os.urandom(4).hex()
