"""Memory, CPU and process-count limits of a sprite, through cgroups.

cgroup v2 is used when the unified hierarchy offers the memory, cpu and pids
controllers; otherwise cgroup v1 with one hierarchy per controller. A
sprite's groups are ``<hierarchy>/sprites/<name>.<scope>``, where the scope
(:func:`scope`) stands for the state directory, so two state directories
(two users, two test runs) can each have a sprite of the same name; its init
joins them before it runs anything, so every process of the sprite is limited.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time

from reconciler.record import record

CONTROLLERS = ("memory", "cpu", "pids")
DEFAULT_PIDS = 512
CPU_PERIOD_US = 100_000
PARENT = "sprites"
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class CgroupError(Exception):
    """Limits cannot be set up; ``reason`` is one line for the user."""

    def __init__(self, reason: str, *, denied: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.denied = denied


class CgroupBusyError(CgroupError):
    """A group of that name exists and still holds processes."""


@record(frozen=True)
class Hierarchy:
    """Where the controllers are mounted."""

    version: int
    #: v2: the unified mount; v1: controller -> its mount point.
    unified: str = ""
    v1: tuple[tuple[str, str], ...] = ()

    def mount_of(self, controller: str) -> str:
        return dict(self.v1)[controller]


@record(frozen=True)
class SpriteCgroups:
    """The groups of one sprite and the files the runtime reads back."""

    version: int
    dirs: tuple[str, ...]
    memory_dir: str
    cpu_dir: str
    pids_dir: str

    @property
    def oom_file(self) -> str:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return os.path.join(self.memory_dir, name)

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "dirs": list(self.dirs),
            "memory_dir": self.memory_dir,
            "cpu_dir": self.cpu_dir,
            "pids_dir": self.pids_dir,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SpriteCgroups | None:
        try:
            dirs = data["dirs"]
            if not isinstance(dirs, list):
                return None
            return cls(
                version=int(str(data["version"])),
                dirs=tuple(str(d) for d in dirs),
                memory_dir=str(data["memory_dir"]),
                cpu_dir=str(data["cpu_dir"]),
                pids_dir=str(data["pids_dir"]),
            )
        except (KeyError, ValueError):
            return None


def _unescape(path: str) -> str:
    return (
        path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def detect(mountinfo: str = "/proc/self/mountinfo") -> Hierarchy | None:
    """The hierarchy to use, or None when memory, cpu and pids are not all available."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    unified = ""
    v1: dict[str, str] = {}
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        mount_point = _unescape(fields[4])
        fstype, options = rest[0], rest[2].split(",")
        if fstype == "cgroup2" and not unified:
            unified = mount_point
        elif fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options and controller not in v1:
                    v1[controller] = mount_point
    if unified:
        try:
            with open(os.path.join(unified, "cgroup.controllers"), encoding="ascii") as handle:
                available = set(handle.read().split())
        except OSError:
            available = set()
        if all(c in available for c in CONTROLLERS):
            return Hierarchy(version=2, unified=unified)
    if all(c in v1 for c in CONTROLLERS):
        return Hierarchy(version=1, v1=tuple(sorted(v1.items())))
    return None


def scope(state_dir: str | os.PathLike[str]) -> str:
    """8 hex digits standing for the state directory (its resolved path)."""
    resolved = os.path.realpath(state_dir)
    return hashlib.sha256(os.fsencode(resolved)).hexdigest()[:8]


def plan(hierarchy: Hierarchy, name: str, state_dir: str | os.PathLike[str]) -> SpriteCgroups:
    """The groups a sprite called ``name`` (already validated) of the runtime
    keeping its records in ``state_dir`` gets."""
    leaf = f"{name}.{scope(state_dir)}"
    if hierarchy.version == 2:
        path = os.path.join(hierarchy.unified, PARENT, leaf)
        return SpriteCgroups(2, (path,), path, path, path)
    dirs: list[str] = []
    per: dict[str, str] = {}
    for controller in CONTROLLERS:
        path = os.path.join(hierarchy.mount_of(controller), PARENT, leaf)
        per[controller] = path
        if path not in dirs:
            dirs.append(path)
    return SpriteCgroups(1, tuple(dirs), per["memory"], per["cpu"], per["pids"])


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return None


