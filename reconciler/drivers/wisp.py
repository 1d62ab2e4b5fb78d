"""The driver for the ``wisp`` command-line runtime.

It speaks the contract in ``wisp-cli.md``: one wisp process per call, names
validated before they reach argv, ``Failed to <op> Sprite: <reason>`` from the
last stderr line of a failed call, and a ``list --json`` parser that tolerates
log lines around the JSON array.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.bulk import collector_paused
from reconciler.drivers import process
from reconciler.drivers.base import CallResult, ExecInput, ExecResult, OutputSink, StartRequest
from reconciler.errors import (
    InvalidNameError,
    RuntimeCallError,
    RuntimeOutputError,
    SpriteExistsError,
    SpriteNotFoundError,
    WispNotFoundError,
)
from reconciler.models import units
from reconciler.models.observed import STATES, Inventory, ObservedSprite

DEFAULT_TIMEOUT = 300.0
#: How much of an unparseable ``list --json`` output an error shows.
OUTPUT_EXCERPT_BYTES = 200

_ID_RE = re.compile(r"Started Sprite VM with ID:\s*(\S+)")
_ADDRESS_RE = re.compile(r"Connection:\s*(\S+)")
_PID_RE = re.compile(r"\(PID:\s*(\d+)\)")
_NOT_FOUND_RE = re.compile(r"sprite '[^']*' not found")
_EXISTS_RE = re.compile(r"sprite '[^']*' already exists")
_ERROR_PREFIX_RE = re.compile(r"^(?:error|fatal):\s*", re.IGNORECASE)
_NO_EXEC_RE = re.compile(r"unknown command '?exec'?", re.IGNORECASE)
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: How much of exec's stderr is kept to recognise wisp's own failures.
_STDERR_TAIL = 4096
#: The exit status of ``wisp exec`` when the command could not be run at all.
EXEC_SETUP_FAILED = 125
#: What wisp's own exec failures start with.
_OWN_FAILURE_STARTS = (
    "error:",
    "fatal:",
    "unknown command",
    "sprite '",
    "cannot run ",
    "cannot enter ",
    "cannot switch to user ",
    "unknown user ",
    "invalid ",
)
_OWN_FAILURE_RE = re.compile(
    r"^(?:(?:error|fatal):\s*)?(?:unknown command|sprite '[^']*' (?:not found|is not running)"
    r"|cannot run |cannot enter |cannot switch to user |unknown user |invalid )",
    re.IGNORECASE,
)


def resolve_wisp(wisp_path: str) -> str | None:
    """The absolute path of the wisp executable ``wisp_path`` names, or None.

    A value with a ``/`` is a path and must be an executable file; a bare
    name is looked up on ``PATH``.
    """
    if not wisp_path:
        return None
    if "/" in wisp_path:
        candidate = os.path.abspath(os.path.expanduser(wisp_path))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        return None
    found = shutil.which(wisp_path)
    return os.path.abspath(found) if found else None


class WispDriver:
    """Runs sprites through the ``wisp`` executable. Safe to share between threads."""

    name = "wisp"

    def __init__(self, wisp_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.wisp_path = wisp_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._resolved: str | None = resolve_wisp(wisp_path)

    @property
    def executable(self) -> str:
        """The resolved wisp binary; WispNotFoundError if there is none."""
        with self._lock:
            if self._resolved is None:
                self._resolved = resolve_wisp(self.wisp_path)
            if self._resolved is None:
                raise WispNotFoundError(self.wisp_path)
            return self._resolved

    def version(self) -> str:
        """What ``wisp --version`` prints, e.g. ``wisp 0.9.0``."""
        completed = self._call("version", ["--version"])
        return completed.stdout.strip()

    def list(self) -> Inventory:
        completed = self._call("list", ["list", "--json"])
        with collector_paused():
            entries = parse_list_output(completed.stdout)
            sprites = tuple(_observed(entry, index) for index, entry in enumerate(entries))
        return Inventory(sprites=sprites, raw=completed.stdout)

    def start(self, request: StartRequest) -> CallResult:
        name = _checked_name(request.name)
        argv = [
            "start",
            name,
            "--memory",
            memory_argument(request.memory),
            "--cpus",
            str(request.cpus),
        ]
        completed = self._call("start", argv)
        id_match = _ID_RE.search(completed.stdout)
        address_match = _ADDRESS_RE.search(completed.stdout)
        return CallResult(
            stdout=completed.stdout,
            stderr=completed.stderr,
            id=id_match.group(1) if id_match else None,
            address=address_match.group(1) if address_match else None,
        )

    def kill(self, name: str) -> CallResult:
        completed = self._call("kill", ["kill", _checked_name(name)])
        pid_match = _PID_RE.search(completed.stdout)
        return CallResult(
            stdout=completed.stdout,
            stderr=completed.stderr,
            pid=int(pid_match.group(1)) if pid_match else None,
        )

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        argv = ["attach", _checked_name(name)]
        if not interactive:
            completed = self._call("attach", argv)
            return CallResult(stdout=completed.stdout, stderr=completed.stderr)
        returncode = process.run_interactive([self.executable, *argv], op="attach")
        if returncode != 0:
            raise RuntimeCallError("attach", f"exit status {returncode}")
        return CallResult()

    def logs(self, name: str | None) -> CallResult:
        argv = ["logs"] if name is None else ["logs", _checked_name(name)]
        completed = self._call("logs", argv)
        return CallResult(stdout=completed.stdout, stderr=completed.stderr)

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: ExecInput = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
    ) -> ExecResult:
        """``wisp exec <name> [--env K=V]... [--workdir D] [--user U] [--stdin]
        -- argv``: stdout and stderr pass through (and stdin with
        ``--stdin``), the exit status is the command's. The options are given
        only when needed, so a wisp that knows only the plain form still runs
        plain commands."""
        args = ["exec", _checked_name(name)]
        for key, value in (env or {}).items():
            if not _ENV_KEY_RE.fullmatch(key) or "\0" in value:
                raise RuntimeCallError("exec", f"invalid environment variable {key!r}")
            args += ["--env", f"{key}={value}"]
        if workdir is not None:
            args += ["--workdir", workdir]
        if user is not None:
            args += ["--user", str(user)]
        if stdin is not None:
            args.append("--stdin")
        if not argv:
            raise RuntimeCallError("exec", "exec needs a command")
        args += ["--", *argv]
        from reconciler.drivers import execio  # only exec streams; list starts without it

        tail = _Tail(stderr)
        seen = _Seen(stdout)
        finished = execio.run(
            [self.executable, *args],
            op="exec",
            timeout=self.timeout if timeout is None else timeout,
            stdin=stdin,
            stdout=seen,
            stderr=tail,
        )
        failed = finished.returncode != 0 and not seen.any
        if not failed:
            tail.release()
        if failed:
            reason = failure_reason(tail.text(), finished.returncode)
            if _NO_EXEC_RE.search(reason):
                raise RuntimeCallError(
                    "exec",
                    f"this wisp ({self.executable}) has no exec command "
                    "(it answered: unknown command 'exec'); update wisp to run commands in sprites",
                )
            if tail.lines() == 1 and _NOT_FOUND_RE.fullmatch(reason):
                raise SpriteNotFoundError("exec", reason)
            own = tail.lines() == 1 and bool(_OWN_FAILURE_RE.search(tail.text().strip()))
            if own and finished.returncode == EXEC_SETUP_FAILED:
                raise RuntimeCallError("exec", reason)
            tail.release()
        return ExecResult(
            exit_code=finished.returncode,
            stdout=seen.getvalue(),
            stderr=tail.getvalue(),
            duration=finished.duration,
        )

    def close(self) -> None:
        return None

    def _call(self, op: str, args: Sequence[str]) -> process.Completed:
        completed = process.run(
            [self.executable, *args],
            timeout=self.timeout,
            op=op,
            read_only=op in _READ_ONLY,
        )
        if completed.returncode != 0:
            raise _call_error(op, completed)
        return completed


#: Calls that change nothing: they need not die with a sprites process killed outright.
_READ_ONLY = frozenset({"version", "list", "logs"})


class _Seen:
    """Passes stdout on (or keeps it), noting whether any came."""

    def __init__(self, sink: OutputSink | None) -> None:
        self.sink = sink
        self.any = False
        self.kept = bytearray()

    def write(self, data: bytes) -> None:
        self.any = self.any or bool(data)
        if self.sink is None:
            self.kept += data
        else:
            self.sink.write(data)
            flush = getattr(self.sink, "flush", None)
            if flush is not None:
                flush()

    def getvalue(self) -> bytes:
        return bytes(self.kept)


class _Tail(_Seen):
    """Passes stderr on (or keeps it), remembering its end. A first line that
    reads like wisp's own failure is held back until the call ends, so a
    failure is reported once, as an error, not also as the command's output."""

    def __init__(self, sink: OutputSink | None) -> None:
        super().__init__(sink)
        self.tail = bytearray()
        self.held = bytearray()
        self.holding = sink is not None

    def write(self, data: bytes) -> None:
        self.tail += data
        del self.tail[:-_STDERR_TAIL]
        if self.holding:
            self.held += data
            first, newline, _ = bytes(self.held).partition(b"\n")
            line = first.decode("utf-8", "replace")
            if newline and _OWN_FAILURE_RE.search(line):
                return
            if not newline and _may_be_own_failure(line):
                return
            self.release()
            return
        super().write(data)

    def release(self) -> None:
        """Pass on what was held back (the call was the command's after all)."""
        self.holding = False
        if self.held:
            held, self.held = bytes(self.held), bytearray()
            super().write(held)

    def text(self) -> str:
        return self.tail.decode("utf-8", "replace")

    def lines(self) -> int:
        return len([line for line in self.text().splitlines() if line.strip()])


