"""Idempotence and budget safety, property-based.

For generated manifests and generated starting inventories (owned, unowned,
stopped and errored sprites, with a state file of owned records), ``apply``
then ``plan`` is always "No changes", or apply is refused for the reason an
independent oracle expects (an ownership conflict or the budget) with
nothing touched. Apply never kills or restarts an unowned sprite, and no
start ever makes the running sprites exceed a limit: every history line the
runtime writes is checked.

Most examples run in-process on :class:`MemoryDriver` (fast); a smaller
number drive the real wisp driver against the fake wisp, and a few go end to
end through the ``sprites`` command.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from reconciler.engine import Engine
from reconciler.errors import BudgetExceededError, OwnershipError
from reconciler.models.desired import canonical_spec
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.models.units import parse_size
from reconciler.state import StateStore
from tests.helpers.fakewisp import FakeWisp
from tests.reliability.conftest import Project, no_duplicate_starts
from tests.reliability.memdriver import MemoryDriver

MiB = 1 << 20
GiB = 1 << 30
PROJECT = "prop"
#: Scale every example count, e.g. SPRITES_RELIABILITY_SCALE=10 for a long soak.
SCALE = float(os.environ.get("SPRITES_RELIABILITY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def property_settings(n: int) -> settings:
    return settings(
        max_examples=examples(n),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

# Manifest keys; web and db are usually replicated into web-1, web-2, ...
KEYS = ["a", "b", "web", "db", "x"]
# Names in the starting inventory and state: some collide with desired names.
POOL = ["a", "b", "x", "web-1", "web-2", "web-3", "db-1", "db-2", "old-1", "old-2"]
FOREIGN = ["other-1", "other-2", "other-3"]
SIZES = {"256MiB": 256 * MiB, "512MiB": 512 * MiB, "1GiB": GiB, "768M": 768 * MiB}
STATES = ["running", "running", "running", "stopped", "error"]


# -- the generated world --------------------------------------------------


@dataclass
class Start:
    """A starting point: runtime inventory, the project's records, config."""

    #: name -> (state, memory, cpus)
    sprites: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    #: name -> (status, memory, cpus); the record's spec is what it was started with.
    records: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    host_max_vms: int = 5
    default_memory: str = "512MiB"
    default_cpus: int = 1

    @property
    def owned(self) -> dict[str, tuple[int, int]]:
        """What the engine may regard as its own, with the recorded spec:
        running records, and records left mid-operation whose sprite is listed."""
        return {
            name: (memory, cpus)
            for name, (status, memory, cpus) in self.records.items()
            if status == "running" or name in self.sprites
        }

    @property
    def unowned(self) -> set[str]:
        return set(self.sprites) - set(self.owned)


@st.composite
def starts(draw: st.DrawFn) -> Start:
    start = Start(
        host_max_vms=draw(st.sampled_from([2, 4, 6, 8, 10, 12])),
        default_memory=draw(st.sampled_from(["256MiB", "512MiB"])),
        default_cpus=draw(st.sampled_from([1, 2])),
    )
    for name in POOL:
        kind = draw(st.sampled_from(["absent", "absent", "owned", "owned", "record-only", "unowned"]))
        memory = draw(st.sampled_from(list(SIZES.values())))
        cpus = draw(st.sampled_from([1, 2]))
        if kind in ("owned", "unowned"):
            start.sprites[name] = (draw(st.sampled_from(STATES)), memory, cpus)
        if kind in ("owned", "record-only"):
            status = draw(st.sampled_from(["running", "running", "starting", "killing"]))
            start.records[name] = (status, memory, cpus)
    for name in draw(st.lists(st.sampled_from(FOREIGN), unique=True, max_size=3)):
        state = draw(st.sampled_from(STATES))
        start.sprites[name] = (state, draw(st.sampled_from(list(SIZES.values()))), 1)
    return start


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {"version": 1, "project": PROJECT}
    if draw(st.booleans()):
        defaults: dict[str, Any] = {}
        if draw(st.booleans()):
            defaults["memory"] = draw(st.sampled_from(list(SIZES)))
        if draw(st.booleans()):
            defaults["cpus"] = draw(st.sampled_from([1, 2, "2"]))
        document["defaults"] = defaults
    if draw(st.booleans()):
        limits: dict[str, Any] = {}
        if draw(st.booleans()):
            limits["maxVMs"] = draw(st.integers(1, 9))
        if draw(st.booleans()):
            limits["memory"] = draw(st.sampled_from(["1GiB", "2GiB", "3GiB", "6GiB"]))
        if draw(st.booleans()):
            limits["cpus"] = draw(st.integers(1, 12))
        document["limits"] = limits
    sprites: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=5)):
        template: dict[str, Any] = {}
        if draw(st.booleans()):
            template["memory"] = draw(st.sampled_from(list(SIZES)))
        if draw(st.booleans()):
            template["cpus"] = draw(st.sampled_from([1, 2, "1"]))
        replicas = draw(st.integers(1, 3)) if key in ("web", "db") else 1
        if replicas > 1 or draw(st.booleans()):
            template["replicas"] = replicas
        sprites[key] = template
    document["sprites"] = sprites
    return document


