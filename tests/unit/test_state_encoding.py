"""The state file's encoding: every record field survives a save and a load,
one sprite per line, keys sorted."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.models.state import Expiry, OwnedRecord, ProjectState
from reconciler.record import fields, replace
from reconciler.state import StateStore, encode_state

RECORD = OwnedRecord(
    name="agent-1",
    status="starting",
    spec={
        "memory": 1 << 30,
        "cpus": 2,
        "command": ["sh", "-c", "echo é"],
        "env": {"B": "2", "A": "1"},
    },
    id="sprite-00002a",
    runtime="wisp",
    started_at=1_800_000_000.5,
    restarts=3,
    last_error="Failed to start Sprite: insufficient memory",
)


def test_a_record_is_saved_with_every_field_but_its_name() -> None:
    expected = {name: getattr(RECORD, name) for name in fields(OwnedRecord) if name != "name"}
    assert RECORD.to_json() == expected
    assert list(expected) == [
        "status",
        "spec",
        "id",
        "runtime",
        "started_at",
        "restarts",
        "last_error",
    ]


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    records = {name: replace(RECORD, name=name) for name in ("b", "a")}
    state = ProjectState(
        project="demo", records=records, serial=6, expired={"z": Expiry("digest", 12.5)}
    )
    store.save(state)
    loaded = store.load("demo")
    assert loaded == state
    assert loaded.serial == 7


def test_the_state_file_has_one_sprite_per_line_in_name_order() -> None:
    state = ProjectState(project="demo", records={"b": RECORD, "a": RECORD})
    text = encode_state(state.to_json()).decode()
    assert json.loads(text) == json.loads(json.dumps(state.to_json()))
    lines = text.splitlines()
    assert [line.split(":")[0].strip() for line in lines if '"status"' in line] == ['"a"', '"b"']
    assert text.endswith("}\n") and lines[0] == "{"


def test_an_empty_state_encodes_as_before() -> None:
    data = ProjectState(project="demo").to_json()
    assert json.loads(encode_state(data)) == data


def test_saves_that_reuse_record_lines_write_what_a_full_encoding_does(tmp_path: Path) -> None:
    """A store keeps each saved record's line and reuses it while the record
    is the same object; every file it writes is the full encoding's bytes."""
    store = StateStore(tmp_path / "state")
    state = ProjectState(project="demo")
    path = store.state_path("demo")
    steps = [
        lambda: state.records.update({n: replace(RECORD, name=n) for n in ("c", "a", "b")}),
        lambda: state.records.update(a=replace(state.records["a"], status="running")),
        lambda: state.records.pop("b"),
        lambda: state.expired.update(b=Expiry("digest", 3.0)),
        lambda: state.records.update(b=replace(RECORD, name="b", restarts=9)),
        lambda: None,
        lambda: state.records.clear(),
        lambda: state.records.update(z=replace(RECORD, name="z", spec={})),
    ]
    for step in steps:
        step()
        store.save(state)
        assert path.read_bytes() == encode_state(state.to_json())
        assert store.load("demo") == state
    other = ProjectState(project="other", records={"a": RECORD})
    store.save(other)
    assert store.state_path("other").read_bytes() == encode_state(other.to_json())
