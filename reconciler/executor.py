"""Run a plan: bounded parallelism, budget-safe ordering, and a journal.

Each change is one or two steps (a replace or restart kills, then starts).
The scheduler runs in the calling thread; only runtime calls go to worker
threads, so the state file is written by one thread. Before each runtime
call the step's intent (``starting``/``killing``) is saved; after it the
record is settled. A crash at any moment therefore leaves records that the
next apply resolves against what the runtime lists (see
:func:`reconciler.planner.recover`).

The intents of the next round (up to ``parallelism`` first steps waiting
for a slot) are saved while the current calls run, so a slot that frees
starts its next call at once instead of after a write of the state file.
An intent saved ahead of its call means what any intent means, that the
call may have been made; those whose call never comes (the apply ran out
of budget room) are taken back before the apply ends. A replace's start
follows its kill, so its intent is saved only once the kill is done.

Starts are admitted against a ledger of what runs, counting in-flight
starts as running and in-flight kills as still running, so the sprites
running at any moment never exceed the budget.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.debuglog import debug
from reconciler.drivers.base import CallResult, Driver, StartRequest
from reconciler.errors import ReconcilerError, SpriteNotFoundError
from reconciler.models.desired import Budget
from reconciler.models.observed import Inventory
from reconciler.models.plan import Action, Change, Plan
from reconciler.models.state import Expiry, OwnedRecord, ProjectState
from reconciler.record import field, record

DEFAULT_PARALLELISM = 10


class ApplyHooks:
    """Listeners for apply progress; override what you need."""

    def pre_step(self, change: Change, step: str) -> None:
        pass

    def post_step(
        self, change: Change, step: str, error: ReconcilerError | None, elapsed: float
    ) -> None:
        pass


@record
class StepOutcome:
    change: Change
    step: str
    error: ReconcilerError | None
    elapsed: float
    result: CallResult | None = None


@record
class ApplyResult:
    outcomes: list[StepOutcome] = field(default_factory=list)
    #: (sprite, error) for every change that did not complete.
    failures: list[tuple[str, ReconcilerError]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"start": 0, "replace": 0, "kill": 0})
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


class _Ledger:
    """What runs now (in-flight starts count, in-flight kills still count)."""

    def __init__(self, inventory: Inventory, state: ProjectState, budget: Budget) -> None:
        self.budget = budget
        running = {s.name for s in inventory.sprites if s.is_running}
        self.host = len(running)
        owned = [r for r in state.records.values() if r.name in running]
        self.count = len(owned)
        self.memory = sum(int(r.spec.get("memory", 0)) for r in owned)
        self.cpus = sum(int(r.spec.get("cpus", 0)) for r in owned)
        self.running = running

    def admits(self, spec: dict[str, Any]) -> bool:
        b = self.budget
        return not (
            (b.host_max_vms is not None and self.host + 1 > b.host_max_vms)
            or (b.max_vms is not None and self.count + 1 > b.max_vms)
            or (b.memory is not None and self.memory + spec["memory"] > b.memory)
            or (b.cpus is not None and self.cpus + spec["cpus"] > b.cpus)
        )

    def add(self, name: str, spec: dict[str, Any], sign: int) -> None:
        self.host += sign
        self.count += sign
        self.memory += sign * int(spec.get("memory", 0))
        self.cpus += sign * int(spec.get("cpus", 0))
        if sign > 0:
            self.running.add(name)
        else:
            self.running.discard(name)


@record(eq=False)  # each task is itself: found by identity
class _Task:
    change: Change
    step_index: int = 0
    started: float = 0.0
    #: Its intent was saved ahead of its call; ``before`` is the record it replaced.
    ahead: bool = False
    before: OwnedRecord | None = None

    @property
    def step(self) -> str:
        return self.change.action.steps[self.step_index]


class _Workers:
    """Up to ``size`` threads that run ``call`` on submitted tasks, and one
    queue on which each result (or the exception raised) comes back.

    What ``concurrent.futures`` offers, without a future and a wait per call
    (and without the logging module it imports, a short command's start-up
    cost). Leaving the block waits for the calls in flight, as a thread pool
    does: they were journaled and must be seen to their end.
    """

    def __init__(self, size: int, call: Callable[[_Task], CallResult]) -> None:
        self.size = size
        self.call = call
        self.tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[_Task, CallResult | BaseException]] = (
            queue.SimpleQueue()
        )
        self.threads: list[threading.Thread] = []
        self.busy = 0

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()

    def submit(self, task: _Task) -> None:
        self.busy += 1
        if len(self.threads) < min(self.busy, self.size):
            thread = threading.Thread(
                target=self._work, name=f"sprites-apply-{len(self.threads)}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        self.tasks.put(task)

    def finished(self) -> list[tuple[_Task, CallResult | BaseException]]:
        """Wait for at least one call to end; every result that is in."""
        done = [self.results.get()]
        while True:
            try:
                done.append(self.results.get_nowait())
            except queue.Empty:
                break
        self.busy -= len(done)
        return done

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                result: CallResult | BaseException = self.call(task)
            except BaseException as exc:  # noqa: BLE001  (handed to the scheduler)
                result = exc
            self.results.put((task, result))


def start_request(name: str, spec: dict[str, Any]) -> StartRequest:
    options = {k: v for k, v in spec.items() if k not in ("memory", "cpus", "command", "env")}
    return StartRequest(
        name=name,
        memory=int(spec["memory"]),
        cpus=int(spec["cpus"]),
        command=tuple(spec.get("command") or ()),
        env=dict(spec.get("env") or {}),
        options=options,
    )


def _expiries(current: dict[str, Expiry], plan: Plan, now: float) -> dict[str, Expiry]:
    """The ttl expiries to keep: those of this plan's manifest, plus the ones it
    adds. An edited manifest (another digest) or a destroy lifts them all."""
    digest = plan.manifest_digest
    if plan.operation == "destroy" or digest is None:
        return {}
    kept = {name: e for name, e in current.items() if e.manifest_digest == digest}
    for name in plan.expired:
        kept.setdefault(name, Expiry(digest, now))
    return kept


class Executor:
    def __init__(
        self,
        driver: Driver,
        state: ProjectState,
        save: Callable[[ProjectState], None],
        budget: Budget,
        *,
        parallelism: int = DEFAULT_PARALLELISM,
        hooks: Sequence[ApplyHooks] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.state = state
        self.save = save
        self.budget = budget
        self.parallelism = max(1, parallelism)
        self.hooks = list(hooks)
        self.clock = clock

    def run(self, plan: Plan, inventory: Inventory) -> ApplyResult:
        began = time.monotonic()
        result = ApplyResult()
        self._bookkeeping(plan, inventory)
        ledger = _Ledger(inventory, self.state, self.budget)
        # Kills first: they free the room that starts need.
        ready = [_Task(c) for c in plan.changes if c.action.steps[0] == "kill"]
        ready += [_Task(c) for c in plan.changes if c.action.steps[0] != "kill"]
        started_ok: list[str] = []
        settled = False  # records settled in memory since the last save
        finished: list[tuple[_Task, StepOutcome]] = []  # not yet told to the hooks
        ahead: list[_Task] = []  # intents saved, calls not yet made
        with _Workers(self.parallelism, self._call) as pool:
            while ready or pool.busy:
                batch = self._admit(ready, ledger, pool.busy)
                late = [task for task in batch if not task.ahead]
                for task in late:
                    self._write_intent(task)
                if late:
                    # One write journals these intents before their calls,
                    # and with them what the last round settled.
                    self.save(self.state)
                    settled = False
                for task in batch:
                    if task.ahead:
                        ahead.remove(task)
                        self._restamp(task)
                    task.started = time.monotonic()
                    pool.submit(task)
                upcoming = [
                    t for t in ready[: self.parallelism] if not t.ahead and t.step_index == 0
                ]
                for task in upcoming:
                    task.ahead = True
                    task.before = self.state.records.get(task.change.address)
                    self._write_intent(task)
                    ahead.append(task)
                if upcoming:
                    self.save(self.state)
                    settled = False
                # The hooks (output, the event log) hear of the steps that
                # ended once the calls they made room for are on their way:
                # telling them is not what the next start waits for. They
                # still hear of every step's start before its end, and of a
                # replace's kill ending before its start beginning.
                for task, outcome in finished:
                    self._notify(
                        "post_step", task.change, task.step, outcome.error, outcome.elapsed
                    )
                finished.clear()
                for task in batch:
                    self._notify("pre_step", task.change, task.step)
                if not pool.busy:
                    self._starve(ready, result)
                    break
                for task, call in pool.finished():
                    outcome = self._settle(task, call, ledger)
                    result.outcomes.append(outcome)
                    finished.append((task, outcome))
                    if outcome.error is not None:
                        result.failures.append((task.change.address, outcome.error))
                    elif task.step_index + 1 < len(task.change.action.steps):
                        ready.insert(0, _Task(task.change, task.step_index + 1))
                    else:
                        self._count(task.change, result)
                        if task.step == "start":
                            started_ok.append(task.change.address)
                settled = True
        for task, outcome in finished:
            self._notify("post_step", task.change, task.step, outcome.error, outcome.elapsed)
        for task in ahead:  # their calls never came: take the intents back
            settled = True
            name = task.change.address
            if task.before is None:
                self.state.records.pop(name, None)
            else:
                self.state.records[name] = task.before
        if settled:
            self.save(self.state)
        if started_ok:
            self._verify(started_ok, result)
        result.elapsed = time.monotonic() - began
        return result

    def _notify(self, method: str, *args: Any) -> None:
        """Tell the hooks; a failing listener (say, a closed pipe) never stops an apply."""
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:  # noqa: BLE001
                debug(
                    "sprites.executor",
                    "apply hook %s.%s failed",
                    type(hook).__name__,
                    method,
                    exc_info=True,
                )

    def _bookkeeping(self, plan: Plan, inventory: Inventory) -> None:
        """Persist recovered records, forget vanished ones, take adopted ones."""
        from reconciler.planner import recover

        records = recover(self.state.records, inventory)
        for name in plan.forget:
            records.pop(name, None)
        observed = inventory.by_name()
        now = self.clock()
        for name in plan.adopt:
            sprite = observed[name]
            records[name] = OwnedRecord(
                name=name,
                status="running",
                spec=dict(plan.adopt[name]),
                id=sprite.id,
                runtime=sprite.runtime,
                started_at=sprite.started_at or now,
            )
        expired = _expiries(self.state.expired, plan, now)
        if records != self.state.records or expired != self.state.expired:
            self.state.records = records
            self.state.expired = expired
            self.save(self.state)

    def _admit(self, ready: list[_Task], ledger: _Ledger, busy: int) -> list[_Task]:
        batch: list[_Task] = []
        index = 0
        while index < len(ready) and busy + len(batch) < self.parallelism:
            task = ready[index]
            if task.step == "kill":
                batch.append(ready.pop(index))
                continue
            spec = task.change.after or {}
            if ledger.admits(spec):
                ledger.add(task.change.address, spec, +1)
                batch.append(ready.pop(index))
                continue
            index += 1
        return batch

    def _write_intent(self, task: _Task) -> None:
        name = task.change.address
        record = self.state.records.get(name)
        if task.step == "kill":
            if record is not None:
                self.state.records[name] = record.with_(status="killing")
        else:
            restarts = 0
            if record is not None or task.change.before is not None:
                restarts = (record.restarts + 1) if record is not None else 1
            self.state.records[name] = OwnedRecord(
                name=name,
                status="starting",
                spec=dict(task.change.after or {}),
                runtime=str((task.change.after or {}).get("runtime") or self.driver.name),
                started_at=self.clock(),
                restarts=restarts,
            )

    def _restamp(self, task: _Task) -> None:
        """A start whose intent was saved ahead starts now: its record's start
        time (from which a ttl runs) is now, saved when it settles."""
        record = self.state.records.get(task.change.address)
        if task.step == "start" and record is not None:
            self.state.records[record.name] = record.with_(started_at=self.clock())

    def _call(self, task: _Task) -> CallResult:
        name = task.change.address
        if task.step == "kill":
            try:
                return self.driver.kill(name)
            except SpriteNotFoundError:
                # Gone already: the kill's goal holds.
                return CallResult(stdout=f"sprite '{name}' was already gone\n")
        return self.driver.start(start_request(name, dict(task.change.after or {})))

    def _settle(
        self, task: _Task, call: CallResult | BaseException, ledger: _Ledger
    ) -> StepOutcome:
        name = task.change.address
        elapsed = time.monotonic() - task.started
        if isinstance(call, ReconcilerError):
            return self._failed(task, call, elapsed, ledger)
        if isinstance(call, Exception):  # a driver bug must not lose the journal
            error = ReconcilerError(f"Failed to {task.step} Sprite: {type(call).__name__}: {call}")
            return self._failed(task, error, elapsed, ledger)
        if isinstance(call, BaseException):
            raise call
        if task.step == "kill":
            record = self.state.records.pop(name, None)
            if name in ledger.running:
                ledger.add(name, record.spec if record else (task.change.before or {}), -1)
        else:
            record = self.state.records[name]
            self.state.records[name] = record.with_(
                status="running", id=call.id or record.id, last_error=None
            )
        return StepOutcome(task.change, task.step, None, elapsed, call)

    def _failed(
        self, task: _Task, error: ReconcilerError, elapsed: float, ledger: _Ledger
    ) -> StepOutcome:
        from reconciler.errors import RuntimeTimeoutError

        name = task.change.address
        record = self.state.records.get(name)
        if task.step == "kill":
            if record is not None:
                self.state.records[name] = record.with_(
                    status="running", last_error=error.user_message
                )
        elif isinstance(error, RuntimeTimeoutError):
            # It may have started after all: keep the intent so the next apply
            # settles it against what the runtime lists, and keep its place in
            # the budget so no other start is admitted into room it may fill.
            if record is not None:
                self.state.records[name] = record.with_(last_error=error.user_message)
        else:
            # The runtime said no (or the name is someone else's): not ours.
            ledger.add(name, task.change.after or {}, -1)
            self.state.records.pop(name, None)
        return StepOutcome(task.change, task.step, error, elapsed)

    def _starve(self, ready: list[_Task], result: ApplyResult) -> None:
        for task in ready:
            error = ReconcilerError(
                f"not started: the budget has no room for '{task.change.address}' "
                "because an earlier kill failed"
            )
            result.failures.append((task.change.address, error))
            self._notify("post_step", task.change, task.step, error, 0.0)
        ready.clear()

    @staticmethod
    def _count(change: Change, result: ApplyResult) -> None:
        key = (
            "replace" if change.action in (Action.REPLACE, Action.RESTART) else change.action.value
        )
        result.counts[key] += 1

    def _verify(self, names: list[str], result: ApplyResult) -> None:
        """A runtime that says "started" must also list the sprite."""
        try:
            listed = self.driver.list().by_name()
        except ReconcilerError as exc:
            result.failures.append(("*", exc))
            return
        for name in names:
            sprite = listed.get(name)
            if sprite is not None and sprite.is_running:
                continue
            state = "is not listed" if sprite is None else f"is {sprite.state}"
            error = ReconcilerError(
                f"Failed to start Sprite: the runtime reported '{name}' started, but it {state}"
            )
            result.failures.append((name, error))
