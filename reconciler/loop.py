"""``sprites watch``: keep the running sprites converged on the manifest.

Level-triggered: each pass re-reads the manifest, observes the runtime, plans
and applies (running watch is the approval). Passes run every ``interval``
and soon after the manifest file changes (its size, mtime and inode are
polled every ``poll`` seconds while sleeping, then its digest compared).

- An invalid edit is reported once; the last good manifest stays enforced.
  So does an edit that renames the project (restart watch to switch).
- Drift is repaired: an owned sprite that died or stopped is started again
  on the next pass. A sprite started out of band under a desired name is
  reported once (not adopted, unless ``adopt``) while the others converge.
- A failing action backs off per sprite: after the n-th failure in a row
  the sprite waits ``interval * 2**(n-1)`` (capped at ``max_backoff``)
  times a random factor in [0.5, 1]. A sprite that dies within a pass of
  being started counts as failing too, so a crash loop backs off.
- Errors retrying cannot fix (:func:`reconciler.errors.is_terminal`: a bad
  spec, an exceeded budget, an ownership conflict) are reported once. A
  sprite whose action failed so is not retried until the manifest changes; a
  plan refused so (it changed nothing) is only re-checked on the backoff
  schedule, so room freed by another project is still noticed, and at once
  when the manifest changes. A pass that fails for a transient reason (the
  runtime unreachable, the lock busy) backs off the same way.
- :meth:`Watcher.stop` (SIGINT/SIGTERM via :func:`stop_on_signals`) ends the
  loop after the current pass; sprites are never killed for it.

Every observation, plan, action, result, drift and error is in the event
log (:mod:`reconciler.events`); ``on_event`` listeners see them live.
The clocks, the random source and the sleep are injectable for tests.
"""

from __future__ import annotations

import hashlib
import math
import os
import random as random_mod
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from reconciler.errors import ManifestError, Position, ReconcilerError, is_terminal
from reconciler.events import EventType
from reconciler.record import field, record, replace

if TYPE_CHECKING:
    from reconciler.engine import Engine
    from reconciler.executor import ApplyResult
    from reconciler.manifest import LoadedManifest
    from reconciler.models.plan import Plan

DEFAULT_INTERVAL = 30.0
DEFAULT_POLL = 0.5
DEFAULT_MAX_BACKOFF = 300.0
#: Backoff key of failures that stop a whole pass (runtime unreachable, lock busy).
PASS_KEY = "*"
_DRIFT_REASONS = ("missing", "not_running")


class Backoff:
    """Per-key exponential backoff with jitter, on an injectable clock."""

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_mod.random,
    ) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.clock = clock
        self.random = random
        self.failures: dict[str, int] = {}
        self.next_at: dict[str, float] = {}

    def failure(self, key: str) -> float:
        """Count a failure; returns the delay before the next attempt."""
        count = self.failures.get(key, 0) + 1
        self.failures[key] = count
        delay = min(self.cap, math.ldexp(self.base, min(count - 1, 62)))
        delay *= 0.5 + 0.5 * self.random()
        self.next_at[key] = self.clock() + delay
        return delay

    def strike(self, key: str) -> float | None:
        """Count a failure whose first occurrence deserves an immediate retry
        (a sprite that died once); from the second one on, back off."""
        if key not in self.failures:
            self.failures[key] = 1
            return None
        return self.failure(key)

    def success(self, key: str) -> None:
        self.failures.pop(key, None)
        self.next_at.pop(key, None)

    def ready(self, key: str) -> bool:
        return self.clock() >= self.next_at.get(key, float("-inf"))

    def due(self, key: str) -> float | None:
        return self.next_at.get(key)

    def earliest(self, *, exclude: str = PASS_KEY) -> float | None:
        times = [at for key, at in self.next_at.items() if key != exclude]
        return min(times) if times else None

    def clear(self) -> None:
        self.failures.clear()
        self.next_at.clear()


