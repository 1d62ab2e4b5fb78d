"""Fixtures for the driver tests.

The wisp contract tests take ``wisp_impl`` and run once per entry of
:data:`WISP_IMPLEMENTATIONS`, so any wisp-compatible executable can be held
to the same contract. Tests marked ``fakewisp_only`` need fault scripting
and run only on implementations with ``scriptable=True``; they reach the
script through the ``fake`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.drivers.wisp import WispDriver
from tests.helpers.fakewisp import FakeWisp, fakewisp  # noqa: F401  (re-exported fixture)


@dataclass
class WispHarness:
    """A wisp-compatible executable set up for one test."""

    path: str
    #: Variables set in the test's environment while it runs.
    env: dict[str, str] = field(default_factory=dict)
    #: The scripting handle, for implementations that support it.
    fake: FakeWisp | None = None
    teardown: Callable[[], None] | None = None


@dataclass(frozen=True)
class WispImplementation:
    """An executable the contract tests run against; ``setup`` gets a fresh
    directory and returns the harness for one test."""

    id: str
    setup: Callable[[Path], WispHarness]
    scriptable: bool = False


def _fakewisp(directory: Path) -> WispHarness:
    fake = FakeWisp(directory)
    return WispHarness(path=fake.path, fake=fake, teardown=fake.kill_leftovers)


_built_helper: list[Path] = []


def _sprites_wisp(directory: Path) -> WispHarness:
    """The built-in runtime's wisp-compatible command on a private state dir,
    with the helper built once per session and linked in."""
    import shutil

    from reconciler.drivers.builtin import helper
    from tests.drivers.builtin.conftest import RUNTIME_PROBLEM
    from tests.helpers.builtinstate import cleanup_state, seed_helper

    if RUNTIME_PROBLEM:
        pytest.skip(f"built-in runtime unavailable: {RUNTIME_PROBLEM}")
    if not _built_helper:
        _built_helper.append(helper.ensure(directory.parent / "helper-cache"))
    state = directory / "state"
    seed_helper(state, _built_helper[0])
    command = shutil.which("sprites-wisp")
    if command is None:
        pytest.skip("sprites-wisp is not installed (pip install -e .)")
    return WispHarness(
        path=command,
        env={"SPRITES_STATE_DIR": str(state), "SPRITES_GRACE": "2"},
        teardown=lambda: cleanup_state(state),
    )


#: Every wisp-compatible executable the contract tests run against.
WISP_IMPLEMENTATIONS: list[WispImplementation] = [
    WispImplementation("fakewisp", _fakewisp, scriptable=True),
    WispImplementation("builtin-sprites-wisp", _sprites_wisp),
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fakewisp_only: needs fault scripting; runs only on scriptable wisps"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "wisp_impl" not in metafunc.fixturenames:
        return
    impls = WISP_IMPLEMENTATIONS
    if metafunc.definition.get_closest_marker("fakewisp_only") is not None:
        impls = [impl for impl in impls if impl.scriptable]
    metafunc.parametrize("wisp_impl", impls, ids=[impl.id for impl in impls])


@pytest.fixture
def wisp(
    wisp_impl: WispImplementation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WispHarness]:
    harness = wisp_impl.setup(tmp_path / wisp_impl.id)
    for key, value in harness.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield harness
    finally:
        if harness.teardown is not None:
            harness.teardown()


@pytest.fixture
def fake(wisp: WispHarness) -> FakeWisp:
    """The fault-scripting handle; only for ``fakewisp_only`` tests."""
    assert wisp.fake is not None, "mark the test fakewisp_only"
    return wisp.fake


@pytest.fixture
def make_driver(wisp: WispHarness) -> Callable[..., WispDriver]:
    def make(timeout: float = 10.0) -> WispDriver:
        return WispDriver(wisp.path, timeout=timeout)

    return make


@pytest.fixture
def driver(make_driver: Callable[..., WispDriver]) -> WispDriver:
    return make_driver()
