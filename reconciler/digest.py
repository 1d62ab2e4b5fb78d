"""SHA-256 hex digests without loading OpenSSL for small inputs.

``hashlib`` loads OpenSSL's libcrypto on import, a few milliseconds that a
short command (an apply of a small manifest) notices. CPython's own SHA-256
gives the same digest and costs nothing to import, but is several times
slower per byte, so large inputs (a 10,000-sprite manifest or inventory)
still go through ``hashlib``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Inputs up to this size use CPython's built-in implementation.
SMALL = 16 << 10


def _find_builtin() -> Callable[[bytes], Any] | None:
    import importlib

    for module in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        try:
            found: Callable[[bytes], Any] = importlib.import_module(module).sha256
            return found
        except (ImportError, AttributeError):
            continue
    return None


_builtin = _find_builtin()


def sha256_hex(data: bytes) -> str:
    if _builtin is not None and len(data) <= SMALL:
        return str(_builtin(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()