@record
class PassResult:
    number: int
    ok: bool
    plan: Plan | None = None
    result: ApplyResult | None = None
    error: ReconcilerError | None = None
    #: Changes held back by backoff or a terminal error.
    deferred: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


class Watcher:
    def __init__(
        self,
        engine: Engine,
        manifest: Path,
        *,
        interval: float = DEFAULT_INTERVAL,
        adopt: bool = False,
        parallelism: int = 10,
        poll: float = DEFAULT_POLL,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        lock_timeout: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_mod.random,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.engine = engine
        self.path = manifest
        self.interval = interval
        self.adopt = adopt
        self.parallelism = parallelism
        self.poll = poll
        self.lock_timeout = min(10.0, interval) if lock_timeout is None else lock_timeout
        self.monotonic = monotonic
        self.backoff = Backoff(interval, max_backoff, clock=monotonic, random=random)
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self.events = engine.events
        self.loaded: LoadedManifest | None = None
        self.passes = 0
        #: Digest of the manifest bytes last read (good or not).
        self._seen: str | None = None
        #: Sprites held until the manifest changes, with the terminal error.
        self._blocked: dict[str, str] = {}
        #: Terminal errors already reported under this manifest.
        self._reported: set[str] = set()
        #: Desired names held by unowned sprites, already reported.
        self._conflicts: set[str] = set()
        #: Sprites the previous pass started: dying now means a crash loop.
        self._fresh: set[str] = set()
        self._deferred: list[str] = []

    # -- control -----------------------------------------------------------

    def stop(self) -> None:
        """End the loop after the current pass (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, once: bool = False) -> int:
        """Load the manifest (failing fast when it is invalid), then pass until
        stopped. ``once``: one pass, exit status 1 when it failed."""
        self.load()
        assert self.loaded is not None
        if once:
            return 0 if self.run_pass().ok else 1
        self._emit(
            EventType.WATCH,
            action="watch",
            outcome="started",
            message=f"watching {self.path} every {_seconds(self.interval)}",
            detail={"manifest": str(self.path), "interval": self.interval, "pid": os.getpid()},
        )
        try:
            while True:
                self.run_pass()
                if self._sleep():
                    break
        finally:
            self._emit(
                EventType.WATCH,
                action="watch",
                outcome="stopped",
                message=f"stopped after {self.passes} passes; sprites keep running",
                detail={"passes": self.passes},
            )
        return 0

    # -- the manifest --------------------------------------------------------

    def load(self) -> LoadedManifest:
        """The first load: an invalid manifest is an error here, not a report."""
        raw = self._read()
        if raw is None:
            raise ManifestError(
                Position(str(self.path)),
                "manifest not found",
                hint="Give the manifest with -f FILE (default: sprites.yaml in this directory).",
            )
        self.loaded = self._parse(raw)
        self._seen = self.loaded.digest
        return self.loaded

    def _read(self) -> bytes | None:
        from reconciler.manifest import MAX_MANIFEST_BYTES

        try:
            with open(self.path, "rb") as handle:
                return handle.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ManifestError(Position(str(self.path)), f"cannot read: {exc.strerror}") from None

    def _parse(self, raw: bytes) -> LoadedManifest:
        from reconciler.manifest import parse_manifest

        agent = self.engine.config.agent
        return parse_manifest(
            raw,
            str(self.path),
            path=self.path,
            default_memory=agent.default_memory,
            default_cpus=agent.default_cpus,
        )

    def reload(self) -> bool:
        """Re-read the manifest; True when a new valid one is now enforced.
        An invalid one is reported once (per content) and ignored."""
        problem: ManifestError | None = None
        try:
            raw = self._read()
        except ManifestError as error:
            raw, problem = None, error
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else "missing"
        if digest == self._seen:
            return False
        self._seen = digest
        if raw is None:
            self._invalid(problem or ManifestError(Position(str(self.path)), "manifest not found"))
            return False
        try:
            loaded = self._parse(raw)
        except ReconcilerError as error:
            self._invalid(error)
            return False
        current = self.loaded
        if current is not None and loaded.digest == current.digest:
            return False
        if current is not None and loaded.project != current.project:
            self._invalid(
                ReconcilerError(
                    f"{self.path}: the project changed from '{current.project}' to "
                    f"'{loaded.project}'; restart watch to reconcile another project"
                )
            )
            return False
        self.loaded = loaded
        self._blocked.clear()
        self._reported.clear()
        self._conflicts.clear()
        self.backoff.clear()
        self._emit(
            EventType.MANIFEST,
            action="load",
            outcome="ok",
            message=f"{self.path} changed; enforcing the new manifest",
            detail={"digest": loaded.digest, "sprites": len(loaded.desired)},
        )
        return True

    def _invalid(self, error: ReconcilerError) -> None:
        self._emit(
            EventType.MANIFEST,
            action="load",
            outcome="invalid",
            error=error.user_message,
            message="keeping the last good manifest",
        )

    # -- one pass ------------------------------------------------------------

    def run_pass(self) -> PassResult:
        self.passes += 1
        number = self.passes
        began = time.monotonic()
        self.reload()
        loaded = self.loaded
        if loaded is None:  # run_pass before load(): load now, errors are the caller's
            loaded = self.load()
        self._deferred = []
        try:
            outcome = self.engine.apply(
                loaded=loaded,
                adopt=self.adopt,
                parallelism=self.parallelism,
                lock_timeout=self.lock_timeout,
                approve=lambda plan: True,
                unattended=True,
                report_conflicts=True,
                select=self._select,
                caller="watch",
            )
        except ReconcilerError as error:
            return self._pass_failed(number, error, began)
        self.backoff.success(PASS_KEY)
        plan, result = outcome.plan, outcome.result
        self._report_conflicts(plan)
        failed = self._settle(result)
        ok = not failed and not plan.conflicts
        counts = result.counts if result is not None else {"start": 0, "replace": 0, "kill": 0}
        self._emit(
            EventType.PASS,
            action="reconcile",
            outcome=("ok" if plan.has_changes else "in_sync") if ok else "failed",
            duration=time.monotonic() - began,
            detail={
                "pass": number,
                **counts,
                "failed": len(failed),
                "deferred": len(self._deferred),
                "conflicts": len(plan.conflicts),
            },
        )
        return PassResult(
            number,
            ok,
            plan,
            result,
            deferred=tuple(self._deferred),
            conflicts=plan.conflicts,
            notes=list(outcome.notes),
        )

    def _select(self, plan: Plan) -> Plan:
        """Hold back the changes of sprites in backoff or blocked by a terminal
        error; note drift. Runs under the project's lock, before the apply."""
        changing = {change.address for change in plan.changes}
        for name in list(self.backoff.failures):
            if name != PASS_KEY and name not in changing:
                self.backoff.success(name)  # converged since: forgive
        self._fresh &= changing
        keep = []
        for change in plan.changes:
            name = change.address
            drift = change.reason.value in _DRIFT_REASONS
            if drift and name in self._fresh:
                self._fresh.discard(name)
                delay = self.backoff.strike(name)
                if delay is not None:
                    self._emit(
                        EventType.BACKOFF,
                        sprite=name,
                        action=change.action.value,
                        outcome="deferred",
                        error=f"'{name}' keeps stopping soon after it is started",
                        detail={
                            "failures": self.backoff.failures[name],
                            "retry_in": round(delay, 3),
                        },
                    )
            if name in self._blocked or not self.backoff.ready(name):
                self._deferred.append(name)
                continue
            if drift:
                self._emit(
                    EventType.DRIFT,
                    sprite=name,
                    action=change.action.value,
                    outcome="repairing",
                    reason=change.reason.value,
                    message=change.reason.text
                    + (f": {change.observed_state}" if change.observed_state else ""),
                )
            keep.append(change)
        if len(keep) == len(plan.changes):
            return plan
        return replace(plan, changes=tuple(keep))

    def _settle(self, result: ApplyResult | None) -> list[str]:
        """Back off (or block) the sprites whose changes failed."""
        if result is None:
            return []
        failed: list[str] = []
        for name, error in result.failures:
            if name == "*":
                continue
            failed.append(name)
            if is_terminal(error):
                self._blocked[name] = error.user_message
                self._emit(
                    EventType.BACKOFF,
                    sprite=name,
                    action="retry",
                    outcome="blocked",
                    error=error.user_message,
                    message="not retried until the manifest changes",
                )
                continue
            delay = self.backoff.failure(name)
            self._emit(
                EventType.BACKOFF,
                sprite=name,
                action="retry",
                outcome="deferred",
                error=error.user_message,
                detail={"failures": self.backoff.failures[name], "retry_in": round(delay, 3)},
            )
        done = {
            o.change.address
            for o in result.outcomes
            if o.error is None and o.step == "start" and o.change.address not in failed
        }
        self._fresh = done
        return failed

    def _report_conflicts(self, plan: Plan) -> None:
        from reconciler.planner import ownership_error

        current = set(plan.conflicts)
        self._conflicts &= current
        observed = {sprite.name: sprite for sprite in plan.observed}
        for name in plan.conflicts:
            if name in self._conflicts:
                continue
            self._conflicts.add(name)
            error = ownership_error([observed[name]], plan.project)
            self._emit(
                EventType.DRIFT,
                sprite=name,
                action="conflict",
                outcome="reported",
                error=error.user_message,
                message=error.hint,
            )

    def _pass_failed(self, number: int, error: ReconcilerError, began: float) -> PassResult:
        terminal = is_terminal(error)
        details: dict[str, Any] = {"pass": number, "terminal": terminal}
        details["retry_in"] = round(self.backoff.failure(PASS_KEY), 3)
        if terminal:
            key = error.user_message
            quiet = key in self._reported
            self._reported.add(key)
            outcome = "blocked"
        else:
            quiet = False
            outcome = "failed"
        if not quiet:
            self._emit(
                EventType.ERROR,
                action="reconcile",
                outcome=outcome,
                duration=time.monotonic() - began,
                error=error.user_message,
                message=error.hint,
                detail=details,
            )
        return PassResult(number, False, error=error)

    # -- between passes ------------------------------------------------------

    def _sleep(self) -> bool:
        """Wait for the next pass; True when asked to stop."""
        if self._stop.is_set():
            return True
        now = self.monotonic()
        due = now + self.interval
        retry = self.backoff.due(PASS_KEY)
        if retry is not None:
            due = max(due, retry)
        else:
            soonest = self.backoff.earliest()
            if soonest is not None and now < soonest < due:
                due = soonest
        baseline = _signature(self.path)
        pending: object = baseline
        while True:
            remaining = due - self.monotonic()
            if remaining <= 0:
                return self._stop.is_set()
            if self._wait(min(self.poll, remaining)) or self._stop.is_set():
                return True
            current = _signature(self.path)
            if current == baseline:
                pending = baseline
                continue
            if current != pending:  # changing: wait until it holds still for a poll
                pending = current
                continue
            baseline = current
            if self._changed():
                return False

    def _changed(self) -> bool:
        try:
            raw = self._read()
        except ManifestError:
            raw = None
        digest = hashlib.sha256(raw).hexdigest() if raw is not None else "missing"
        return digest != self._seen

    def _emit(self, kind: EventType, **fields: Any) -> None:
        project = self.loaded.project if self.loaded is not None else None
        self.events.emit(kind, project=project, **fields)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)


def _seconds(value: float) -> str:
    from reconciler.models import units

    return units.format_duration(value)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop`` (finish the pass, then exit 0); a
    second SIGINT interrupts at once. Only the main thread can install them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