# -- the oracle ------------------------------------------------------------


def desired_of(document: dict[str, Any], start: Start) -> dict[str, tuple[int, int]]:
    """name -> (memory, cpus), worked out from the manifest independently."""
    defaults = document.get("defaults") or {}
    memory_default = parse_size(defaults.get("memory", start.default_memory))
    cpus_default = int(defaults.get("cpus", start.default_cpus))
    result: dict[str, tuple[int, int]] = {}
    for key, template in document["sprites"].items():
        memory = parse_size(template["memory"]) if "memory" in template else memory_default
        cpus = int(template["cpus"]) if "cpus" in template else cpus_default
        replicas = template.get("replicas", 1)
        names = [key] if replicas == 1 else [f"{key}-{i}" for i in range(1, replicas + 1)]
        for name in names:
            result[name] = (memory, cpus)
    return result


def expected_refusal(
    document: dict[str, Any], start: Start, sprites: dict[str, tuple[str, int, int]],
    owned: dict[str, tuple[int, int]],
) -> type[Exception] | None:
    desired = desired_of(document, start)
    if any(name in sprites and name not in owned for name in desired):
        return OwnershipError
    # Whether anything must be started (new, missing, not running, changed).
    starts = any(
        name not in owned or name not in sprites or sprites[name][0] != "running"
        or owned[name] != spec
        for name, spec in desired.items()
    )
    others = sum(
        1
        for name, (state, _, _) in sprites.items()
        if state == "running" and name not in desired and name not in owned
    )
    limits = document.get("limits") or {}
    if starts and len(desired) + others > start.host_max_vms:
        return BudgetExceededError
    if "maxVMs" in limits and len(desired) > limits["maxVMs"]:
        return BudgetExceededError
    if "memory" in limits and sum(m for m, _ in desired.values()) > parse_size(limits["memory"]):
        return BudgetExceededError
    if "cpus" in limits and sum(c for _, c in desired.values()) > limits["cpus"]:
        return BudgetExceededError
    return None


# -- running one world -----------------------------------------------------


@contextmanager
def world(start: Start) -> Iterator[tuple[Path, Path, StateStore]]:
    with tempfile.TemporaryDirectory(prefix="sprites-prop-") as tmp:
        root = Path(tmp)
        config = root / ".wreckit" / "config.json"
        config.parent.mkdir()
        config.write_text(
            json.dumps(
                {
                    "agent": {
                        "kind": "sprite",
                        "wispPath": str(root / "no-wisp"),
                        "maxVMs": start.host_max_vms,
                        "defaultMemory": start.default_memory,
                        "defaultCPUs": str(start.default_cpus),
                    }
                }
            )
        )
        store = StateStore(root / "state")
        if start.records:
            state = ProjectState(project=PROJECT)
            for name, (status, memory, cpus) in start.records.items():
                state.records[name] = OwnedRecord(
                    name=name, status=status, spec=canonical_spec(memory, cpus),
                    id=f"old-{name}", runtime="memory",
                )
            store.save(state)
        yield root, config, store


def engine_for(config: Path, store: StateStore, driver: Any) -> Engine:
    engine = Engine(config_path=config, state_dir=store.state_dir)
    engine._driver = driver
    return engine


