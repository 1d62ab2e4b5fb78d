"""Fixtures for the unit tests (value builders live in ``builders.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def manifest_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a manifest under tmp_path and return its path."""

    def write(text: str | bytes, name: str = "sprites.yaml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return write
