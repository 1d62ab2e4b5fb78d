"""The watch loop against the fake wisp: drift repair, edits, invalid edits,
conflicts, backoff, stopping. Passes are driven in-process on a fake clock."""

from __future__ import annotations

import pytest

from reconciler.errors import ManifestError
from tests.loop.conftest import START, Rig, manifest


def test_first_pass_starts_everything_then_nothing_changes(rig: Rig) -> None:
    rig.write(manifest("a: {}", "w: {replicas: 2}"))
    watcher = rig.watcher()
    watcher.load()

    first = watcher.run_pass()
    second = watcher.run_pass()

    assert first.ok and second.ok
    assert rig.running() == {"a", "w-1", "w-2"}
    assert sorted(rig.starts()) == ["a", "w-1", "w-2"]  # nothing started twice
    assert second.plan is not None and not second.plan.has_changes
    assert [e["outcome"] for e in rig.events("pass")] == ["ok", "in_sync"]


def test_a_sprite_killed_out_of_band_is_restarted_on_the_next_pass(rig: Rig) -> None:
    rig.write(manifest("a: {}", "b: {}"))
    watcher = rig.watcher()
    watcher.load()
    watcher.run_pass()
    watcher.run_pass()

    rig.fake.remove_sprite("a")  # died behind wisp's back
    rig.fake.set_state("b", "stopped")  # crashed, still listed
    result = watcher.run_pass()

    assert result.ok
    assert rig.running() == {"a", "b"}
    records = rig.records()["sprites"]
    assert records["a"]["restarts"] == 1 and records["b"]["restarts"] == 1
    drift = {e["sprite"]: e for e in rig.events("drift")}
    assert drift["a"]["reason"] == "missing" and drift["a"]["action"] == "start"
    assert drift["b"]["reason"] == "not_running" and drift["b"]["action"] == "restart"
    results = rig.events("result", outcome="ok")
    assert {(e["sprite"], e["step"]) for e in results} >= {("a", "start"), ("b", "start")}