def _may_be_own_failure(start: str) -> bool:
    """Whether a line beginning ``start`` could still be one of wisp's own failures."""
    text = _ERROR_PREFIX_RE.sub("", start).lower()
    return len(start) < 200 and any(
        prefix.startswith(text) or text.startswith(prefix) for prefix in _OWN_FAILURE_STARTS
    )


def memory_argument(size: int) -> str:
    """``--memory`` in the units the contract names: KiB, MiB or GiB, else
    plain bytes."""
    shown = units.format_size(size)
    if shown.endswith("TiB"):
        return f"{size >> 30}GiB"
    if shown.endswith("iB"):
        return shown
    return str(size)


def _checked_name(name: object) -> str:
    problem = units.name_problem(name)
    if problem is not None:
        raise InvalidNameError(problem)
    assert isinstance(name, str)
    return name


def failure_reason(stderr: str, returncode: int) -> str:
    """The reason a failed call gives: its last non-empty stderr line."""
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if line:
            return _ERROR_PREFIX_RE.sub("", line) or line
    return f"exit status {returncode}"


def _call_error(op: str, completed: process.Completed) -> RuntimeCallError:
    reason = failure_reason(completed.stderr, completed.returncode)
    kind: type[RuntimeCallError] = RuntimeCallError
    if _NOT_FOUND_RE.search(reason):
        kind = SpriteNotFoundError
    elif _EXISTS_RE.search(reason):
        kind = SpriteExistsError
    return kind(op, reason, stdout=completed.stdout, stderr=completed.stderr)


