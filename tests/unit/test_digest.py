"""sha256_hex agrees with hashlib on both sides of its size threshold."""

from __future__ import annotations

import hashlib

import pytest

from reconciler import digest


@pytest.mark.parametrize("size", [0, 1, 1000, digest.SMALL, digest.SMALL + 1, 3 * digest.SMALL])
def test_the_digest_is_sha256(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert digest.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_without_the_builtin_it_uses_hashlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest, "_builtin", None)
    assert digest.sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
