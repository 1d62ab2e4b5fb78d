"""The event log: what every apply, destroy and watch pass saw and did.

One JSON object per line in ``<state_dir>/events.log`` (0600), shared by
every project of the state directory. Each event has ``time`` (ISO 8601 UTC),
``ts`` (unix seconds), ``type`` (:class:`EventType`), ``project``, ``sprite``
(null for project-wide events), ``action``, ``outcome`` and ``duration``
(seconds), plus optional details (``reason``, ``step``, ``error``,
``message``, ``detail``).

Appends are safe across processes: each is one ``write`` of a whole line to
a file opened with ``O_APPEND``, under an ``flock`` that also serialises
rotation. When the log would grow past ``max_bytes`` it is renamed to
``events.log.1`` (older generations shift up to ``events.log.<keep>``).

Standard library only, so ``sprites events`` starts fast.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

    from reconciler.errors import ReconcilerError
    from reconciler.executor import ApplyHooks as _HookBase
    from reconciler.models.plan import Change
else:
    _HookBase = object

EVENTS_FILE = "events.log"
DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_KEEP = 2
#: ``last_errors`` reads at most this much of the end of the log.
TAIL_BYTES = 2 << 20


def _log() -> logging.Logger:
    """The events logger, for the rare warning: logging is not imported otherwise."""
    import logging

    return logging.getLogger("sprites.events")


Event = dict[str, Any]
Listener = Callable[[Event], None]


class EventType(str, Enum):
    """The ``type`` of an event. Values are stable wire strings."""

    OBSERVE = "observe"  # the runtime was listed
    PLAN = "plan"  # a plan was made (or refused)
    ACTION = "action"  # a runtime call begins
    RESULT = "result"  # a runtime call ended
    DRIFT = "drift"  # reality moved away from the manifest
    MANIFEST = "manifest"  # the watched manifest was (re)loaded or rejected
    BACKOFF = "backoff"  # a failing sprite waits before the next attempt
    ERROR = "error"  # a pass or an operation failed as a whole
    PASS = "pass"  # one reconcile pass of the watch loop ended
    WATCH = "watch"  # the watch loop started or stopped


def timestamp(now: float) -> str:
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


class EventLog:
    """Appends events to the log, and tells in-process listeners (``watch``)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.clock = clock
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self.listeners: list[Listener] = []
        self._mutex = threading.Lock()
        self._dir_ready = False
        self._warned = False

    # -- writing -----------------------------------------------------------

    def emit(
        self,
        kind: EventType,
        *,
        project: str | None,
        action: str,
        outcome: str,
        sprite: str | None = None,
        duration: float = 0.0,
        **details: Any,
    ) -> Event:
        now = self.clock()
        event: Event = {
            "time": timestamp(now),
            "ts": round(now, 3),
            "type": kind.value,
            "project": project,
            "sprite": sprite,
            "action": action,
            "outcome": outcome,
            "duration": round(duration, 3),
        }
        event.update((key, value) for key, value in details.items() if value is not None)
        self.append(event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001  (a closed stdout must not stop a pass)
                _log().debug("event listener failed", exc_info=True)
        return event

    def append(self, event: Event) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode()
        with self._mutex:
            try:
                self._append(data)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    _log().warning("cannot write the event log %s: %s", self.path, exc.strerror)

    def _append(self, data: bytes) -> None:
        if not self._dir_ready:
            from reconciler.state import ensure_private_dir

            ensure_private_dir(self.path.parent)
            self._dir_ready = True
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | flags, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._rotate_if_full(len(data))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | flags, 0o600)
            try:
                written = os.write(fd, data)
                while written < len(data):  # only on a full disk or a signal
                    written += os.write(fd, data[written:])
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)

    def _rotate_if_full(self, incoming: int) -> None:
        try:
            size = os.lstat(self.path).st_size
        except FileNotFoundError:
            return
        if size == 0 or size + incoming <= self.max_bytes:
            return
        for generation in range(self.keep, 1, -1):
            older = self._generation(generation - 1)
            if older.exists():
                os.replace(older, self._generation(generation))
        os.replace(self.path, self._generation(1))

    def _generation(self, number: int) -> Path:
        return self.path if number == 0 else self.path.with_name(f"{self.path.name}.{number}")

    # -- reading -----------------------------------------------------------

    def paths(self) -> list[Path]:
        """The log's generations that exist, oldest first."""
        candidates = [self._generation(n) for n in range(self.keep, -1, -1)]
        return [path for path in candidates if path.is_file()]

    def read(self, project: str | None = None) -> Iterator[Event]:
        """Every event, oldest first (optionally one project's)."""
        for path in self.paths():
            yield from _events_in(path, project)

    def follow(
        self,
        project: str | None = None,
        *,
        stop: Callable[[], bool] = lambda: False,
        wait: Callable[[float], object] = time.sleep,
        poll: float = 0.25,
        backlog: int | None = None,
    ) -> Iterator[Event]:
        """Events as they are appended, across rotations, until ``stop()``.
        First the ``backlog`` latest events already logged (None: all of them)."""
        handle, identity = self._open_current()
        buffered = b""
        try:
            past: deque[Event] = deque(maxlen=backlog)
            if backlog != 0:
                for path in self.paths():
                    if identity is not None and _identity(path) == identity:
                        continue
                    past.extend(_events_in(path, project))
            if handle is not None:
                buffered = handle.read()
                *lines, buffered = buffered.split(b"\n")
                if backlog != 0:
                    past.extend(_parsed(lines, project))
            yield from past
            past.clear()
            while not stop():
                chunk = handle.read() if handle is not None else b""
                if chunk:
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\n")
                    yield from _parsed(lines, project)
                    continue
                if _identity(self.path) != identity:
                    # Rotated (or created): drain the old file, then read the new one.
                    if handle is not None:
                        buffered += handle.read()
                        handle.close()
                    yield from _parsed(buffered.split(b"\n"), project)
                    handle, identity = self._open_current()
                    buffered = b""
                    continue
                wait(poll)
        finally:
            if handle is not None:
                handle.close()

    def _open_current(self) -> tuple[Any, tuple[int, int] | None]:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115  (closed by follow)
        except FileNotFoundError:
            return None, None
        info = os.fstat(handle.fileno())
        return handle, (info.st_dev, info.st_ino)

    def last_errors(self, project: str) -> dict[str, str]:
        """Per sprite, the error of its latest failed runtime call, unless a
        later call succeeded (read from the end of the current log)."""
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(0, size - TAIL_BYTES))
                raw = handle.read()
        except FileNotFoundError:
            return {}
        errors: dict[str, str] = {}
        for line in raw.split(b"\n"):
            event = parse_line(line)
            if event is None or event.get("type") != EventType.RESULT.value:
                continue
            if event.get("project") != project or not isinstance(event.get("sprite"), str):
                continue
            if event.get("outcome") == "ok":
                errors.pop(event["sprite"], None)
            elif isinstance(event.get("error"), str):
                errors[event["sprite"]] = event["error"]
        return errors


