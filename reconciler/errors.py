"""The one exception tree of the project.

Every error a user can cause or meet carries a ``user_message`` (one line, no
traceback) and an optional ``hint``. The CLI boundary turns any
:class:`ReconcilerError` into ``❌ <message>`` and exit code 1; nothing else
calls ``sys.exit``.
"""

from __future__ import annotations

from reconciler.record import record


class ReconcilerError(Exception):
    """Base of every error that is reported to the user without a traceback."""

    exit_code = 1
    #: Printed before the message in human output.
    prefix = "❌ "

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.user_message = message
        self.hint = hint

    def render(self) -> str:
        text = f"{self.prefix}{self.user_message}"
        if self.hint:
            text += f"\n{self.hint}"
        return text


@record(frozen=True)
class Position:
    """Where in a file a problem is: 1-based line and column."""

    path: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.path
        if self.column is None:
            return f"{self.path}:{self.line}"
        return f"{self.path}:{self.line}:{self.column}"


class InputError(ReconcilerError):
    """Bad user input in a file: the message starts with file:line:col."""

    def __init__(
        self,
        position: Position,
        message: str,
        *,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.position = position
        self.field = field
        self.detail = message
        where = f"{field}: " if field else ""
        super().__init__(f"{position}: {where}{message}", hint=hint)


class ConfigError(InputError):
    """The Wreckit config (``.wreckit/config.json`` or its local overlay) is invalid."""


class ManifestError(InputError):
    """The sprites manifest is invalid."""


class AgentKindError(ReconcilerError):
    """``agent.kind`` is not ``sprite``; worded exactly as the user guide says."""

    prefix = ""

    def __init__(self, kind: str) -> None:
        super().__init__(
            f"Agent kind must be 'sprite' to use Sprite commands. Current kind: '{kind}'"
        )


class InvalidNameError(ReconcilerError):
    """A sprite or project name that may not reach a command line."""


class UsageError(ReconcilerError):
    """Options that do not fit together, or a value of the wrong form."""


class WispNotFoundError(ReconcilerError):
    """The configured wisp binary does not resolve to an executable."""

    def __init__(self, wisp_path: str) -> None:
        self.wisp_path = wisp_path
        super().__init__(
            f"Wisp CLI not found at '{wisp_path}'. Install Wisp to enable Sprite support"
        )


class RuntimeUnavailableError(ReconcilerError):
    """No runtime can serve this host (for example no wisp and no built-in runtime)."""


#: How each runtime operation reads in ``Failed to <...>: <reason>``.
_OP_PHRASES = {
    "attach": "attach to Sprite",
    "list": "list Sprites",
    "logs": "read Sprite logs",
    "exec": "exec in Sprite",
    "cp": "copy files of Sprite",
}


class RuntimeCallError(ReconcilerError):
    """A runtime operation failed; worded ``Failed to <op> Sprite: <reason>``."""

    def __init__(self, op: str, reason: str, *, stdout: str = "", stderr: str = "") -> None:
        self.op = op
        self.reason = reason
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"Failed to {_OP_PHRASES.get(op, f'{op} Sprite')}: {reason}")


class SpriteNotFoundError(RuntimeCallError):
    """The runtime has no sprite of that name."""


class SpriteExistsError(RuntimeCallError):
    """The runtime already has a sprite of that name."""


class RuntimeTimeoutError(RuntimeCallError):
    """A runtime call ran past ``agent.timeout`` and was killed."""

    def __init__(self, op: str, seconds: float) -> None:
        self.seconds = seconds
        shown = int(seconds) if float(seconds).is_integer() else seconds
        super().__init__(op, f"Command timed out after {shown} seconds")


class RuntimeOutputError(RuntimeCallError):
    """The runtime answered with output that does not follow its contract."""


class BudgetExceededError(ReconcilerError):
    """The desired end state does not fit the resource budget."""

    def __init__(self, dimension: str, wanted: str, limit: str, *, detail: str = "") -> None:
        self.dimension = dimension
        self.wanted = wanted
        self.limit = limit
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{dimension} exceeded: {wanted} desired, limit {limit}{extra}")


class OwnershipError(ReconcilerError):
    """A desired sprite name is already taken by a sprite this project does not own."""


class LockError(ReconcilerError):
    """The project's state lock is held by someone else or was left behind."""


class StateError(ReconcilerError):
    """The project's state file cannot be read or written safely."""


class StalePlanError(ReconcilerError):
    """A saved plan no longer matches the manifest or the observed inventory."""


class ApprovalError(ReconcilerError):
    """An apply or destroy was not approved."""


class ApplyFailedError(ReconcilerError):
    """One or more actions of an apply failed (each was already reported)."""


#: Errors that retrying cannot fix: the manifest (or the situation) must change first.
TERMINAL_ERRORS: tuple[type[ReconcilerError], ...] = (
    InputError,
    InvalidNameError,
    UsageError,
    AgentKindError,
    BudgetExceededError,
    OwnershipError,
    StalePlanError,
)


def is_terminal(error: BaseException) -> bool:
    """Would the same request fail the same way again? A bad manifest or spec,
    an exceeded budget or an ownership conflict are terminal; runtime failures,
    timeouts, a busy lock and anything unknown are transient (worth retrying)."""
    return isinstance(error, TERMINAL_ERRORS)
