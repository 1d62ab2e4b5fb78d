"""The one place that runs external commands.

Every runtime call goes through :func:`run`: an argv list (never a shell), a
child in its own process group with an open stdin pipe that is never written
to, captured output, and a hard timeout after which the whole process group
gets SIGTERM, then SIGKILL :data:`KILL_GRACE` seconds later. Interactive
attach, which needs the user's terminal, goes through :func:`run_interactive`.
Each call is logged with its duration at DEBUG on the ``sprites.runtime``
logger, which ``--verbose`` shows. On Linux a child of :func:`run` is also
SIGKILLed by the kernel when the thread that started it dies, so no runtime
call outlives a sprites process that was killed outright: a small compiled
launcher arranges it where a C compiler could build one, util-linux's
``setpriv --pdeathsig`` where installed, and a hook run in the child before
exec elsewhere (``SPRITES_NO_SETPRIV=1`` skips both launchers for the hook).
"""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from reconciler.debuglog import debug
from reconciler.errors import RuntimeCallError, RuntimeTimeoutError
from reconciler.record import record

LOGGER = "sprites.runtime"


#: Seconds between SIGTERM and SIGKILL for a call that ran past its timeout.
KILL_GRACE = 5.0
#: Once the child has exited, how long to keep reading output that a process
#: it left behind (a daemonised VM monitor, say) still holds open.
DRAIN_GRACE = 0.5
_POLL_INTERVAL = 0.1
_READ_SIZE = 65536


@record(frozen=True, slots=True)
class Completed:
    """A command that ran to its end, whatever its exit status."""

    returncode: int
    stdout: str
    stderr: str
    duration: float


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    op: str,
    stdin_open: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    read_only: bool = False,
) -> Completed:
    """Run ``argv`` to completion (in ``cwd`` when given) and capture its output.

    Raises :class:`RuntimeTimeoutError` when it runs past ``timeout`` seconds
    (the process group is killed and reaped first) and
    :class:`RuntimeCallError` when it cannot be started at all. A
    ``read_only`` call (a listing) changes nothing, so it may outlive a
    sprites process killed outright, and skips the arrangement that
    prevents that.
    """
    args = _checked(argv)
    shown = shlex.join(args)
    launcher = () if read_only else _launcher()
    if launcher and not _has_own_interpreter(args[0]):
        launcher = ()
    while True:
        started = time.monotonic()
        try:
            returncode, stdout, stderr = _run(
                args, shown, launcher, timeout, op, stdin_open, cwd, read_only
            )
        except _LauncherUnusable:
            # The launcher itself cannot be executed here (removed since it
            # was found, or kept on a noexec mount): do without it.
            _disable_launcher()
            launcher = ()
            continue
        if launcher and returncode != 0 and not stdout and _launcher_failed(stderr):
            # The launcher failed before it ran the command (an old setpriv,
            # or a program that cannot be executed): the command never ran,
            # so run it directly, where a launch failure has its own error.
            if b": failed to execute " not in stderr.partition(b"\n")[0]:
                _disable_launcher()
            launcher = ()
            continue
        break

    duration = time.monotonic() - started
    debug(LOGGER, "%s -> exit %d in %.3fs", shown, returncode, duration)
    text_err = stderr.decode("utf-8", "replace")
    if returncode != 0 and text_err.strip():
        debug(LOGGER, "%s stderr: %s", args[0], text_err.strip().splitlines()[-1])
    return Completed(
        returncode=returncode,
        stdout=stdout.decode("utf-8", "replace"),
        stderr=text_err,
        duration=duration,
    )


