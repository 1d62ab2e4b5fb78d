"""Running a command inside a sprite through a runtime's own tool (the
built-in helper, ``wisp exec``), with stdin fed and stdout/stderr streamed.

:func:`run` is the one place that does it: an argv list (never a shell), the
child in its own process group, stdin from bytes, a file object or a file
descriptor (or empty), each output chunk handed to a sink as it arrives (or
kept), and a hard timeout after which the group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import io
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Protocol

from reconciler.errors import RuntimeCallError, RuntimeTimeoutError
from reconciler.record import record

#: Seconds between SIGTERM and SIGKILL for a command past its timeout.
KILL_GRACE = 2.0
#: Once the command has exited, how long to keep reading output that a
#: process it left in the background still holds open.
DRAIN_GRACE = 0.5
_READ_SIZE = 65536


class Sink(Protocol):
    """Where output goes as it arrives (``sys.stdout.buffer``, a capture...)."""

    def write(self, data: bytes, /) -> object: ...


#: What a command reads: bytes, a readable binary file object, a file
#: descriptor, or None for nothing (end of file at once).
Input = bytes | int | IO[bytes] | None


@record(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float


class Capture:
    """A sink keeping at most ``limit`` bytes: the first quarter and the last
    three quarters (where a command says how it ended), and how many bytes in
    between were dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> int:
        size = len(data)
        self.total += size
        first = self.limit // 4
        room = first - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            keep = self.limit - first
            if len(self.tail) > keep:
                del self.tail[: len(self.tail) - keep]
        return size

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def getvalue(self) -> bytes:
        return bytes(self.head) + bytes(self.tail)


def run(
    argv: Sequence[str],
    *,
    op: str,
    timeout: float | None,
    stdin: Input = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    pass_fds: Sequence[int] = (),
) -> Finished:
    """Run ``argv`` to its end. Output a sink is given for goes there as it
    comes (and is not kept); the rest is returned. ``timeout`` None or <= 0
    means no limit. Raises RuntimeTimeoutError past the timeout (the process
    group is killed first) and RuntimeCallError when it cannot start."""
    args = list(argv)
    feed: bytes | IO[bytes] | None = None
    child_stdin: int
    if stdin is None:
        child_stdin = subprocess.DEVNULL
    elif isinstance(stdin, int):
        child_stdin = stdin
    elif isinstance(stdin, (bytes, bytearray, memoryview)):
        feed = bytes(stdin)
        child_stdin = subprocess.PIPE
    else:
        fd = _fileno(stdin)
        if fd is not None:
            child_stdin = fd
        else:
            feed = stdin
            child_stdin = subprocess.PIPE
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=child_stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            cwd="/",
        )
    except OSError as exc:
        raise RuntimeCallError(op, f"cannot run '{args[0]}': {exc.strerror or exc}") from exc
    feeder: threading.Thread | None = None
    if feed is not None:
        assert proc.stdin is not None
        feeder = threading.Thread(target=_feed, args=(feed, proc.stdin), daemon=True)
        feeder.start()
    deadline = None if timeout is None or timeout <= 0 else started + timeout
    try:
        out, err, finished = _pump(proc, deadline, stdout, stderr)
        if not finished:
            _kill_group(proc)
            assert timeout is not None
            raise RuntimeTimeoutError(op, timeout)
        returncode = proc.wait()
    except BaseException:
        if proc.returncode is None:
            _kill_group(proc)
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return Finished(returncode, out, err, time.monotonic() - started)


def _fileno(stream: IO[bytes]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _feed(source: bytes | IO[bytes], pipe: IO[bytes]) -> None:
    """Copy the input into the child's stdin, then close it; a child that
    stops reading (exits) ends the copy."""
    try:
        if isinstance(source, bytes):
            pipe.write(source)
        else:
            while True:
                chunk = source.read(_READ_SIZE)
                if not chunk:
                    break
                pipe.write(chunk)
                pipe.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _pump(
    proc: subprocess.Popen[bytes],
    deadline: float | None,
    stdout: Sink | None,
    stderr: Sink | None,
) -> tuple[bytes, bytes, bool]:
    """Read both pipes until they close or the deadline passes; the flag
    says whether the child finished in time."""
    assert proc.stdout is not None and proc.stderr is not None
    sinks: dict[int, Sink | None] = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
    kept: dict[int, list[bytes]] = {fd: [] for fd in sinks}
    broken: set[int] = set()
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        exited_at: float | None = None
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            limit = deadline
            if exited_at is not None:
                drained = exited_at + DRAIN_GRACE
                limit = drained if limit is None else min(limit, drained)
            wait = None if limit is None else limit - now
            if wait is not None and wait <= 0:
                break
            if exited_at is None:
                wait = 0.1 if wait is None else min(wait, 0.1)
            for key, _ in selector.select(timeout=wait):
                data = os.read(key.fd, _READ_SIZE)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                sink = sinks[key.fd]
                if sink is None:
                    kept[key.fd].append(data)
                elif key.fd not in broken:
                    try:
                        sink.write(data)
                        flush = getattr(sink, "flush", None)
                        if flush is not None:
                            flush()
                    except (BrokenPipeError, ValueError):
                        broken.add(key.fd)  # the reader went away; keep draining
    out = b"".join(kept[proc.stdout.fileno()])
    err = b"".join(kept[proc.stderr.fileno()])
    if proc.poll() is not None:
        return out, err, True
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is None or remaining > 0:
        try:
            proc.wait(timeout=remaining)
            return out, err, True
        except subprocess.TimeoutExpired:
            pass
    return out, err, False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's group, SIGKILL what is left after
    :data:`KILL_GRACE` (at once when the child is gone), and reap."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
