"""process.run and process.run_interactive: argv only, own process group,
open stdin, captured output, timeouts that leave nothing behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers import launcher, process
from reconciler.errors import RuntimeCallError, RuntimeTimeoutError
from tests.helpers.fakewisp import process_group_members

PY = [sys.executable, "-S", "-c"]


def test_captures_output_and_exit_status() -> None:
    completed = process.run(
        [*PY, "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
        timeout=10,
        op="start",
    )
    assert completed.returncode == 3
    assert completed.stdout == "out\n"
    assert completed.stderr == "err\n"
    assert completed.duration > 0


def test_arguments_are_never_interpreted_by_a_shell() -> None:
    tricky = "$(echo pwned); `id` | cat > /dev/null && *"
    completed = process.run([*PY, "import sys; print(sys.argv[1])", tricky], timeout=10, op="x")
    assert completed.stdout == tricky + "\n"


def test_a_string_is_not_an_argv() -> None:
    with pytest.raises(TypeError):
        process.run("echo hi", timeout=10, op="x")


def test_child_runs_in_its_own_process_group_and_session() -> None:
    completed = process.run(
        [*PY, "import os; print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())"],
        timeout=10,
        op="x",
    )
    assert completed.stdout.split() == ["True", "True"]


STDIN_PROBE = (
    "import select, sys; "
    "ready = select.select([sys.stdin], [], [], 0.3)[0]; "
    "print('eof' if ready and sys.stdin.read() == '' else 'open')"
)


def test_stdin_is_an_open_pipe_that_is_never_written() -> None:
    assert process.run([*PY, STDIN_PROBE], timeout=10, op="x").stdout == "open\n"


def test_stdin_can_be_closed() -> None:
    completed = process.run([*PY, STDIN_PROBE], timeout=10, op="x", stdin_open=False)
    assert completed.stdout == "eof\n"


def test_large_output_on_both_streams_does_not_deadlock() -> None:
    code = "import sys; sys.stdout.write('o' * 300000); sys.stderr.write('e' * 300000)"
    completed = process.run([*PY, code], timeout=10, op="x")
    assert (len(completed.stdout), len(completed.stderr)) == (300000, 300000)


def test_each_call_is_logged_with_its_duration(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="sprites.runtime"):
        process.run(["true", "start", "agent-1", "--memory", "512MiB"], timeout=10, op="start")
    messages = [r.getMessage() for r in caplog.records if r.name == "sprites.runtime"]
    assert any(
        m.startswith("true start agent-1 --memory 512MiB -> exit 0 in ") and m.endswith("s")
        for m in messages
    ), messages


def test_a_missing_program_is_a_call_error() -> None:
    expected = r"^Failed to start Sprite: cannot run '/nonexistent/wisp': "
    with pytest.raises(RuntimeCallError, match=expected):
        process.run(["/nonexistent/wisp", "start"], timeout=10, op="start")


@pytest.mark.parametrize(("timeout", "shown"), [(0.5, "0.5"), (1, "1"), (1.0, "1")])
def test_timeout_message(timeout: float, shown: str) -> None:
    with pytest.raises(RuntimeTimeoutError) as caught:
        process.run([*PY, "import time; time.sleep(60)"], timeout=timeout, op="kill")
    assert str(caught.value) == f"Failed to kill Sprite: Command timed out after {shown} seconds"
    assert caught.value.seconds == timeout


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids (= process group ids) of the children process.run starts."""
    pids: list[int] = []
    real_popen = subprocess.Popen

    class Recording(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return pids


def group_ends(pgid: int, timeout: float = 10.0) -> bool:
    """Whether the group empties: a SIGKILLed process is gone a moment after
    the signal is sent, not at once."""
    deadline = time.monotonic() + timeout
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return process_group_members(pgid) == []


HANG_WITH_CHILD = (
    "import os, signal, time\n"
    "if {ignore}:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.fork()\n"
    "time.sleep(60)\n"
)


def test_timeout_kills_the_whole_group(spawned: list[int]) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeTimeoutError):
        process.run([*PY, HANG_WITH_CHILD.format(ignore=False)], timeout=0.5, op="x")
    assert time.monotonic() - started < 0.5 + process.KILL_GRACE
    assert group_ends(spawned[0])


