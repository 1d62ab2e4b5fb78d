"""The compiled launcher through which runtime calls start (see
:func:`reconciler.drivers.process.run`): ``native/launch.c``, a static
binary that sets the parent-death signal and execs the call.

util-linux's ``setpriv --pdeathsig KILL`` does the same, but it is
dynamically linked and takes ~0.8 ms to start here against ~0.3 ms for the
static launcher: an apply of 50 starts spends ~25 ms less CPU, most of it
while the calls of a round are being started. The binary is built the first
time a process needs it, where a C compiler is installed, and kept in the
user's cache directory (``$XDG_CACHE_HOME/sprites/bin``, by default
``~/.cache/sprites/bin``) under a name that hashes its source, the flags and
the machine; everything works without it (setpriv, then a hook run before
exec, take its place).
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import threading

from reconciler.debuglog import debug
from reconciler.drivers.hostio import (
    UnsafePathError,
    build_c_program,
    build_digest,
    c_compiler,
    make_private_dir,
)

SOURCE = pathlib.Path(__file__).resolve().parent / "native" / "launch.c"
#: Tried in order: a static binary starts fastest; where no static C library
#: is installed, a dynamic one still starts faster than setpriv.
FLAG_SETS = (("-O2", "-static"), ("-O2",))
BUILD_TIMEOUT = 60.0
NAME = "sprites-launch"

_lock = threading.Lock()
_found: str | None = None
_resolved = False


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = pathlib.Path(base) if os.path.isabs(base) else pathlib.Path.home() / ".cache"
    return root / "sprites" / "bin"


def binary_path() -> pathlib.Path:
    """Where this source's launcher is kept for this machine."""
    data = SOURCE.read_bytes() + repr(FLAG_SETS).encode() + os.uname().machine.encode()
    return cache_dir() / f"{NAME}-{build_digest(data)}"


def find() -> str | None:
    """The launcher's path, built now if it is missing and a compiler is
    installed; None when there is none (the answer is kept for the process)."""
    global _found, _resolved
    if _resolved:
        return _found
    with _lock:
        if not _resolved:
            try:
                _found = _locate_or_build()
            except (OSError, RuntimeError, subprocess.SubprocessError, UnsafePathError) as exc:
                debug("sprites.runtime", "no compiled launcher: %s", exc)
                _found = None
            _resolved = True
    return _found


def forget() -> None:
    """Look again at the next :func:`find` (tests, and a launcher that failed)."""
    global _found, _resolved
    with _lock:
        _found, _resolved = None, False


def _usable(path: pathlib.Path) -> bool:
    """Whether ``path`` is a launcher to run: a regular executable file of
    ours that no one else may write. Anything else there is left alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o022
        and bool(st.st_mode & stat.S_IXUSR)
    )


def _locate_or_build() -> str | None:
    path = binary_path()
    if _usable(path):
        return str(path)
    if os.path.lexists(path):
        debug("sprites.runtime", "not running %s: not a private file of ours", path)
        return None
    compiler = c_compiler()
    if compiler is None:
        return None
    make_private_dir(path.parent)
    for flags in FLAG_SETS:
        problem = build_c_program(compiler, flags, SOURCE, path, BUILD_TIMEOUT)
        if problem is None:
            return str(path)
        debug("sprites.runtime", "building %s %s failed: %s", NAME, flags, problem)
    return None