def write_manifest(root: Path, document: dict[str, Any], name: str = "sprites.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def check_budget_history(
    history: list[Any], document: dict[str, Any], start: Start, project_names: set[str]
) -> None:
    """Every start leaves the running sprites within every limit."""
    limits = document.get("limits") or {}
    memory_limit = parse_size(limits["memory"]) if "memory" in limits else None
    for line in history:
        if line.op != "start":
            continue
        assert line.running <= start.host_max_vms, f"host maxVMs exceeded: {line}"
        mine = {n: v for n, v in line.running_sprites.items() if n in project_names}
        if "maxVMs" in limits:
            assert len(mine) <= limits["maxVMs"], f"limits.maxVMs exceeded after {line}"
        if memory_limit is not None:
            assert sum(m for m, _ in mine.values()) <= memory_limit, f"memory exceeded: {line}"
        if "cpus" in limits:
            assert sum(c for _, c in mine.values()) <= limits["cpus"], f"cpus exceeded: {line}"


def apply_and_check(
    root: Path, config: Path, store: StateStore, driver: MemoryDriver, start: Start,
    document: dict[str, Any], owned: dict[str, tuple[int, int]], parallelism: int,
) -> bool:
    """Apply ``document`` to the driver's current inventory and check every
    promise; returns whether it applied (False: refused as expected)."""
    sprites = {n: (s.state, s.memory, s.cpus) for n, s in driver.sprites.items()}
    unowned = set(sprites) - set(owned)
    before_unowned = {n: v for n, v in driver.snapshot().items() if n in unowned}
    manifest = write_manifest(root, document)
    refusal = expected_refusal(document, start, sprites, owned)
    state_before = store.state_path(PROJECT).read_bytes() if store.state_path(PROJECT).exists() else None
    engine = engine_for(config, store, driver)
    history_from = len(driver.history)
    changes_from = len(driver.changes())

    if refusal is not None:
        event(f"refused: {refusal.__name__}")
        with pytest.raises(refusal):
            engine.apply(manifest, approve=lambda plan: True, parallelism=parallelism)
        assert driver.changes()[changes_from:] == [], "a refused apply touched the runtime"
        after = store.state_path(PROJECT).read_bytes() if store.state_path(PROJECT).exists() else None
        assert after == state_before, "a refused apply changed the state file"
        return False

    event("applied")
    outcome = engine.apply(manifest, approve=lambda plan: True, parallelism=parallelism)
    assert outcome.ok, [str(e) for _, e in outcome.result.failures] if outcome.result else None
    desired = desired_of(document, start)

    # Reality matches the manifest, exactly once each.
    for name, (memory, cpus) in desired.items():
        sprite = driver.sprites.get(name)
        assert sprite is not None and sprite.state == "running", name
        assert (sprite.memory, sprite.cpus) == (memory, cpus), name
    # Unowned sprites are never touched.
    touched = {name for _, name in driver.changes()[changes_from:]}
    assert not touched & unowned, f"touched unowned sprites {touched & unowned}"
    assert {n: v for n, v in driver.snapshot().items() if n in unowned} == before_unowned
    # What the project owned and no longer wants is gone.
    for name in set(owned) - set(desired):
        assert name not in driver.sprites, f"{name} should have been killed"
    # The state records exactly the desired sprites, settled.
    state = store.load(PROJECT)
    assert set(state.records) == set(desired)
    for name, record in state.records.items():
        assert record.status == "running"
        assert record.spec == canonical_spec(*desired[name])
    # No start ever exceeded a limit, and nothing started twice.
    project_names = set(desired) | set(owned)
    check_budget_history(driver.history[history_from:], document, start, project_names)
    assert len([1 for op, _ in driver.changes()[changes_from:] if op == "start"]) == len(
        {n for op, n in driver.changes()[changes_from:] if op == "start"}
    )

    # plan after apply: no changes, nothing to record.
    plan = engine.plan(manifest)
    assert not plan.has_changes and not plan.needs_apply, plan.changes
    # A second apply calls nothing but list.
    calls_before = len(driver.changes())
    again = engine.apply(manifest, approve=lambda plan: True, parallelism=parallelism)
    assert again.ok and again.result is None
    assert len(driver.changes()) == calls_before
    return True


def fill(driver: MemoryDriver, start: Start) -> None:
    for name, (state, memory, cpus) in start.sprites.items():
        driver.add(name, state, memory, cpus)


