"""The event log itself: format, permissions, rotation, appends from many
processes, following across rotations, and the last error per sprite."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from reconciler.events import EventLog, EventType

FIELDS = {"time", "ts", "type", "project", "sprite", "action", "outcome", "duration"}


def make_log(tmp_path: Path, **options: Any) -> EventLog:
    return EventLog(tmp_path / "state" / "events.log", clock=lambda: 1_800_000_000.25, **options)


def emit(log: EventLog, n: int, **extra: Any) -> None:
    log.emit(
        EventType.RESULT,
        project="demo",
        sprite=f"s-{n}",
        action="start",
        outcome="ok",
        duration=0.1234,
        detail={"n": n},
        **extra,
    )


def test_each_event_is_one_json_line_with_the_common_fields(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    emit(log, 1, error=None, step="start")
    log.emit(EventType.PLAN, project="demo", action="apply", outcome="no_changes")

    lines = log.path.read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert FIELDS <= set(first) and FIELDS <= set(second)
    assert first["time"] == "2027-01-15T08:00:00.250Z" and first["ts"] == 1_800_000_000.25
    assert first["duration"] == 0.123 and first["step"] == "start"
    assert "error" not in first  # None details are left out
    assert second["sprite"] is None and second["duration"] == 0.0


def test_the_log_is_private(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    emit(log, 1)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700


def test_listeners_see_each_event_and_a_failing_one_changes_nothing(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    seen: list[dict[str, Any]] = []

    def broken(event: dict[str, Any]) -> None:
        raise BrokenPipeError

    log.listeners += [broken, seen.append]
    emit(log, 1)
    assert [e["sprite"] for e in seen] == ["s-1"]
    assert len(list(log.read())) == 1


def test_rotation_keeps_a_bounded_number_of_generations(tmp_path: Path) -> None:
    log = make_log(tmp_path, max_bytes=4096, keep=2)
    for n in range(300):
        emit(log, n)

    names = sorted(p.name for p in log.path.parent.iterdir() if p.name.startswith("events.log"))
    assert names == ["events.log", "events.log.1", "events.log.2", "events.log.lock"]
    for path in log.paths():
        assert path.stat().st_size <= 4096
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    numbers = [e["detail"]["n"] for e in log.read()]
    # Oldest first, contiguous, ending with the newest: only whole old files dropped.
    assert numbers == list(range(numbers[0], 300)) and numbers[0] > 0


def test_a_project_filter_reads_one_projects_events(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    emit(log, 1)
    log.emit(EventType.PLAN, project="other", action="apply", outcome="changes")
    assert [e["project"] for e in log.read("other")] == ["other"]
    assert len(list(log.read())) == 2


WRITER = """
import sys
from pathlib import Path
from reconciler.events import EventLog, EventType
log = EventLog(Path(sys.argv[1]), max_bytes=int(sys.argv[2]), keep=1000)
for n in range(int(sys.argv[3])):
    log.emit(EventType.RESULT, project="p", sprite=sys.argv[4], action="start",
             outcome="ok", message="x" * (n % 300), detail={"n": n})
"""


def test_appends_from_many_processes_never_tear_or_lose_a_line(tmp_path: Path) -> None:
    path = tmp_path / "state" / "events.log"
    per_writer = 250
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(64 << 10), str(per_writer), f"w{i}"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for i in range(4)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0

    log = EventLog(path, keep=1000)
    raw_lines = [line for p in log.paths() for line in p.read_bytes().splitlines()]
    events = [json.loads(line) for line in raw_lines]  # every line whole
    assert len(log.paths()) > 2  # it did rotate under the concurrent appends
    by_writer: dict[str, list[int]] = {}
    for event in events:
        by_writer.setdefault(event["sprite"], []).append(event["detail"]["n"])
    assert {w: sorted(ns) for w, ns in by_writer.items()} == {
        f"w{i}": list(range(per_writer)) for i in range(4)
    }
    # Each writer's own events stay in order across the generations.
    assert all(ns == sorted(ns) for ns in by_writer.values())


def test_follow_yields_new_events_across_a_rotation(tmp_path: Path) -> None:
    log = make_log(tmp_path, max_bytes=600, keep=3)
    emit(log, 0)
    emit(log, 1)
    script = iter(range(2, 12))
    stop = {"now": False}

    def wait(seconds: float) -> None:
        n = next(script, None)
        if n is None:
            stop["now"] = True
        else:
            emit(log, n)  # each append may rotate the file under the reader

    got = [e["detail"]["n"] for e in log.follow(stop=lambda: stop["now"], wait=wait, backlog=1)]
    assert len(log.paths()) > 1
    assert got == list(range(1, 12))


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    calls = {"n": 0}

    def wait(seconds: float) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            emit(log, 7)

    follower = log.follow(stop=lambda: calls["n"] > 3, wait=wait)
    assert [e["detail"]["n"] for e in follower] == [7]


def test_last_errors_are_cleared_by_a_later_success(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.emit(
        EventType.RESULT,
        project="demo",
        sprite="a",
        action="start",
        outcome="failed",
        error="Failed to start Sprite: insufficient memory",
    )
    log.emit(
        EventType.RESULT,
        project="demo",
        sprite="b",
        action="start",
        outcome="failed",
        error="Failed to start Sprite: boom",
    )
    log.emit(EventType.RESULT, project="demo", sprite="b", action="start", outcome="ok")
    log.emit(
        EventType.RESULT,
        project="other",
        sprite="c",
        action="start",
        outcome="failed",
        error="elsewhere",
    )
    (log.path.parent / "garbage").write_text("")
    with open(log.path, "a") as handle:
        handle.write("{not json\n")
    assert log.last_errors("demo") == {"a": "Failed to start Sprite: insufficient memory"}
