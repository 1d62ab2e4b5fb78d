"""A minimal synchronous QMP client (QEMU Machine Protocol) over a unix socket.

One connection per use: connect, read the greeting, negotiate capabilities,
run commands, close. Every read and write is bounded by a timeout, so a
wedged QEMU cannot hang the caller. Asynchronous events that arrive
between replies are skipped.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

from reconciler.drivers.hostio import connect_unix

#: A QMP reply is small; anything larger than this is not QEMU talking.
MAX_REPLY = 1 << 20


class QMPError(Exception):
    """The connection failed, timed out, or QEMU answered with an error."""


class QMPTimeout(QMPError):
    """QEMU did not answer in time."""


class QMP:
    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._buffer = b""
        try:
            self._sock = connect_unix(path, timeout)
        except TimeoutError:
            raise QMPTimeout(f"QMP socket {path}: connect timed out") from None
        except OSError as exc:
            raise QMPError(f"QMP socket {path}: {exc.strerror or exc}") from None
        try:
            greeting = self._read()
            if "QMP" not in greeting:
                raise QMPError(f"QMP socket {path}: not a QMP greeting")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> QMP:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._deadline = time.monotonic() + self.timeout
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except TimeoutError:
            raise QMPTimeout(f"QMP {command}: send timed out") from None
        except OSError as exc:
            raise QMPError(f"QMP {command}: {exc.strerror or exc}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                desc = error.get("desc") if isinstance(error, dict) else error
                raise QMPError(f"QMP {command}: {desc}")
            if "return" in reply:
                return reply["return"]

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout("QMP: no answer in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise QMPTimeout("QMP: no answer in time") from None
            except OSError as exc:
                raise QMPError(f"QMP: {exc.strerror or exc}") from None
            if not chunk:
                raise QMPError("QMP: connection closed")
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY:
                raise QMPError("QMP: reply too large")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            raise QMPError("QMP: invalid JSON from QEMU") from None
        if not isinstance(value, dict):
            raise QMPError("QMP: unexpected reply")
        return value


def query_status(path: str, *, timeout: float = 5.0) -> str:
    """The VM's run state: ``running``, ``shutdown``, ``guest-panicked``, ..."""
    with QMP(path, timeout=timeout) as client:
        result = client.execute("query-status")
    status = result.get("status") if isinstance(result, dict) else None
    if not isinstance(status, str):
        raise QMPError("QMP query-status: no status in the reply")
    return status


def quit_vm(path: str, *, timeout: float = 5.0) -> None:
    """Ask QEMU to exit now (the guest is stopped, not shut down cleanly)."""
    with QMP(path, timeout=timeout) as client:
        try:
            client.execute("quit")
        except QMPError as exc:
            # QEMU may close the connection before or right after its reply.
            if "connection closed" not in str(exc):
                raise
