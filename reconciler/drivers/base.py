"""The driver protocol every runtime implements (wisp CLI, built-in, ...).

A driver turns one engine operation into runtime calls and reports back in
the types below. Drivers raise only :class:`reconciler.errors.RuntimeCallError`
(and its subclasses) for runtime failures, worded ``Failed to <op> Sprite:
<reason>``. The protocol carries no single-host assumption: a sprite's pid is
optional and its address is an opaque string, so a cluster driver can
implement it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Protocol, runtime_checkable

from reconciler.models.observed import Inventory
from reconciler.record import field, record


@record(frozen=True, slots=True)
class StartRequest:
    """Everything a runtime needs to start one sprite. Names are validated."""

    name: str
    memory: int
    cpus: int
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: Further per-sprite settings a runtime may honour (workdir, user,
    #: mounts, network, pids, kernel, ...); unknown keys are ignored.
    options: Mapping[str, object] = field(default_factory=dict)


@record(frozen=True, slots=True)
class CallResult:
    """The outcome of a successful runtime call, with its raw output."""

    stdout: str = ""
    stderr: str = ""
    id: str | None = None
    pid: int | None = None
    address: str | None = None


@record(frozen=True, slots=True)
class ExecResult:
    """A command run inside a sprite; ``exit_code`` is the command's own
    (128 + N when a signal N ended it). Output streamed to a sink is not kept
    here."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    duration: float = 0.0


class OutputSink(Protocol):
    """Where exec output goes as it arrives: ``sys.stdout.buffer``, a capture..."""

    def write(self, data: bytes, /) -> object: ...


#: What an exec'd command reads on stdin: bytes, a readable binary file
#: object, a file descriptor, or None (end of file at once).
ExecInput = bytes | int | IO[bytes] | None


@runtime_checkable
class Driver(Protocol):
    """One runtime. Implementations must be safe to call from several threads."""

    #: Stable identifier shown to users: "wisp", "builtin", "microvm".
    name: str

    def list(self) -> Inventory:
        """Every sprite the runtime knows, running or not."""
        ...

    def start(self, request: StartRequest) -> CallResult:
        """Start a sprite; raise SpriteExistsError if the name is taken."""
        ...

    def kill(self, name: str) -> CallResult:
        """Terminate a sprite and free its resources; SpriteNotFoundError if unknown."""
        ...

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        """With ``interactive`` the caller's terminal is connected until the user
        detaches; otherwise the recent console output is returned."""
        ...

    def logs(self, name: str | None) -> CallResult:
        """The runtime's log lines, for one sprite or all."""
        ...

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
        """Run ``argv`` inside a running sprite and wait for it. ``env`` adds
        to the sprite's environment, ``workdir`` and ``user`` override the
        sprite's own; output goes to ``stdout``/``stderr`` as it arrives when
        given, else it is returned. ``timeout`` None is the runtime's call
        timeout, <= 0 none. Raises SpriteNotFoundError, RuntimeCallError (the
        command could not be run: not running, no such program...) and
        RuntimeTimeoutError; a command that ran returns, whatever its exit code."""
        ...

    def close(self) -> None:
        """Release whatever the driver holds (connections, helpers)."""
        ...
