"""The state store: atomic private files, refusal of links and corrupt state,
and the per-project lock (held, waited for, left by a dead holder, forced)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.errors import LockError, StateError
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.state import StateStore, write_private_file

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def sample_state(project: str = "demo") -> ProjectState:
    return ProjectState(
        project=project,
        records={
            "agent-1": OwnedRecord(
                name="agent-1", status="running", spec={"memory": 1 << 30, "cpus": 2}, id="s-1"
            )
        },
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


# -- files ---------------------------------------------------------------------------


def test_a_project_without_state_owns_nothing(store: StateStore) -> None:
    state = store.load("demo")
    assert (state.project, state.records, state.serial) == ("demo", {}, 0)
    assert not store.state_dir.exists()  # reading creates nothing


def test_save_and_load_round_trip_with_private_modes(store: StateStore) -> None:
    state = sample_state()
    store.save(state)
    path = store.state_path("demo")
    assert mode(store.state_dir) == 0o700
    assert mode(store.projects_dir) == 0o700
    assert mode(path) == 0o600
    loaded = store.load("demo")
    assert loaded.records == state.records
    assert loaded.serial == 1
    store.save(loaded)
    assert store.load("demo").serial == 2
    assert store.projects() == ["demo"]
    assert [p.name for p in store.projects_dir.iterdir()] == ["demo.json"]


def test_an_existing_open_state_dir_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    (directory / "projects").mkdir(parents=True)
    directory.chmod(0o755)
    (directory / "projects").chmod(0o755)
    store = StateStore(directory)
    store.save(sample_state())
    assert mode(directory) == 0o700
    assert mode(directory / "projects") == 0o700


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.json"
    write_private_file(target, b"old\n")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_private_file(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_a_write_replaces_the_file_rather_than_rewriting_it(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    write_private_file(target, b"one\n")
    before = target.stat().st_ino
    write_private_file(target, b"two\n")
    assert target.read_bytes() == b"two\n"
    assert target.stat().st_ino != before
    assert mode(target) == 0o600


def test_a_symlink_at_the_state_path_is_refused(store: StateStore, tmp_path: Path) -> None:
    store.save(sample_state())
    victim = tmp_path / "victim"
    victim.write_text("do not touch\n")
    path = store.state_path("demo")
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(StateError) as caught:
        store.load("demo")
    assert caught.value.user_message == f"refusing to follow a symlink at {path}"
    # A save replaces the link itself; it never writes through it.
    store.save(sample_state())
    assert victim.read_text() == "do not touch\n"
    assert not path.is_symlink()


def test_a_symlink_at_the_lock_path_is_refused(store: StateStore, tmp_path: Path) -> None:
    store.save(sample_state())
    store.lock_path("demo").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="refusing to follow a symlink"):
        with store.lock("demo", "apply"):
            pass
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"format_version": 1, "project": "demo", "sprites": {', "is not valid JSON"),
        (b"\x00\x01garbage", "left unchanged"),
        (b'{"format_version": 99, "project": "demo", "sprites": {}}', "state file is invalid"),
        (
            b'{"format_version": 1, "project": "demo", "sprites": {"a": {"status": "weird", '
            b'"spec": {}}}}',
            "state file is invalid",
        ),
        (b'{"format_version": 1, "project": "other", "sprites": {}}', "belongs to project 'other'"),
    ],
)
def test_corrupt_state_is_reported_and_left_unchanged(
    store: StateStore, content: bytes, words: str
) -> None:
    store.save(sample_state())
    path = store.state_path("demo")
    path.write_bytes(content)
    with pytest.raises(StateError) as caught:
        store.load("demo")
    message = caught.value.user_message
    assert message.startswith(str(path))
    assert words in message
    assert path.read_bytes() == content


def test_invalid_json_state_gives_line_and_column(store: StateStore) -> None:
    store.save(sample_state())
    path = store.state_path("demo")
    path.write_text('{\n "format_version": 1,\n "sprites": {,\n}')
    with pytest.raises(StateError) as caught:
        store.load("demo")
    assert caught.value.user_message.startswith(f"{path}:3:14: state file is not valid JSON")
    assert "left unchanged" in caught.value.user_message


# -- the lock --------------------------------------------------------------------------

HOLDER = """
import os, signal, sys
from pathlib import Path
from reconciler.state import StateStore
store = StateStore(Path(sys.argv[1]))
with store.lock(sys.argv[2], sys.argv[3]):
    print("locked", flush=True)
    if sys.argv[4] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