def parse_line(line: bytes) -> Event | None:
    """One event, or None for a blank, torn or foreign line."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def _events_in(path: Path, project: str | None) -> Iterator[Event]:
    try:
        with open(path, "rb") as handle:
            yield from _parsed(handle, project)
    except FileNotFoundError:  # rotated away meanwhile
        return


def _parsed(lines: Iterable[bytes], project: str | None) -> Iterator[Event]:
    for line in lines:
        event = parse_line(line)
        if event is not None and _matches(event, project):
            yield event


def _matches(event: Event, project: str | None) -> bool:
    return project is None or event.get("project") == project


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


class EventLogHook(_HookBase):
    """Logs each runtime call of an apply: an ``action`` event before it and
    a ``result`` event (``ok`` or ``failed``, with its duration) after it."""

    def __init__(self, events: EventLog, project: str, operation: str) -> None:
        self.events = events
        self.project = project
        self.operation = operation
        #: Sprites whose failure a ``result`` event already logged.
        self.failed: set[str] = set()

    def pre_step(self, change: Change, step: str) -> None:
        self.events.emit(
            EventType.ACTION,
            project=self.project,
            sprite=change.address,
            action=change.action.value,
            outcome="started",
            step=step,
            reason=change.reason.value,
            operation=self.operation,
        )

    def post_step(
        self, change: Change, step: str, error: ReconcilerError | None, elapsed: float
    ) -> None:
        if error is not None:
            self.failed.add(change.address)
        self.events.emit(
            EventType.RESULT,
            project=self.project,
            sprite=change.address,
            action=change.action.value,
            outcome="ok" if error is None else "failed",
            duration=elapsed,
            step=step,
            reason=change.reason.value,
            operation=self.operation,
            error=error.user_message if error is not None else None,
        )