def parse_list_output(stdout: str) -> list[Any]:
    """The JSON array in ``wisp list --json`` output, skipping log lines
    before or after it; RuntimeOutputError when there is none."""
    candidates = _array_candidates(stdout)
    # Prefer an array that is alone on its lines; then any whose items are
    # objects (a log line such as "[1/3] ..." can start with a bracket too).
    for value, alone in candidates:
        if alone and _all_objects(value):
            return value
    for value, _ in candidates:
        if _all_objects(value):
            return value
    raise RuntimeOutputError("list", f"invalid JSON from 'wisp list --json': {_excerpt(stdout)}")


def _array_candidates(text: str) -> list[tuple[list[Any], bool]]:
    decoder = json.JSONDecoder()
    found: list[tuple[list[Any], bool]] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        start = offset + (len(line) - len(line.lstrip()))
        offset += len(line)
        if not text.startswith("[", start):
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if not isinstance(value, list):
            continue
        newline = text.find("\n", end)
        rest = text[end:] if newline < 0 else text[end:newline]
        found.append((value, not rest.strip()))
    return found


def _all_objects(value: list[Any]) -> bool:
    return all(isinstance(item, dict) for item in value)


def _excerpt(text: str) -> str:
    return text.encode("utf-8")[:OUTPUT_EXCERPT_BYTES].decode("utf-8", "ignore")


def _observed(entry: dict[str, Any], index: int) -> ObservedSprite:
    def bad(problem: str) -> RuntimeOutputError:
        return RuntimeOutputError(
            "list", f"invalid entry {index} from 'wisp list --json': {problem}"
        )

    ident = entry.get("id")
    name = entry.get("name")
    state = entry.get("state")
    pid = entry.get("pid")
    address = entry.get("address")
    if not isinstance(ident, str):
        raise bad(f"'id' must be a string, got {ident!r}")
    if not isinstance(name, str):
        raise bad(f"'name' must be a string, got {name!r}")
    if state not in STATES:
        raise bad(f"'state' must be one of {', '.join(STATES)}, got {state!r}")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise bad(f"'pid' must be an integer, got {pid!r}")
    if address is not None and not isinstance(address, str):
        raise bad(f"'address' must be a string, got {address!r}")
    return ObservedSprite(
        id=ident, name=name, state=state, pid=pid, address=address, runtime="wisp"
    )