def test_sigkill_follows_an_ignored_sigterm(
    spawned: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "KILL_GRACE", 0.3)
    started = time.monotonic()
    with pytest.raises(RuntimeTimeoutError):
        process.run([*PY, HANG_WITH_CHILD.format(ignore=True)], timeout=0.5, op="x")
    assert time.monotonic() - started >= 0.5 + 0.3 - 0.05
    assert group_ends(spawned[0])


def test_a_process_left_holding_the_output_does_not_hold_up_the_call() -> None:
    code = "import os, sys, time\nif os.fork() == 0:\n    time.sleep(3)\nprint('done')\n"
    started = time.monotonic()
    completed = process.run([*PY, code], timeout=10, op="start")
    assert completed.stdout == "done\n"
    assert time.monotonic() - started < 2


def test_interactive_run_returns_the_exit_status() -> None:
    assert process.run_interactive([*PY, "raise SystemExit(4)"]) == 4


def test_interactive_run_of_a_missing_program_is_a_call_error() -> None:
    with pytest.raises(RuntimeCallError, match=r"^Failed to attach to Sprite: cannot run"):
        process.run_interactive(["/nonexistent/wisp", "attach", "a"])


# -- dying with the sprites process ---------------------------------------------

PDEATHSIG_PROBE = (
    "import ctypes\n"
    "signal = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(signal))\n"  # PR_GET_PDEATHSIG
    "print(signal.value)\n"
)


@pytest.fixture(params=["compiled", "setpriv", "hook"])
def mechanism(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a child learns to die with its parent: through the compiled
    launcher (where a C compiler built it), util-linux's setpriv (where
    installed) and a hook run before exec."""
    monkeypatch.setattr(process, "_launcher_argv", None)
    monkeypatch.delenv("SPRITES_NO_SETPRIV", raising=False)
    if request.param == "compiled":
        if launcher.find() is None:
            pytest.skip("no C compiler to build the launcher with")
        assert process._launcher() == (launcher.find(),)
    elif request.param == "setpriv":
        monkeypatch.setattr(launcher, "find", lambda: None)
        if not process._launcher():
            pytest.skip("setpriv (util-linux) is not installed")
        assert process._launcher()[0].endswith("/setpriv")
    else:
        monkeypatch.setattr(process, "_launcher_argv", ())
    return str(request.param)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_is_set_to_be_killed_when_its_parent_dies(mechanism: str) -> None:
    completed = process.run([*PY, PDEATHSIG_PROBE], timeout=10, op="x")
    assert completed.stdout.strip() == "9", (mechanism, completed)


ORPHAN_MAKER = """\
import sys
from reconciler.drivers import launcher, process
if {launcher!r} == "setpriv":
    launcher.find = lambda: None
process.run([sys.executable, "-S", "-c", {child!r}], timeout=60, op="x")
"""
CHILD = "import os, time\nopen({path!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("way", ["compiled", "setpriv", "hook"])
def test_a_call_does_not_outlive_a_killed_parent(tmp_path: Path, way: str) -> None:
    pid_file = tmp_path / "child.pid"
    child = CHILD.format(path=str(pid_file))
    env = dict(os.environ)
    if way == "hook":
        env["SPRITES_NO_SETPRIV"] = "1"
    if way == "compiled" and launcher.find() is None:
        pytest.skip("no C compiler to build the launcher with")
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_MAKER.format(child=child, launcher=way)],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while process_group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_group_members(pid) == [], "the call outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid_file.exists() and pid_file.read_text():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_program_that_cannot_be_executed_is_a_call_error(tmp_path: Path, mechanism: str) -> None:
    script = tmp_path / "wisp"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(
        RuntimeCallError, match=r"^Failed to start Sprite: cannot run '.*wisp': Permission denied"
    ):
        process.run([str(script), "start"], timeout=10, op="start")
    with pytest.raises(
        RuntimeCallError, match=r"^Failed to start Sprite: cannot run '/nonexistent/wisp': "
    ):
        process.run(["/nonexistent/wisp", "start"], timeout=10, op="start")


def test_a_launcher_without_pdeathsig_falls_back_to_the_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "setpriv"
    old.write_text("#!/bin/sh\necho \"setpriv: unrecognized option '--pdeathsig'\" >&2\nexit 1\n")
    old.chmod(0o755)
    monkeypatch.setattr(process, "_launcher_argv", (str(old), "--pdeathsig", "KILL", "--"))
    completed = process.run([*PY, PDEATHSIG_PROBE], timeout=10, op="x")
    assert (completed.returncode, completed.stdout.strip()) == (0, "9")
    assert process._launcher() == ()


def test_a_command_failing_on_its_own_is_not_retried(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    code = (
        f"import sys; open({str(counter)!r}, 'a').write('x'); sys.stderr.write('no'); sys.exit(1)"
    )
    completed = process.run([*PY, code], timeout=10, op="x")
    assert (completed.returncode, completed.stderr) == (1, "no")
    assert counter.read_text() == "x"


def test_a_read_only_call_is_not_set_to_die_with_its_parent(mechanism: str) -> None:
    completed = process.run([*PY, PDEATHSIG_PROBE], timeout=10, op="list", read_only=True)
    assert completed.stdout.strip() == "0"


@pytest.mark.parametrize(
    ("out", "err"),
    [
        ("", "setpriv: cannot drop privileges: Operation not permitted\n"),
        ("started\n", "setpriv: unrecognized option '--frobnicate'\n"),
    ],
    ids=["its-own-setpriv-error", "output-first"],
)
def test_a_command_that_itself_says_setpriv_is_not_run_again(
    tmp_path: Path, mechanism: str, out: str, err: str
) -> None:
    """Only setpriv's own refusals before it execs, with nothing on stdout,
    count as the launcher failing; anything else is the command's outcome."""
    counter = tmp_path / "runs"
    code = (
        f"import sys; open({str(counter)!r}, 'a').write('x'); "
        f"sys.stdout.write({out!r}); sys.stderr.write({err!r}); sys.exit(1)"
    )
    completed = process.run([*PY, code], timeout=10, op="start")
    assert completed.returncode == 1
    assert counter.read_text() == "x"