print("released", flush=True)
"""


@contextmanager
def holder(
    store: StateStore, behaviour: str = "hold", op: str = "apply"
) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the project's lock until its stdin closes
    (``hold``), or dying by SIGKILL while holding it (``die``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.state_dir), "demo", op, behaviour],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_a_held_lock_is_an_error_naming_the_holder(store: StateStore) -> None:
    with holder(store, op="destroy") as proc:
        with pytest.raises(LockError) as caught:
            with store.lock("demo", "apply"):
                pass
    message = caught.value.user_message
    assert message.startswith(f"state of project 'demo' is locked by destroy (pid {proc.pid}, ")
    assert "@" in message and "since" in message
    assert caught.value.hint is not None and "--lock-timeout" in caught.value.hint


def test_a_lock_timeout_gives_up_after_waiting(store: StateStore) -> None:
    with holder(store):
        with pytest.raises(LockError, match=r"after waiting 0\.2s"):
            with store.lock("demo", "apply", timeout=0.2):
                pass


def test_a_lock_timeout_waits_for_the_holder_to_finish(store: StateStore) -> None:
    with holder(store) as proc:
        assert proc.stdin is not None
        release = threading.Timer(0.2, proc.stdin.close)
        release.start()
        try:
            with store.lock("demo", "apply", timeout=120) as notes:
                assert notes == []
                assert proc.wait(timeout=30) == 0
        finally:
            release.cancel()


def test_a_lock_left_by_a_dead_holder_is_recovered(store: StateStore) -> None:
    with holder(store, "die") as proc:
        assert proc.wait(timeout=30) == -9
    with store.lock("demo", "apply") as notes:
        assert len(notes) == 1
        assert notes[0].startswith(
            f"Recovered the lock of project 'demo' left by apply (pid {proc.pid}, "
        )
        assert notes[0].endswith("which exited without releasing it.")
    # Released cleanly: the next holder has nothing to recover.
    with store.lock("demo", "apply") as notes:
        assert notes == []


def test_force_unlock_clears_a_dead_holders_record(store: StateStore) -> None:
    assert store.force_unlock("demo") == "Project 'demo' is not locked."
    with holder(store, "die") as proc:
        proc.wait(timeout=30)
    message = store.force_unlock("demo")
    assert message.startswith(f"Cleared the lock of project 'demo' left by apply (pid {proc.pid}, ")
    with store.lock("demo", "apply") as notes:
        assert notes == []
    assert store.force_unlock("demo") == "Project 'demo' is not locked."


def test_force_unlock_refuses_while_the_holder_runs(store: StateStore) -> None:
    with holder(store) as proc:
        with pytest.raises(LockError) as caught:
            store.force_unlock("demo")
        assert "which is still running" in caught.value.user_message
        assert f"pid {proc.pid}" in caught.value.user_message
        assert store.lock_path("demo").exists()


def test_force_unlock_never_removes_a_lock_being_taken(store: StateStore) -> None:
    # The kernel lock is held but no holder is recorded yet: someone is alive.
    import fcntl

    store.save(sample_state())
    fd = os.open(store.lock_path("demo"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockError, match="another sprites process, which is still running"):
            store.force_unlock("demo")
        assert store.lock_path("demo").exists()
    finally:
        os.close(fd)


def test_the_lock_records_the_holder_while_held_and_clears_it_after(store: StateStore) -> None:
    import json

    with store.lock("demo", "destroy"):
        record = json.loads(store.lock_path("demo").read_bytes())
        assert record["pid"] == os.getpid()
        assert record["operation"] == "destroy"
        assert {"host", "user", "since"} <= set(record)
        assert mode(store.lock_path("demo")) == 0o600
    assert store.lock_path("demo").read_bytes() == b""