@property_settings(250)
@given(
    start=starts(),
    document=manifests(),
    parallelism=st.integers(1, 4),
    delays=st.dictionaries(st.sampled_from(POOL + ["web", "db"]), st.sampled_from([0.0, 0.002])),
)
def test_apply_then_plan_is_no_changes(
    start: Start, document: dict[str, Any], parallelism: int, delays: dict[str, float]
) -> None:
    driver = MemoryDriver(delays=delays)
    fill(driver, start)
    with world(start) as (root, config, store):
        apply_and_check(root, config, store, driver, start, document, start.owned, parallelism)


@property_settings(120)
@given(
    start=starts(),
    first=manifests(),
    second=manifests(),
    parallelism=st.integers(1, 4),
    delays=st.dictionaries(st.sampled_from(POOL + ["web", "db"]), st.sampled_from([0.0, 0.002])),
)
def test_edits_converge_and_destroy_leaves_only_unowned(
    start: Start, first: dict[str, Any], second: dict[str, Any], parallelism: int,
    delays: dict[str, float],
) -> None:
    """apply A, then apply an edited B (replaces, kills, starts under the
    budget), then destroy: each step converges and unowned sprites survive."""
    driver = MemoryDriver(delays=delays)
    fill(driver, start)
    unowned_at_start = {n: v for n, v in driver.snapshot().items() if n in start.unowned}
    with world(start) as (root, config, store):
        owned = start.owned
        if apply_and_check(root, config, store, driver, start, first, owned, parallelism):
            owned = desired_of(first, start)
        if apply_and_check(root, config, store, driver, start, second, owned, parallelism):
            event("edit applied")
        engine = engine_for(config, store, driver)
        outcome = engine.apply(project=PROJECT, destroy=True, approve=lambda plan: True)
        assert outcome.ok
        assert store.load(PROJECT).records == {}
        assert driver.snapshot() == unowned_at_start


# -- the same property against the real wisp driver and the fake wisp -----


@property_settings(12)
@given(start=starts(), document=manifests())
def test_wisp_driver_apply_then_plan_is_no_changes(start: Start, document: dict[str, Any]) -> None:
    with world(start) as (root, config, store):
        fake = FakeWisp(root / "fakewisp")
        try:
            for name, (state, memory, cpus) in start.sprites.items():
                fake.add_sprite(name, state=state, memory=memory, cpus=cpus)
            config.write_text(
                json.dumps(
                    {
                        "agent": {
                            "kind": "sprite",
                            "wispPath": fake.path,
                            "maxVMs": start.host_max_vms,
                            "defaultMemory": start.default_memory,
                            "defaultCPUs": str(start.default_cpus),
                            "timeout": 30,
                        }
                    }
                )
            )
            manifest = write_manifest(root, document)
            engine = Engine(config_path=config, state_dir=store.state_dir, runtime="wisp")
            sprites = {s["name"]: (s["state"], s["memory"], s["cpus"]) for s in fake.inventory()}
            refusal = expected_refusal(document, start, sprites, start.owned)
            if refusal is not None:
                with pytest.raises(refusal):
                    engine.apply(manifest, approve=lambda plan: True)
                assert [c for c in fake.calls() if c[0] in ("start", "kill")] == []
                return
            outcome = engine.apply(manifest, approve=lambda plan: True, parallelism=3)
            assert outcome.ok
            assert not engine.plan(manifest).has_changes
            history = fake.history()
            initially_running = [n for n, v in start.sprites.items() if v[0] == "running"]
            no_duplicate_starts(history, initially_running)
            # Unowned sprites are never touched, so the project's share of each
            # history line is its totals minus theirs.
            unowned = {n: v for n, v in start.sprites.items() if n in start.unowned}
            assert not any(line["name"] in unowned for line in history)
            theirs = [v for v in unowned.values() if v[0] == "running"]
            limits = document.get("limits") or {}
            for line in history:
                if line["op"] != "start":
                    continue
                assert line["running"] <= start.host_max_vms
                mine_count = line["running"] - len(theirs)
                mine_memory = line["memory_total"] - sum(m for _, m, _ in theirs)
                mine_cpus = line["cpus_total"] - sum(c for _, _, c in theirs)
                if "maxVMs" in limits:
                    assert mine_count <= limits["maxVMs"]
                if "memory" in limits:
                    assert mine_memory <= parse_size(limits["memory"])
                if "cpus" in limits:
                    assert mine_cpus <= limits["cpus"]
            by_name = {s["name"]: s for s in fake.inventory()}
            for name, (memory, cpus) in desired_of(document, start).items():
                assert by_name[name]["state"] == "running"
                assert (by_name[name]["memory"], by_name[name]["cpus"]) == (memory, cpus)
        finally:
            fake.kill_leftovers()