def test_an_executable_without_an_interpreter_line_is_never_run_by_a_shell(
    tmp_path: Path, mechanism: str
) -> None:
    """Run directly it is an "Exec format error"; setpriv's execvp would hand
    it to /bin/sh, so it does not go through setpriv."""
    marker = tmp_path / "ran"
    script = tmp_path / "wisp"
    script.write_text(f"touch {marker}\n")
    script.chmod(0o755)
    with pytest.raises(RuntimeCallError, match=r"cannot run '.*wisp': Exec format error"):
        process.run([str(script), "start"], timeout=10, op="start")
    assert not marker.exists()


def _first_calls_at_once(
    monkeypatch: pytest.MonkeyPatch, owner: Any, slow: str, work: Callable[[], object]
) -> list[object]:
    """Run ``work`` in eight threads at once while ``owner.slow`` takes a
    while, so that every thread asks while the first is still working the
    answer out."""
    real = getattr(owner, slow)

    def sluggish(*args: object, **kwargs: object) -> object:
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, slow, sluggish)
    barrier = threading.Barrier(8)
    answers: list[object] = []

    def ask() -> None:
        barrier.wait()
        answers.append(work())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.setattr(owner, slow, real)
    return answers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="setpriv is util-linux's")
def test_the_launcher_is_the_same_for_the_first_calls_of_many_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPRITES_NO_SETPRIV", raising=False)
    monkeypatch.setattr(launcher, "find", lambda: None)  # setpriv's lookup is the slow one
    monkeypatch.setattr(process, "_launcher_argv", None)
    if not process._launcher():
        pytest.skip("setpriv (util-linux) is not installed")
    monkeypatch.setattr(process, "_launcher_argv", None)
    answers = _first_calls_at_once(monkeypatch, os, "access", process._launcher)
    assert answers == [process._launcher()] * 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_hook_is_made_for_the_first_calls_of_many_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "_prctl", None)
    monkeypatch.setattr(process, "_prctl_resolved", False)
    import ctypes

    answers = _first_calls_at_once(monkeypatch, ctypes, "CDLL", process._die_with_parent)
    assert all(callable(hook) for hook in answers), answers


@pytest.mark.parametrize("problem", ["missing", "not-executable"])
def test_a_launcher_that_cannot_be_executed_is_done_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    """A launcher removed since it was found, or on a noexec mount: the call
    runs anyway (with the hook), and later calls skip the launcher."""
    path = tmp_path / "sprites-launch"
    if problem == "not-executable":
        path.write_bytes(b"\x7fELF not really")
        path.chmod(0o600)
    monkeypatch.setattr(process, "_launcher_argv", (str(path),))
    completed = process.run([*PY, PDEATHSIG_PROBE], timeout=10, op="x")
    assert (completed.returncode, completed.stdout.strip()) == (0, "9")
    assert process._launcher() == ()
