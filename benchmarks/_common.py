"""What the command-line benchmarks share: timing commands interleaved with
their baselines, in one run, on a machine that is busy with other work.

Every measured command and every baseline runs once per round, the order
rotating from round to round, so that load on the machine hits them alike.
The figure of a command is its best (minimum) wall time over the rounds: the
run least disturbed by others; the median is printed beside it. Ratios of
best times are the claims, never absolute times.
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import reconciler

REPO = Path(__file__).resolve().parent.parent
BASELINE_IMPORTS = "import click, yaml, pydantic"


def sprites_command() -> list[str]:
    """The installed ``sprites`` console script of this interpreter (what users run)."""
    script = Path(sysconfig.get_path("scripts")) / "sprites"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def precompile() -> None:
    """Byte-compile the package as an install does. A source newer than its
    .pyc is compiled again by every process (and never cached when
    PYTHONDONTWRITEBYTECODE is set), which would time the compiler."""
    compileall.compile_dir(Path(reconciler.__file__).parent, quiet=1)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SPRITES_*/WRECKIT_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPRITES_", "WRECKIT_"))}
    env.update(extra)
    return env


def write_executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def runner(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: Callable[[subprocess.CompletedProcess[bytes]], None] | None = None,
) -> Callable[[], None]:
    """A function that runs ``argv`` once (output discarded unless ``check``
    wants it) and fails loudly when it exits non-zero."""

    def run() -> None:
        completed = subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if check else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if completed.returncode != 0:
            raise SystemExit(
                f"benchmark command failed ({completed.returncode}): {' '.join(argv)}\n"
                + completed.stderr.decode(errors="replace")[-2000:]
            )
        if check is not None:
            check(completed)

    return run


@dataclass
class Samples:
    """Wall times in seconds, per label."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def best(self, label: str) -> float:
        return min(self.times[label])

    def median(self, label: str) -> float:
        return statistics.median(self.times[label])

    def ms(self, label: str) -> str:
        return f"{self.best(label) * 1000:.1f} ms (median {self.median(label) * 1000:.1f})"


def interleave(
    tasks: Mapping[str, Callable[[], None]],
    rounds: int,
    *,
    before: Callable[[str], None] | None = None,
    samples: Samples | None = None,
) -> Samples:
    """Time each task once per round, rotating the order every round.
    ``before(label)`` runs untimed ahead of each task (to reset a fixture)."""
    result = samples or Samples()
    labels = list(tasks)
    for label in labels:
        result.times.setdefault(label, [])
    for index in range(rounds):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if before is not None:
                before(label)
            began = time.perf_counter()
            tasks[label]()
            result.times[label].append(time.perf_counter() - began)
    return result


@dataclass
class Check:
    """One line of the verdict: a figure against its target."""

    label: str
    figure: str
    ratio: float
    limit: float
    #: Why the target does not apply to this run (a smaller size than it is
    #: set for): the line is printed, the verdict ignores it.
    not_applied: str | None = None

    @property
    def ok(self) -> bool:
        return self.not_applied is not None or self.ratio <= self.limit

    def line(self) -> str:
        target = f"target <= {self.limit:g}x"
        if self.not_applied is not None:
            return f"info {self.label}: {self.figure} = {self.ratio:.2f}x ({target} {self.not_applied})"
        verdict = "ok  " if self.ok else "MISS"
        return f"{verdict} {self.label}: {self.figure} = {self.ratio:.2f}x ({target})"


def verdict(checks: Sequence[Check]) -> int:
    """Print the checks as the last lines; the exit status for the script."""
    for check in checks:
        print(check.line())
    ok = all(check.ok for check in checks)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def in_state_dir(given: Path | None, body: Callable[[Path], int]) -> int:
    """``body`` on the state dir given (``--state-dir``), or on a temporary
    one removed afterwards."""
    if given is not None:
        return body(given)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sprites-bench-") as tmp:
        return body(Path(tmp))


def print_checks(checks: Sequence[tuple[str, str, str, bool]]) -> int:
    """One ``ok``/``MISS`` line per (label, value, target, ok); the exit status."""
    for label, value, target, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {label}: {value} (target {target})")
    return 0 if all(ok for *_, ok in checks) else 1