# -- end to end through the command ----------------------------------------


def test_cli_apply_then_plan_with_a_mixed_inventory(project: Project) -> None:
    """Owned running, stopped and errored sprites, a stale record, unowned
    sprites (one stopped), a spec change and a removal, with tight limits."""
    project.configure(maxVMs=6)
    fake = project.fake
    fake.add_sprite("web-1", memory=512 * MiB)
    fake.add_sprite("web-2", state="stopped", memory=512 * MiB)
    fake.add_sprite("db", state="error", memory=GiB, cpus=2)
    fake.add_sprite("old", memory=GiB, cpus=2)
    fake.add_sprite("theirs-1", memory=GiB)
    fake.add_sprite("theirs-2", state="stopped")
    store = StateStore(project.state_dir)
    state = ProjectState(project=project.name)
    for name, memory, cpus in (
        ("web-1", 512 * MiB, 1), ("web-2", 512 * MiB, 1), ("db", GiB, 2), ("old", GiB, 2),
        ("gone", 512 * MiB, 1),
    ):
        state.records[name] = OwnedRecord(name=name, status="running", spec=canonical_spec(memory, cpus))
    store.save(state)
    project.manifest(
        {"web": {"replicas": 3, "memory": "1GiB"}, "db": {"memory": "1GiB", "cpus": 2}},
        limits={"maxVMs": 4, "memory": "4GiB", "cpus": 6},
    )
    applied = project.apply("--parallelism", "3")
    assert applied.code == 0, applied.output
    assert "Traceback" not in applied.output
    plan = project.plan()
    assert plan.code == 0 and "No changes. Sprites match the manifest." in plan.stdout, plan.output
    detailed = project.plan("--detailed-exitcode")
    assert detailed.code == 0
    running = project.running()
    assert set(running) == {"web-1", "web-2", "web-3", "db", "theirs-1"}
    assert {n: running[n]["memory"] for n in ("web-1", "web-2", "web-3")} == dict.fromkeys(
        ("web-1", "web-2", "web-3"), GiB
    )
    assert any(s["name"] == "theirs-2" and s["state"] == "stopped" for s in fake.inventory())
    history = fake.history()
    assert not any(line["name"].startswith("theirs") for line in history)
    no_duplicate_starts(history, ["web-1", "old", "theirs-1"])
    theirs_memory = GiB
    for line in history:
        if line["op"] == "start":
            assert line["running"] <= 6
            assert line["running"] - 1 <= 4
            assert line["memory_total"] - theirs_memory <= 4 * GiB
            assert line["cpus_total"] - 1 <= 6
    assert set(project.records()) == {"web-1", "web-2", "web-3", "db"}


def test_cli_example_manifest_twice_then_destroy(project: Project) -> None:
    project.manifest_path.write_text(
        (Path(__file__).resolve().parents[2] / "examples" / "sprites.yaml").read_text()
    )
    project.fake.add_sprite("someone-else")
    project.configure(maxVMs=6)
    first = project.apply()
    assert first.code == 0, first.output
    second = project.apply()
    assert second.code == 0 and "No changes. Sprites match the manifest." in second.stdout
    starts_ = [c for c in project.fake.calls() if c[0] == "start"]
    assert sorted(c[1] for c in starts_) == ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]
    destroyed = project.run("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.output
    assert project.fake.names() == ["someone-else"]
    assert project.records() == {}


@pytest.mark.parametrize("limit", ["maxVMs", "memory", "cpus"])
def test_cli_refuses_an_end_state_over_budget_and_touches_nothing(
    project: Project, limit: str
) -> None:
    limits = {"maxVMs": {"maxVMs": 2}, "memory": {"memory": "1GiB"}, "cpus": {"cpus": 2}}[limit]
    project.manifest({"w": {"replicas": 3}}, limits=limits)
    result = project.apply()
    assert result.code == 1
    assert f"{limit} exceeded" in result.stderr, result.output
    assert "Traceback" not in result.output
    assert [c for c in project.fake.calls() if c[0] != "list"] == []
    assert project.state() is None
