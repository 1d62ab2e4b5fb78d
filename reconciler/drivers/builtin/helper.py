"""The compiled sprite helper: built on first use from the package's own C
source and cached under ``<state_dir>/bin/`` by a hash of that source."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import threading

from reconciler.drivers import hostio
from reconciler.drivers.builtin import records
from reconciler.drivers.hostio import build_c_program, build_digest

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "native" / "sprite-helper.c"
CFLAGS = ("-O2", "-Wall")
INSTALL_HINT = "install gcc with 'apt-get install gcc'"
BUILD_TIMEOUT = 120.0

_lock = threading.Lock()
_digest_cache: dict[tuple[str, int, int], str] = {}


class HelperUnavailableError(Exception):
    """The helper cannot be built or found; the message says why, in one line."""


def source_digest() -> str:
    """A short hash of the helper source and the flags it is built with."""
    try:
        st = SOURCE.stat()
    except OSError as exc:
        raise HelperUnavailableError(f"sprite helper source missing: {SOURCE}") from exc
    key = (str(SOURCE), st.st_mtime_ns, st.st_size)
    digest = _digest_cache.get(key)
    if digest is None:
        # Every command looks it up: read the source once per version of it.
        digest = build_digest(SOURCE.read_bytes() + b"\0" + " ".join(CFLAGS).encode())
        _digest_cache.clear()
        _digest_cache[key] = digest
    return digest


def helper_path(state_dir: pathlib.Path) -> pathlib.Path:
    return state_dir / "bin" / f"sprite-helper-{source_digest()}"


def _usable(path: pathlib.Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise HelperUnavailableError(f"refusing to run {path}: not a regular file of ours")
    return bool(st.st_mode & stat.S_IXUSR)


def is_built(state_dir: pathlib.Path) -> bool:
    try:
        return _usable(helper_path(state_dir))
    except HelperUnavailableError:
        return False


def ensure(state_dir: pathlib.Path) -> pathlib.Path:
    """The helper binary for this source, building it if needed.

    Concurrent first uses (threads or processes) each build into a private
    temporary file and rename it into place, so every caller sees either no
    helper or a complete one.
    """
    path = helper_path(state_dir)
    if _usable(path):
        return path
    with _lock:
        if _usable(path):
            return path
        gcc = hostio.c_compiler()
        if gcc is None:
            raise HelperUnavailableError(
                f"the built-in runtime builds a small C helper and needs a compiler: {INSTALL_HINT}"
            )
        bin_dir = path.parent
        try:
            records.make_private_dir(bin_dir)
        except (OSError, records.UnsafePathError) as exc:
            raise HelperUnavailableError(f"cannot create {bin_dir}: {exc}") from exc
        try:
            problem = build_c_program(gcc, CFLAGS, SOURCE, path, BUILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise HelperUnavailableError("building the sprite helper timed out") from exc
        except OSError as exc:
            raise HelperUnavailableError(f"cannot build the sprite helper: {exc}") from exc
        if problem is not None:
            raise HelperUnavailableError(f"cannot build the sprite helper: {problem}")
    return path