def _run(
    args: list[str],
    shown: str,
    launcher: tuple[str, ...],
    timeout: float,
    op: str,
    stdin_open: bool,
    cwd: str | os.PathLike[str] | None,
    read_only: bool,
) -> tuple[int, bytes, bytes]:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*launcher, *args],
            stdin=subprocess.PIPE if stdin_open else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            preexec_fn=None if launcher or read_only else _die_with_parent(),
        )
    except OSError as exc:
        debug(LOGGER, "%s -> could not run: %s", shown, exc)
        if launcher and exc.filename == launcher[0]:
            raise _LauncherUnusable from exc
        raise RuntimeCallError(op, _launch_reason(args[0], exc)) from exc

    try:
        stdout, stderr, finished = _collect(proc, started + timeout)
        if not finished:
            _kill_group(proc)
            duration = time.monotonic() - started
            debug(LOGGER, "%s -> timed out after %.3fs, killed", shown, duration)
            raise RuntimeTimeoutError(op, timeout)
        returncode = proc.wait()
    except BaseException:
        # KeyboardInterrupt or the timeout above: the child must not outlive us.
        if proc.returncode is None:
            _kill_group(proc)
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return returncode, stdout, stderr


class _LauncherUnusable(Exception):
    """The launcher could not be executed; the command did not run."""


def run_interactive(argv: Sequence[str], *, op: str = "attach") -> int:
    """Run ``argv`` on the caller's terminal (stdin, stdout and stderr
    inherited) until it exits, and return its exit status.

    The child stays in the terminal's process group so that Ctrl-C reaches
    it; meanwhile this process ignores SIGINT so that the child alone decides
    what Ctrl-C means.
    """
    args = _checked(argv)
    shown = shlex.join(args)
    started = time.monotonic()
    restore = _shield_sigint()
    try:
        try:
            proc = subprocess.Popen(args, close_fds=True)
        except OSError as exc:
            debug(LOGGER, "%s -> could not run: %s", shown, exc)
            raise RuntimeCallError(op, _launch_reason(args[0], exc)) from exc
        try:
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    finally:
        restore()
    debug(LOGGER, "%s -> exit %d in %.3fs", shown, returncode, time.monotonic() - started)
    return returncode


_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None = None
_prctl_resolved = False

#: The launchers' own complaints before they exec: the command did not run.
_LAUNCHER_FAILURE = (
    rb"(setpriv|sprites-launch): (unrecognized option|invalid option|unknown signal"
    rb"|set parent death signal failed|failed to execute|no command given)[^\n]*\n"
    rb"(Try 'setpriv --help' for more information\.\n)?"
)
_SETPRIV = ("/usr/bin/setpriv", "/bin/setpriv")
_launcher_argv: tuple[str, ...] | None = None


def _launcher() -> tuple[str, ...]:
    """The argv prefix that makes a command die with the thread that started
    it, or ``()`` to use :func:`_die_with_parent` instead.

    A ``preexec_fn`` makes Python fork the whole interpreter and run Python
    code in the child, which blocks the calling thread for about 2 ms per call
    (more while other threads want the interpreter): an apply that starts
    many sprites spends most of its own time there. A small program that
    does the ``prctl`` and then execs the command lets Python vfork and
    return at once: the compiled launcher (:mod:`reconciler.drivers.launcher`,
    a static binary that starts in ~0.3 ms) where a C compiler could build
    it, else util-linux's ``setpriv --pdeathsig KILL`` (~0.8 ms). Both check
    nothing was run for a parent that is already gone: the launcher and the
    hook exit if the parent died before the ``prctl``, while setpriv leaves
    that instant (well under a millisecond) uncovered.
    """
    global _launcher_argv
    found = _launcher_argv
    if found is None:
        # Worked out in a local and published in one assignment: the first
        # calls of an apply come from several threads at once, and none may
        # see a half-made answer.
        found = ()
        if sys.platform.startswith("linux") and not os.environ.get("SPRITES_NO_SETPRIV"):
            from reconciler.drivers import launcher

            compiled = launcher.find()
            if compiled is not None:
                found = (compiled,)
            else:
                for path in _SETPRIV:
                    if os.access(path, os.X_OK):
                        found = (path, "--pdeathsig", "KILL", "--")
                        break
        _launcher_argv = found
    return found


_interpreted: dict[tuple[str, int, int, int], bool] = {}