def _fail(exc: OSError, what: str) -> CgroupError:
    if exc.errno in _DENIED:
        return CgroupError("permission denied", denied=True)
    return CgroupError(f"cannot {what}: {exc.strerror}")


def _enable_controllers(directory: str) -> None:
    """v2: let the children of ``directory`` use the controllers."""
    current = (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split()
    missing = [c for c in CONTROLLERS if c not in current]
    if missing:
        _write(
            os.path.join(directory, "cgroup.subtree_control"),
            " ".join(f"+{c}" for c in missing),
        )


def _make_group(path: str) -> None:
    try:
        os.mkdir(path, 0o755)
        return
    except FileExistsError:
        pass
    # Left behind by a sprite whose records are gone: reuse only if empty,
    # and recreate it so no counter (oom_kill) carries over.
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise CgroupBusyError(f"cgroup {path} is in use") from exc
        raise
    os.mkdir(path, 0o755)


def create(groups: SpriteCgroups, *, memory: int, cpus: int, pids: int = DEFAULT_PIDS) -> None:
    """Make the sprite's groups and write its limits; undo on failure."""
    made: list[str] = []
    try:
        for path in groups.dirs:
            parent = os.path.dirname(path)
            try:
                os.mkdir(parent, 0o755)
            except FileExistsError:
                pass
            if groups.version == 2:
                _enable_controllers(os.path.dirname(parent))
                _enable_controllers(parent)
            _make_group(path)
            made.append(path)
        if groups.version == 1:
            _write(os.path.join(groups.memory_dir, "memory.limit_in_bytes"), str(memory))
            memsw = os.path.join(groups.memory_dir, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                try:
                    _write(memsw, str(memory))
                except OSError:
                    pass  # swap accounting off: nothing to cap
            period_text = _read(os.path.join(groups.cpu_dir, "cpu.cfs_period_us"))
            period = int(period_text) if period_text and period_text.strip() else CPU_PERIOD_US
            _write(os.path.join(groups.cpu_dir, "cpu.cfs_quota_us"), str(cpus * period))
        else:
            _write(os.path.join(groups.memory_dir, "memory.max"), str(memory))
            swap = os.path.join(groups.memory_dir, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
            _write(
                os.path.join(groups.cpu_dir, "cpu.max"), f"{cpus * CPU_PERIOD_US} {CPU_PERIOD_US}"
            )
        _write(os.path.join(groups.pids_dir, "pids.max"), str(pids))
    except CgroupError:
        remove(SpriteCgroups(groups.version, tuple(made), "", "", ""), timeout=1.0)
        raise
    except OSError as exc:
        remove(SpriteCgroups(groups.version, tuple(made), "", "", ""), timeout=1.0)
        raise _fail(exc, "set up cgroups") from exc


def tasks(path: str) -> list[int]:
    text = _read(os.path.join(path, "cgroup.procs")) or ""
    return [int(word) for word in text.split() if word.isdigit()]


def _kill_member(pid: int, path: str) -> None:
    """SIGKILL ``pid`` if it is still a member of the group at ``path`` (checked
    through a pidfd, so a reused pid is never hit)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        membership = _read(f"/proc/{pid}/cgroup") or ""
        suffix = "/" + PARENT + "/" + os.path.basename(path)
        if any(line.endswith(suffix) for line in membership.splitlines()):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def remove(groups: SpriteCgroups, *, timeout: float = 5.0) -> bool:
    """Remove the sprite's groups; processes still in them are killed first.

    True when every group is gone."""
    deadline = time.monotonic() + timeout
    gone = True
    for path in groups.dirs:
        delay = 0.001
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    gone = False
                    break
            for pid in tasks(path):
                _kill_member(pid, path)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    return gone


def oom_kills(groups: SpriteCgroups) -> int:
    """How many processes the kernel killed for exceeding the memory limit."""
    text = _read(groups.oom_file)
    if not text:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def is_writable(hierarchy: Hierarchy | None) -> bool:
    """Whether this process may create sprite groups (checked, not tried)."""
    if hierarchy is None:
        return False
    roots = [hierarchy.unified] if hierarchy.version == 2 else [m for _, m in hierarchy.v1]
    for root in roots:
        parent = os.path.join(root, PARENT)
        target = parent if os.path.isdir(parent) else root
        if not os.access(target, os.W_OK | os.X_OK):
            return False
    return True
