"""The executor against an in-memory runtime: budget-safe ordering, bounded
parallelism, the journal written before each runtime call, and failures that
do not stop the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.drivers.base import CallResult, StartRequest
from reconciler.errors import (
    ReconcilerError,
    RuntimeCallError,
    RuntimeTimeoutError,
    SpriteNotFoundError,
)
from reconciler.executor import ApplyHooks, Executor
from reconciler.models.desired import Budget
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.plan import Change, Plan
from reconciler.models.state import OwnedRecord, ProjectState
from tests.unit.builders import GiB, MiB, desired, make_plan, owned, records, want


@dataclass
class Sprite:
    memory: int
    cpus: int
    state: str = "running"


@dataclass
class MemoryRuntime:
    """A thread-safe runtime in a dict. A start counts as running from the
    moment it is called, a kill until it returns: the strictest reading of
    "at any moment"."""

    sprites: dict[str, Sprite] = field(default_factory=dict)
    fail: dict[tuple[str, str], ReconcilerError] = field(default_factory=dict)
    #: Sprites whose start succeeds but which the next list does not show.
    phantom: set[str] = field(default_factory=set)
    delay: float = 0.0
    on_call: Callable[[str, str], None] | None = None
    name: str = "memory"
    calls: list[tuple[str, str]] = field(default_factory=list)
    peak: dict[str, int] = field(
        default_factory=lambda: {"running": 0, "memory": 0, "cpus": 0, "inflight": 0}
    )
    _inflight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _measure(self) -> None:
        running = [s for s in self.sprites.values() if s.state == "running"]
        for key, value in (
            ("running", len(running)),
            ("memory", sum(s.memory for s in running)),
            ("cpus", sum(s.cpus for s in running)),
            ("inflight", self._inflight),
        ):
            self.peak[key] = max(self.peak[key], value)

    def _enter(self, op: str, name: str) -> None:
        if self.on_call is not None:
            self.on_call(op, name)
        with self._lock:
            self.calls.append((op, name))
            self._inflight += 1
            self._measure()

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1

    def list(self) -> Inventory:
        with self._lock:
            return Inventory(
                sprites=tuple(
                    ObservedSprite(id=f"id-{n}", name=n, state=s.state, runtime=self.name)
                    for n, s in self.sprites.items()
                    if n not in self.phantom
                )
            )

    def start(self, request: StartRequest) -> CallResult:
        self._enter("start", request.name)
        try:
            error = self.fail.get(("start", request.name))
            if error is not None:
                raise error
            with self._lock:
                if request.name in self.sprites:
                    raise RuntimeCallError("start", f"sprite '{request.name}' already exists")
                self.sprites[request.name] = Sprite(request.memory, request.cpus)
                self._measure()
            time.sleep(self.delay)
            return CallResult(stdout=f"started {request.name}\n", id=f"id-{request.name}")
        finally:
            self._leave()

    def kill(self, name: str) -> CallResult:
        self._enter("kill", name)
        try:
            time.sleep(self.delay)
            error = self.fail.get(("kill", name))
            if error is not None:
                raise error
            with self._lock:
                if self.sprites.pop(name, None) is None:
                    raise SpriteNotFoundError("kill", f"sprite '{name}' not found")
            return CallResult(stdout=f"killed {name}\n")
        finally:
            self._leave()

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        raise NotImplementedError

    def logs(self, name: str | None) -> CallResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class Journal:
    """Every saved state, as a copy."""

    saves: list[dict[str, OwnedRecord]] = field(default_factory=list)

    def save(self, state: ProjectState) -> None:
        self.saves.append(dict(state.records))

    @property
    def last(self) -> dict[str, OwnedRecord]:
        return self.saves[-1] if self.saves else {}


def execute(
    runtime: MemoryRuntime,
    plan: Plan,
    recs: dict[str, OwnedRecord],
    budget: Budget,
    *,
    parallelism: int = 10,
    hooks: list[ApplyHooks] | None = None,
) -> tuple[Any, ProjectState, Journal]:
    state = ProjectState(project="demo", records=dict(recs))
    journal = Journal()
    executor = Executor(
        runtime, state, journal.save, budget, parallelism=parallelism, hooks=hooks or []
    )
    result = executor.run(plan, runtime.list())
    return result, state, journal


def running(runtime: MemoryRuntime, names: list[str], memory: int = 512 * MiB) -> None:
    for name in names:
        runtime.sprites[name] = Sprite(memory, 1)


def test_all_new_sprites_start_and_are_recorded_as_running() -> None:
    runtime = MemoryRuntime()
    budget = Budget(host_max_vms=5)
    plan = make_plan(desired(want("a"), want("b", memory=GiB, cpus=2)), runtime.list(), {}, budget)
    result, state, _ = execute(runtime, plan, {}, budget)
    assert result.ok, result.failures
    assert result.counts == {"start": 2, "replace": 0, "kill": 0}
    assert set(runtime.sprites) == {"a", "b"}
    assert {n: (r.status, r.spec, r.id) for n, r in state.records.items()} == {
        "a": ("running", {"memory": 512 * MiB, "cpus": 1}, "id-a"),
        "b": ("running", {"memory": GiB, "cpus": 2}, "id-b"),
    }


def test_replacing_everything_at_the_host_limit_never_exceeds_it() -> None:
    names = [f"w-{i}" for i in range(1, 6)]
    runtime = MemoryRuntime(delay=0.005)
    running(runtime, names)
    recs = records(*(owned(n) for n in names))
    budget = Budget(host_max_vms=5, memory=5 * GiB)
    plan = make_plan(desired(*(want(n, memory=GiB) for n in names)), runtime.list(), recs, budget)
    result, state, _ = execute(runtime, plan, recs, budget, parallelism=10)
    assert result.ok, result.failures
    assert result.counts["replace"] == 5
    assert runtime.peak["running"] <= 5
    assert runtime.peak["memory"] <= 5 * GiB
    assert all(s.memory == GiB for s in runtime.sprites.values())
    assert all(r.status == "running" and r.spec["memory"] == GiB for r in state.records.values())


def test_kills_free_room_before_starts_need_it() -> None:
    runtime = MemoryRuntime(delay=0.005)
    running(runtime, ["old-1", "old-2", "theirs"])
    recs = records(owned("old-1"), owned("old-2"))
    budget = Budget(host_max_vms=3)
    plan = make_plan(desired(want("new-1"), want("new-2")), runtime.list(), recs, budget)
    result, _, _ = execute(runtime, plan, recs, budget)
    assert result.ok, result.failures
    assert runtime.peak["running"] <= 3
    assert set(runtime.sprites) == {"new-1", "new-2", "theirs"}


def test_project_cpu_limit_holds_during_a_replace() -> None:
    names = ["a", "b", "c", "d"]
    runtime = MemoryRuntime(delay=0.005)
    for n in names:
        runtime.sprites[n] = Sprite(512 * MiB, 2)
    recs = records(*(owned(n, cpus=2) for n in names))
    budget = Budget(cpus=8)
    plan = make_plan(desired(*(want(n, cpus=1) for n in names)), runtime.list(), recs, budget)
    result, _, _ = execute(runtime, plan, recs, budget)
    assert result.ok
    assert runtime.peak["cpus"] <= 8


def test_parallelism_bounds_the_calls_in_flight() -> None:
    runtime = MemoryRuntime(delay=0.01)
    names = [f"s-{i}" for i in range(12)]
    plan = make_plan(desired(*(want(n) for n in names)), runtime.list(), {}, Budget())
    result, _, _ = execute(runtime, plan, {}, Budget(), parallelism=3)
    assert result.ok
    assert len(runtime.sprites) == 12
    assert 1 <= runtime.peak["inflight"] <= 3


def test_the_intent_is_saved_before_each_runtime_call() -> None:
    journal_seen: list[tuple[str, str, str | None]] = []
    runtime = MemoryRuntime()
    running(runtime, ["old"])
    recs = records(owned("old"))
    plan = make_plan(desired(want("new")), runtime.list(), recs, Budget())
    state = ProjectState(project="demo", records=dict(recs))
    journal = Journal()

    def check(op: str, name: str) -> None:
        record = journal.last.get(name)
        journal_seen.append((op, name, record.status if record else None))

    runtime.on_call = check
    result = Executor(runtime, state, journal.save, Budget()).run(plan, runtime.list())
    assert result.ok
    assert sorted(journal_seen) == [("kill", "old", "killing"), ("start", "new", "starting")]
    assert set(journal.last) == {"new"}
    assert journal.last["new"].status == "running"


def test_the_next_rounds_intents_are_saved_while_the_calls_run() -> None:
    """A slot that frees starts its next call without waiting for a write:
    while the first round's calls run, the second round's intents are saved."""
    runtime = MemoryRuntime()
    journal = Journal()
    names = ["a", "b", "c", "d"]
    plan = make_plan(desired(*(want(n) for n in names)), runtime.list(), {}, Budget())
    seen_during_first: dict[str, str | None] = {}

    def wait_for_the_next_round(op: str, name: str) -> None:
        if name not in ("a", "b"):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last = journal.last
            if "c" in last and "d" in last:
                break
            time.sleep(0.005)
        seen_during_first[name] = journal.last.get("c", None) and journal.last["c"].status

    runtime.on_call = wait_for_the_next_round
    state = ProjectState(project="demo")
    result = Executor(runtime, state, journal.save, Budget(), parallelism=2).run(
        plan, runtime.list()
    )
    assert result.ok
    assert seen_during_first == {"a": "starting", "b": "starting"}
    assert {n: r.status for n, r in state.records.items()} == dict.fromkeys(names, "running")
    assert journal.last == state.records


def test_a_start_saved_ahead_is_stamped_when_its_call_is_made() -> None:
    """The ttl of a sprite runs from its start call, not from when its
    intent was saved ahead of it."""
    runtime = MemoryRuntime()
    ticks = iter(range(1000, 2000))
    stamps: dict[str, float] = {}
    journal = Journal()
    state = ProjectState(project="demo")
    plan = make_plan(desired(want("a"), want("b")), runtime.list(), {}, Budget())

    def note(op: str, name: str) -> None:
        stamps[name] = now

    def clock() -> float:
        nonlocal now
        now = float(next(ticks))
        return now

    now = 0.0
    runtime.on_call = note
    Executor(runtime, state, journal.save, Budget(), parallelism=1, clock=clock).run(
        plan, runtime.list()
    )
    saved_ahead = [s["b"].started_at for s in journal.saves if "b" in s][0]
    assert state.records["b"].started_at is not None
    assert state.records["b"].started_at > saved_ahead
    assert state.records["b"].started_at <= stamps["b"]


def test_a_failed_start_does_not_stop_the_others_and_is_not_recorded() -> None:
    runtime = MemoryRuntime(fail={("start", "b"): RuntimeCallError("start", "insufficient memory")})
    plan = make_plan(desired(want("a"), want("b"), want("c")), runtime.list(), {}, Budget())
    result, state, _ = execute(runtime, plan, {}, Budget(), parallelism=1)
    assert not result.ok
    assert [(n, e.user_message) for n, e in result.failures] == [
        ("b", "Failed to start Sprite: insufficient memory")
    ]
    assert set(runtime.sprites) == {"a", "c"}
    assert set(state.records) == {"a", "c"}
    assert result.counts["start"] == 2


def test_a_timed_out_start_keeps_its_intent_for_the_next_apply() -> None:
    runtime = MemoryRuntime(fail={("start", "slow"): RuntimeTimeoutError("start", 300)})
    plan = make_plan(desired(want("slow")), runtime.list(), {}, Budget())
    result, state, _ = execute(runtime, plan, {}, Budget())
    assert [e.user_message for _, e in result.failures] == [
        "Failed to start Sprite: Command timed out after 300 seconds"
    ]
    record = state.records["slow"]
    assert record.status == "starting"
    assert record.last_error == "Failed to start Sprite: Command timed out after 300 seconds"


def test_a_failed_kill_of_a_replace_does_not_start_the_new_one() -> None:
    runtime = MemoryRuntime(fail={("kill", "a"): RuntimeCallError("kill", "permission denied")})
    running(runtime, ["a"])
    recs = records(owned("a"))
    plan = make_plan(desired(want("a", cpus=2)), runtime.list(), recs, Budget())
    result, state, _ = execute(runtime, plan, recs, Budget())
    assert [(n, e.user_message) for n, e in result.failures] == [
        ("a", "Failed to kill Sprite: permission denied")
    ]
    assert runtime.calls == [("kill", "a")]
    assert state.records["a"].status == "running"
    assert state.records["a"].spec == {"memory": 512 * MiB, "cpus": 1}
    assert state.records["a"].last_error == "Failed to kill Sprite: permission denied"


def test_a_kill_of_a_sprite_already_gone_counts_as_done() -> None:
    runtime = MemoryRuntime()
    running(runtime, ["old"])
    recs = records(owned("old"))
    plan = make_plan(desired(), runtime.list(), recs, Budget())
    runtime.sprites.clear()
    result, state, _ = execute(runtime, plan, recs, Budget())
    assert result.ok
    assert state.records == {}


def test_starts_that_a_failed_kill_leaves_no_room_for_are_reported() -> None:
    runtime = MemoryRuntime(fail={("kill", "old"): RuntimeCallError("kill", "permission denied")})
    running(runtime, ["old"])
    recs = records(owned("old"))
    budget = Budget(host_max_vms=1)
    plan = make_plan(desired(want("new")), runtime.list(), recs, budget)
    result, state, journal = execute(runtime, plan, recs, budget)
    messages = dict((n, e.user_message) for n, e in result.failures)
    assert messages["old"] == "Failed to kill Sprite: permission denied"
    assert "no room for 'new'" in messages["new"]
    assert runtime.peak["running"] <= 1
    assert ("start", "new") not in runtime.calls
    # Its intent, saved ahead of a call that never came, was taken back.
    assert set(state.records) == {"old"} and state.records["old"].status == "running"
    assert journal.last == state.records


def test_a_start_the_runtime_does_not_list_afterwards_is_a_failure() -> None:
    runtime = MemoryRuntime(phantom={"ghost"})
    plan = make_plan(desired(want("ghost"), want("real")), runtime.list(), {}, Budget())
    result, _, _ = execute(runtime, plan, {}, Budget())
    assert [(n, e.user_message) for n, e in result.failures] == [
        (
            "ghost",
            "Failed to start Sprite: the runtime reported 'ghost' started, but it is not listed",
        )
    ]


def test_adopted_and_forgotten_records_are_bookkept_without_runtime_calls() -> None:
    runtime = MemoryRuntime()
    running(runtime, ["theirs"])
    recs = records(owned("gone"))
    plan = make_plan(desired(want("theirs", cpus=2)), runtime.list(), recs, Budget(), adopt=True)
    assert plan.adopt and plan.forget == ("gone",)
    result, state, journal = execute(runtime, plan, recs, Budget())
    assert result.ok and runtime.calls == []
    assert set(state.records) == {"theirs"}
    assert state.records["theirs"].spec == {"memory": 512 * MiB, "cpus": 2}
    assert journal.saves


class Recorder(ApplyHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, bool]] = []
        self.lock = threading.Lock()

    def pre_step(self, change: Change, step: str) -> None:
        with self.lock:
            self.events.append(("pre", change.address, step, True))

    def post_step(
        self, change: Change, step: str, error: ReconcilerError | None, elapsed: float
    ) -> None:
        assert elapsed >= 0
        with self.lock:
            self.events.append(("post", change.address, step, error is None))


class Broken(ApplyHooks):
    def pre_step(self, change: Change, step: str) -> None:
        raise BrokenPipeError("closed")


def test_hooks_hear_every_step_and_a_broken_hook_stops_nothing() -> None:
    runtime = MemoryRuntime(fail={("start", "bad"): RuntimeCallError("start", "nope")})
    running(runtime, ["r"])
    recs = records(owned("r"))
    plan = make_plan(desired(want("r", cpus=2), want("bad")), runtime.list(), recs, Budget())
    recorder = Recorder()
    result, _, _ = execute(runtime, plan, recs, Budget(), hooks=[Broken(), recorder])
    assert sorted(recorder.events) == [
        ("post", "bad", "start", False),
        ("post", "r", "kill", True),
        ("post", "r", "start", True),
        ("pre", "bad", "start", True),
        ("pre", "r", "kill", True),
        ("pre", "r", "start", True),
    ]
    # Each step's post follows its pre.
    order = [(kind, name, step) for kind, name, step, _ in recorder.events]
    for name, step in [("r", "kill"), ("r", "start"), ("bad", "start")]:
        assert order.index(("pre", name, step)) < order.index(("post", name, step))
    assert order.index(("post", "r", "kill")) < order.index(("pre", "r", "start"))
    assert [n for n, _ in result.failures] == ["bad"]
