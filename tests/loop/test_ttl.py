"""ttl: a sprite that has run its time is killed, plan shows it expired, and
it stays down until the manifest changes. The planner part is tested by
value; the rest through the watch loop and plain apply on a fake clock."""

from __future__ import annotations

from reconciler import planner
from reconciler.models.desired import Budget, DesiredSprite, desired_sprites
from reconciler.models.manifest import Manifest
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.plan import Action, Reason
from reconciler.models.state import Expiry, OwnedRecord, ProjectState
from reconciler.views.plan import plan_lines
from tests.loop.conftest import START, Rig, manifest

MiB = 1 << 20
HOUR = 3600.0


def desired(ttl: float | None = None) -> dict[str, DesiredSprite]:
    return {"a": DesiredSprite.make("a", 512 * MiB, 1, ttl=ttl)}


def running(*names: str) -> Inventory:
    return Inventory(sprites=tuple(ObservedSprite(id=n, name=n, state="running") for n in names))


def record(started_at: float = START) -> dict[str, OwnedRecord]:
    spec = {"memory": 512 * MiB, "cpus": 1}
    return {"a": OwnedRecord("a", "running", spec, id="a", started_at=started_at)}


def make_plan(now: float | None, **kwargs: object) -> object:
    options = {"project": "demo", "manifest_digest": "d1", "now": now, **kwargs}
    return planner.plan(desired(HOUR), running("a"), record(), Budget(), **options)  # type: ignore[arg-type]


def test_ttl_is_metadata_not_part_of_the_spec() -> None:
    with_ttl = Manifest.model_validate(
        {"version": 1, "project": "demo", "sprites": {"a": {"ttl": "30m"}}}
    )
    without = Manifest.model_validate({"version": 1, "project": "demo", "sprites": {"a": {}}})
    a = desired_sprites(with_ttl.spec(), default_memory=512 * MiB, default_cpus=1)["a"]
    b = desired_sprites(without.spec(), default_memory=512 * MiB, default_cpus=1)["a"]
    assert a.ttl == 1800.0 and b.ttl is None
    assert a.spec == b.spec == {"memory": 512 * MiB, "cpus": 1}
    # Adding a ttl to a running sprite does not replace it.
    plan = planner.plan(desired(HOUR), running("a"), record(), Budget(), project="demo")
    assert plan.changes == ()


def test_a_sprite_past_its_ttl_is_killed_as_expired() -> None:
    before = make_plan(START + HOUR - 1)
    after = make_plan(START + HOUR)
    assert before.changes == () and before.expired == ()  # type: ignore[attr-defined]
    [change] = after.changes  # type: ignore[attr-defined]
    assert (change.action, change.reason) == (Action.KILL, Reason.EXPIRED)
    assert after.expired == ("a",)  # type: ignore[attr-defined]
    assert "(ttl expired)" in "\n".join(plan_lines(after))  # type: ignore[arg-type]


def test_without_now_nothing_expires() -> None:
    assert make_plan(None).changes == ()  # type: ignore[attr-defined]


def test_an_expired_sprite_stays_down_under_the_same_manifest_only() -> None:
    held = {"a": Expiry("d1", START + HOUR)}
    same = planner.plan(
        desired(HOUR),
        Inventory(),
        {},
        Budget(max_vms=1),
        project="demo",
        manifest_digest="d1",
        now=START + 2 * HOUR,
        expired=held,
    )
    assert same.changes == () and same.expired == ("a",)
    text = "\n".join(plan_lines(same))
    assert "! expired a: ttl ran out; not started again until the manifest changes" in text
    assert "No changes." in text
    edited = planner.plan(
        desired(HOUR),
        Inventory(),
        {},
        Budget(),
        project="demo",
        manifest_digest="d2",
        now=START + 2 * HOUR,
        expired=held,
    )
    assert [(c.address, c.action) for c in edited.changes] == [("a", Action.START)]


def test_a_held_name_is_no_conflict_and_costs_no_budget() -> None:
    held = {"a": Expiry("d1", START)}
    squatter = running("a")  # someone else's sprite under the expired name
    plan = planner.plan(
        desired(HOUR),
        squatter,
        {},
        Budget(host_max_vms=1),
        project="demo",
        manifest_digest="d1",
        now=START,
        expired=held,
    )
    assert plan.changes == () and plan.budget is not None and plan.budget.sprites == 0


def test_an_aged_record_whose_sprite_is_gone_is_forgotten_not_restarted() -> None:
    plan = planner.plan(
        desired(HOUR),
        Inventory(),
        record(),
        Budget(),
        project="demo",
        manifest_digest="d1",
        now=START + 2 * HOUR,
    )
    assert plan.changes == () and plan.forget == ("a",) and plan.expired == ("a",)


def test_expiries_survive_a_state_round_trip() -> None:
    state = ProjectState("demo", expired={"a": Expiry("d1", 12.5)})
    assert ProjectState.from_json(state.to_json()).expired == state.expired
    assert "expired" not in ProjectState("demo").to_json()  # old readers see nothing new


def test_the_loop_kills_an_expired_sprite_and_restarts_it_after_an_edit(rig: Rig) -> None:
    rig.write(manifest("short: {ttl: 30m}", "long: {}"))
    watcher = rig.watcher(interval=60.0)
    watcher.load()
    watcher.run_pass()
    rig.clock.advance(29 * 60)
    watcher.run_pass()
    assert rig.running() == {"short", "long"}

    rig.clock.advance(60)
    watcher.run_pass()
    assert rig.running() == {"long"}
    [kill] = rig.events("result", sprite="short", step="kill")
    assert kill["reason"] == "expired" and kill["outcome"] == "ok"
    assert set(rig.records()["expired"]) == {"short"}

    for _ in range(3):  # not restarted, not even after it "died"
        rig.clock.advance(HOUR)
        assert watcher.run_pass().ok
    assert rig.running() == {"long"}
    plan = rig.engine.plan(rig.manifest)
    assert plan.expired == ("short",) and not plan.has_changes

    rig.write(manifest("short: {ttl: 1h}", "long: {}"))
    watcher.run_pass()
    assert rig.running() == {"short", "long"}
    assert rig.starts("long") == ["long"]  # the edit did not touch it
    assert "expired" not in rig.records()


def test_plain_apply_kills_expired_sprites_too(rig: Rig) -> None:
    rig.write(manifest("a: {ttl: 10m}"))
    rig.engine.apply(rig.manifest, approve=lambda plan: True)
    rig.clock.advance(601)

    plan = rig.engine.plan(rig.manifest)
    assert [(c.address, c.reason) for c in plan.changes] == [("a", Reason.EXPIRED)]
    outcome = rig.engine.apply(rig.manifest, approve=lambda plan: True)

    assert outcome.ok and rig.running() == set()
    assert not rig.engine.apply(rig.manifest, approve=lambda plan: True).plan.has_changes
    # A destroy lifts the expiry: a fresh apply starts the sprite again.
    rig.engine.apply(rig.manifest, destroy=True, approve=lambda plan: True)
    rig.engine.apply(rig.manifest, approve=lambda plan: True)
    assert rig.running() == {"a"}
