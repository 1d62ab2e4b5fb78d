"""Fixtures for the CLI tests (the harness itself is in ``harness.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.harness import Sprites
from tests.helpers.fakewisp import FakeWisp


@pytest.fixture
def sprites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sprites]:
    for key in list(os.environ):
        if key.startswith("SPRITES_") or key.startswith("WRECKIT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    fake = FakeWisp(tmp_path / "fakewisp")
    helper = Sprites(root=root, fake=fake, state_dir=tmp_path / "state")
    helper.write_config()
    try:
        yield helper
    finally:
        fake.kill_leftovers()