def _has_own_interpreter(program: str) -> bool:
    """Whether ``program`` is an ELF binary or a ``#!`` script. setpriv
    execs with ``execvp``, which hands any other executable file to
    ``/bin/sh``; run directly, such a file is an "Exec format error", and
    that is what the user gets, launcher or not."""
    path = program if "/" in program else shutil.which(program)
    if path is None:
        return True  # not found: setpriv reports it, and the call reruns directly
    try:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        known = _interpreted.get(key)
        if known is None:
            with open(path, "rb") as handle:
                head = handle.read(4)
            known = _interpreted[key] = head == b"\x7fELF" or head[:2] == b"#!"
        return known
    except OSError:
        return True


def _launcher_failed(stderr: bytes) -> bool:
    """Whether ``stderr`` is all the launcher's, and says it ran nothing
    (with nothing on stdout, checked by the caller). Anything else, a program
    that prints "setpriv:" itself included, is the command's own outcome and
    is never run a second time; only a command that fails with exactly one of
    the launchers' refusals and prints nothing else cannot be told from it."""
    if not stderr.startswith((b"setpriv: ", b"sprites-launch: ")):
        return False
    import re

    return re.fullmatch(_LAUNCHER_FAILURE, stderr) is not None


def _disable_launcher() -> None:
    global _launcher_argv
    _launcher_argv = ()


def _die_with_parent() -> Callable[[], None] | None:
    """A hook run in the child before exec: the kernel SIGKILLs the child when
    the thread that started it dies (Linux ``PR_SET_PDEATHSIG``).

    A sprites process killed outright (SIGKILL, OOM) cannot kill its calls'
    process groups as a timeout or Ctrl-C does. A call that outlived it could
    act after the next apply listed the runtime, so that apply would start the
    same name again (and fail) or never record a sprite it did start. Its
    journal already says the call may have happened; the call must not go on
    happening. Processes the call forks (a daemonised VM) are not affected.
    """
    global _prctl, _prctl_resolved
    if not sys.platform.startswith("linux"):
        return None
    if not _prctl_resolved:
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = None
        _prctl_resolved = True  # only once _prctl holds the answer
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(255)

    return hook


def _checked(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    args = list(argv)
    if not args:
        raise ValueError("argv must not be empty")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {type(arg).__name__}")
        if "\x00" in arg:
            raise ValueError("argv items must not contain NUL bytes")
    return args


def _launch_reason(program: str, exc: OSError) -> str:
    detail = exc.strerror or str(exc)
    return f"cannot run '{program}': {detail}"


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes, bool]:
    """Read stdout and stderr until both close, or the child has exited and
    :data:`DRAIN_GRACE` has passed, or ``deadline``. The flag says whether
    the child finished before the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            limit = deadline if exited_at is None else min(deadline, exited_at + DRAIN_GRACE)
            if now >= limit:
                break
            wait = limit - now if exited_at is not None else min(limit - now, _POLL_INTERVAL)
            for key, _ in selector.select(timeout=wait):
                data = os.read(key.fd, _READ_SIZE)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fileobj)
    stdout = b"".join(chunks[proc.stdout.fileno()])
    stderr = b"".join(chunks[proc.stderr.fileno()])
    if proc.poll() is not None:
        return stdout, stderr, True
    remaining = deadline - time.monotonic()
    if remaining > 0:
        try:
            proc.wait(timeout=remaining)
            return stdout, stderr, True
        except subprocess.TimeoutExpired:
            pass
    return stdout, stderr, False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL whatever is left after
    :data:`KILL_GRACE` seconds, and reap the child."""
    pgid = proc.pid  # start_new_session makes the child its group's leader
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies do not count:
    an orphan may wait a while for init to reap it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _shield_sigint() -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return _noop
    # A Python-level handler, not SIG_IGN: ignored signals survive exec,
    # handlers are reset to the default in the child.
    previous = signal.signal(signal.SIGINT, _swallow)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore


def _swallow(signum: int, frame: FrameType | None) -> None:
    return None


def _noop() -> None:
    return None