def test_run_restarts_a_killed_sprite_within_one_interval(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher(interval=30.0)
    killed_at: list[float] = []

    def during_sleep(clock: object) -> bool:
        if not killed_at and rig.running() == {"a"} and watcher.passes == 2:
            rig.fake.remove_sprite("a")
            killed_at.append(rig.clock.mono)
        return watcher.passes >= 3

    rig.clock.on_wait = during_sleep
    assert watcher.run() == 0

    restart = [e for e in rig.events("result", sprite="a") if e["reason"] == "missing"]
    assert killed_at and len(restart) == 1 and restart[0]["outcome"] == "ok"
    assert restart[0]["ts"] - (killed_at[0] - rig.clock.mono + rig.clock.wall) <= 30.0
    assert rig.running() == {"a"}


def test_an_edit_is_applied_on_the_next_pass(rig: Rig) -> None:
    rig.write(manifest("a: {}", "b: {}", "c: {}"))
    watcher = rig.watcher()
    watcher.load()
    watcher.run_pass()

    rig.write(manifest("a: {memory: 1GiB}", "b: {}", "d: {}"))
    result = watcher.run_pass()

    assert result.ok and result.result is not None
    assert result.result.counts == {"start": 1, "replace": 1, "kill": 1}
    assert rig.running() == {"a", "b", "d"}
    memory = {s["name"]: s["memory"] for s in rig.fake.inventory()}
    assert memory["a"] == 1 << 30
    assert rig.starts("b") == ["b"]  # untouched
    loads = rig.events("manifest", outcome="ok")
    assert len(loads) == 1 and loads[0]["detail"]["sprites"] == 3


def test_an_invalid_edit_is_reported_once_and_the_old_manifest_kept(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher()
    watcher.load()
    watcher.run_pass()

    rig.write(manifest("a: {memory: lots}"))
    watcher.run_pass()
    rig.fake.remove_sprite("a")
    watcher.run_pass()  # the old manifest still repairs drift
    watcher.run_pass()

    invalid = rig.events("manifest", outcome="invalid")
    assert len(invalid) == 1
    assert "sprites.yaml:4:" in invalid[0]["error"] and "invalid size 'lots'" in invalid[0]["error"]
    assert rig.running() == {"a"}
    assert {s["memory"] for s in rig.fake.inventory()} == {512 << 20}

    rig.write(manifest("a: {}", "b: {}"))
    watcher.run_pass()
    assert rig.running() == {"a", "b"}
    assert len(rig.events("manifest", outcome="ok")) == 1


def test_a_deleted_manifest_keeps_the_last_one(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher()
    watcher.load()
    watcher.run_pass()
    rig.manifest.unlink()
    rig.fake.remove_sprite("a")

    assert watcher.run_pass().ok
    assert rig.running() == {"a"}
    [invalid] = rig.events("manifest", outcome="invalid")
    assert "manifest not found" in invalid["error"]


def test_an_edit_that_renames_the_project_is_refused(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher()
    watcher.load()
    watcher.run_pass()

    rig.write(manifest("a: {}", project="other"))
    watcher.run_pass()

    [invalid] = rig.events("manifest", outcome="invalid")
    assert "project changed from 'demo' to 'other'" in invalid["error"]
    assert rig.records("other") == {}
    assert rig.running() == {"a"}


def test_a_sprite_started_out_of_band_is_reported_once_not_adopted(rig: Rig) -> None:
    rig.write(manifest("a: {}", "b: {}"))
    rig.fake.add_sprite("b")
    watcher = rig.watcher()
    watcher.load()

    first = watcher.run_pass()
    second = watcher.run_pass()

    assert not first.ok and first.conflicts == ("b",)
    assert second.conflicts == ("b",)
    assert rig.running() == {"a", "b"}
    assert "b" not in rig.records()["sprites"]  # still not ours
    [conflict] = rig.events("drift", action="conflict")
    assert conflict["sprite"] == "b"
    assert "not owned by project 'demo'" in conflict["error"]
    assert "--adopt" in conflict["message"]

    # Once the squatter is gone, the name is ours to start.
    rig.fake.remove_sprite("b")
    assert watcher.run_pass().ok
    assert "b" in rig.records()["sprites"]


def test_adopt_takes_over_a_sprite_started_out_of_band(rig: Rig) -> None:
    rig.write(manifest("b: {}"))
    rig.fake.add_sprite("b")
    watcher = rig.watcher(adopt=True)
    watcher.load()

    assert watcher.run_pass().ok
    assert rig.records()["sprites"]["b"]["status"] == "running"
    assert rig.starts() == []  # adopted, not restarted
    assert rig.events("drift", action="conflict") == []


def test_a_failing_start_backs_off_exponentially_with_a_cap(rig: Rig) -> None:
    rig.write(manifest("a: {}", "b: {}"))
    rig.fake.script(fail={"start": {"b": "insufficient memory"}})
    watcher = rig.watcher(interval=10.0, max_backoff=60.0)

    rig.clock.on_wait = lambda clock: clock.waited >= 400
    assert watcher.run() == 0

    attempts = [e["ts"] for e in rig.events("result", sprite="b", outcome="failed")]
    gaps = [
        round(later - earlier, 3) for earlier, later in zip(attempts, attempts[1:], strict=False)
    ]
    assert gaps[:5] == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert all(gap == 60.0 for gap in gaps[3:])
    backoffs = rig.events("backoff", sprite="b")
    assert [e["detail"]["retry_in"] for e in backoffs[:4]] == [10.0, 20.0, 40.0, 60.0]
    assert "insufficient memory" in backoffs[0]["error"]
    # The healthy sprite was started once and left alone.
    assert rig.starts("a") == ["a"] and "a" in rig.running()


def test_backoff_jitter_shortens_the_wait_by_up_to_half(rig: Rig) -> None:
    rig.write(manifest("b: {}"))
    rig.fake.script(fail={"start": "insufficient memory"})
    watcher = rig.watcher(interval=10.0, random=lambda: 0.0)
    watcher.load()
    watcher.run_pass()
    rig.clock.advance(5.0)
    watcher.run_pass()  # second failure
    [first, second] = rig.events("backoff", sprite="b")
    assert first["detail"]["retry_in"] == 5.0 and second["detail"]["retry_in"] == 10.0


def test_a_recovered_sprite_is_forgiven(rig: Rig) -> None:
    rig.write(manifest("b: {}"))
    rig.fake.script(fail={"start": {"b": {"reason": "insufficient memory", "times": 2}}})
    watcher = rig.watcher(interval=10.0)
    watcher.load()
    for _ in range(6):
        watcher.run_pass()
        rig.clock.advance(40.0)
    assert rig.running() == {"b"}
    assert watcher.backoff.failures == {}


def test_a_crash_looping_sprite_backs_off_from_its_second_crash(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher(interval=10.0)
    watcher.load()
    watcher.run_pass()

    rig.fake.remove_sprite("a")
    watcher.run_pass()  # first crash: restarted at once
    assert rig.running() == {"a"}
    rig.fake.remove_sprite("a")
    held = watcher.run_pass()  # second crash in a row: wait
    assert held.deferred == ("a",) and rig.running() == set()
    [backoff] = rig.events("backoff", sprite="a")
    assert backoff["detail"]["retry_in"] == 20.0

    rig.clock.advance(20.0)
    watcher.run_pass()
    assert rig.running() == {"a"}


def test_a_budget_error_is_reported_once_and_lifts_when_the_manifest_changes(rig: Rig) -> None:
    rig.write("version: 1\nproject: demo\nlimits: {maxVMs: 1}\nsprites:\n  a: {}\n  b: {}\n")
    watcher = rig.watcher()
    watcher.load()

    first = watcher.run_pass()
    second = watcher.run_pass()

    assert not first.ok and not second.ok
    assert rig.running() == set()
    [error] = rig.events("error")
    assert error["outcome"] == "blocked" and error["detail"]["terminal"] is True
    assert error["detail"]["retry_in"] == 10.0  # re-checked only with backoff
    assert "maxVMs exceeded: 2 sprites desired, limit 1" in error["error"]
    assert watcher.backoff.failures == {"*": 2}

    rig.write(manifest("a: {}", "b: {}"))
    assert watcher.run_pass().ok
    assert rig.running() == {"a", "b"}


def test_a_runtime_outage_backs_off_the_whole_pass(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    rig.fake.script(list="garbage")
    watcher = rig.watcher(interval=10.0)
    watcher.load()

    result = watcher.run_pass()

    assert not result.ok and result.error is not None
    [error] = rig.events("error")
    assert error["outcome"] == "failed" and error["detail"]["retry_in"] == 10.0
    assert rig.events("observe", outcome="failed")
    rig.fake.script()
    assert watcher.run_pass().ok
    assert watcher.backoff.failures == {}


def test_once_exits_1_when_the_pass_failed(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    rig.fake.script(fail={"start": "insufficient memory"})
    assert rig.watcher().run(once=True) == 1
    rig.fake.script()
    assert rig.watcher().run(once=True) == 0
    assert rig.running() == {"a"}
    assert rig.events("watch") == []  # one pass, no loop


def test_an_invalid_manifest_at_start_is_an_error(rig: Rig) -> None:
    rig.write("version: 1\nproject: demo\nsprites:\n  a: {memroy: 1GiB}\n")
    with pytest.raises(ManifestError, match=r"sprites.yaml:4:7: sprites.a.memroy: unknown field"):
        rig.watcher().run()
    (rig.root / "sprites.yaml").unlink()
    with pytest.raises(ManifestError, match="manifest not found"):
        rig.watcher().run(once=True)


def test_stop_ends_the_loop_after_the_pass_and_leaves_sprites_running(rig: Rig) -> None:
    rig.write(manifest("a: {}", "b: {}"))
    watcher = rig.watcher()
    rig.clock.on_wait = lambda clock: (watcher.stop(), False)[1]

    assert watcher.run() == 0

    assert watcher.passes == 1
    assert rig.running() == {"a", "b"}
    started, stopped = rig.events("watch")
    assert started["outcome"] == "started" and stopped["outcome"] == "stopped"
    assert "sprites keep running" in stopped["message"]


def test_a_manifest_change_wakes_the_loop_before_the_interval(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher(interval=3600.0, poll=0.5)

    def during_sleep(clock: object) -> bool:
        if watcher.passes == 1 and rig.clock.waited == 5.0:
            rig.write(manifest("a: {}", "b: {}"))
        return watcher.passes >= 2

    rig.clock.on_wait = during_sleep
    assert watcher.run() == 0

    assert rig.running() == {"a", "b"}
    # Seen on the next poll, acted on once it held still for one more.
    assert rig.clock.waited <= 6.5


def test_touching_the_manifest_without_changing_it_does_not_wake_the_loop(rig: Rig) -> None:
    rig.write(manifest("a: {}"))
    watcher = rig.watcher(interval=60.0, poll=0.5)

    def during_sleep(clock: object) -> bool:
        if rig.clock.waited == 5.0:
            rig.write(manifest("a: {}"))  # same bytes, new inode and mtime
        return watcher.passes >= 2

    rig.clock.on_wait = during_sleep
    watcher.run()
    first, second = (e["ts"] for e in rig.events("pass"))
    assert second - first == 60.0


def test_a_refused_plan_is_rechecked_with_backoff_and_at_once_after_an_edit(rig: Rig) -> None:
    rig.write("version: 1\nproject: demo\nlimits: {maxVMs: 1}\nsprites:\n  a: {}\n  b: {}\n")
    watcher = rig.watcher(interval=10.0, poll=0.5)

    def during_sleep(clock: object) -> bool:
        if rig.clock.waited == 100.0:
            rig.write(manifest("a: {}", "b: {}"))
        return rig.running() == {"a", "b"}

    rig.clock.on_wait = during_sleep
    assert watcher.run() == 0

    planned = [e["ts"] - START for e in rig.events("plan")]
    assert planned == [0.0, 10.0, 30.0, 70.0, 100.5]  # the edit held still for one poll
    assert len(rig.events("error")) == 1


def test_errors_retrying_cannot_fix_are_terminal() -> None:
    from reconciler import errors

    terminal = [
        errors.BudgetExceededError("maxVMs", "6 sprites", "5"),
        errors.OwnershipError("taken"),
        errors.ManifestError(errors.Position("m.yaml", 1, 1), "bad"),
        errors.UsageError("bad spec"),
    ]
    transient = [
        errors.RuntimeCallError("start", "insufficient memory"),
        errors.RuntimeTimeoutError("start", 300),
        errors.LockError("busy"),
        errors.ReconcilerError("unknown"),
        ValueError("not ours"),
    ]
    assert all(errors.is_terminal(e) for e in terminal)
    assert not any(errors.is_terminal(e) for e in transient)


def test_a_sprite_failing_terminally_is_held_until_the_manifest_changes(rig: Rig) -> None:
    from reconciler.errors import UsageError

    rig.write(manifest("a: {}", "b: {}"))
    real = rig.engine.driver
    attempts: list[str] = []

    class Refusing:
        name = real.name

        def __getattr__(self, attr: str) -> object:
            return getattr(real, attr)

        def start(self, request: object) -> object:
            attempts.append(request.name)  # type: ignore[attr-defined]
            if request.name == "a":  # type: ignore[attr-defined]
                raise UsageError("the runtime rejects this spec")
            return real.start(request)  # type: ignore[arg-type]

    rig.engine._driver = Refusing()  # type: ignore[assignment]
    watcher = rig.watcher(interval=10.0)
    watcher.load()
    for _ in range(4):
        watcher.run_pass()
        rig.clock.advance(1000.0)

    assert attempts.count("a") == 1 and rig.running() == {"b"}
    [blocked] = rig.events("backoff", sprite="a")
    assert blocked["outcome"] == "blocked" and "rejects this spec" in blocked["error"]

    rig.write(manifest("a: {cpus: 2}", "b: {}"))
    watcher.run_pass()
    assert attempts.count("a") == 2
