"""A fake ``wisp`` for tests in any folder (CLI, reliability, benchmarks).

``FakeWisp(directory)`` lays out a private inventory, fault script, history
and call log under ``directory`` and writes ``directory/bin/wisp``: a small
wrapper that runs ``tests/drivers/fakewisp.py`` with those files, so it can be
given as ``wispPath`` (``fake.path``) or put on ``PATH`` (``fake.bin_dir``)
and works from any process without extra environment. The fault script
schema is documented in ``tests/drivers/fakewisp.py``.

Example::

    fake = FakeWisp(tmp_path / "wisp")
    fake.add_sprite("agent-1")
    fake.script(fail={"start": "insufficient memory"}, delay={"kill": 0.2})
    driver = WispDriver(fake.path, timeout=5)
    ...
    assert fake.peak()["running"] <= 3
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

FAKEWISP = Path(__file__).resolve().parent.parent / "drivers" / "fakewisp.py"
MiB = 1 << 20

_module: ModuleType | None = None


def fakewisp_module() -> ModuleType:
    """``tests/drivers/fakewisp.py`` imported as a module (its state helpers)."""
    global _module
    if _module is None:
        spec = importlib.util.spec_from_file_location("_fakewisp_script", FAKEWISP)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _module = module
    return _module


class FakeWisp:
    """One fake wisp installation with its own inventory."""

    def __init__(self, directory: Path | str, *, name: str = "wisp") -> None:
        self.directory = Path(directory)
        self.bin_dir = self.directory / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.directory / "state.json"
        self.script_file = self.directory / "script.json"
        self.calls_file = self.directory / "calls.jsonl"
        #: The raw scripted executable; it needs :attr:`env` to be set.
        self.executable = str(FAKEWISP)
        #: A self-contained ``wisp`` to hand to the driver or the CLI.
        self.path = str(self.bin_dir / name)
        self._write_wrapper(Path(self.path))

    @property
    def env(self) -> dict[str, str]:
        """The variables the raw executable reads."""
        return {
            "FAKEWISP_STATE": str(self.state_file),
            "FAKEWISP_SCRIPT": str(self.script_file),
            "FAKEWISP_CALLS": str(self.calls_file),
        }

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for a subprocess: ``base`` (default
        ``os.environ``) plus :attr:`env`, with :attr:`bin_dir` first on PATH
        so a bare ``wisp`` resolves to this fake."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        merged["PATH"] = os.pathsep.join(filter(None, [str(self.bin_dir), merged.get("PATH")]))
        return merged

    # -- scripting ------------------------------------------------------------

    def script(self, **faults: Any) -> dict[str, str]:
        """Replace the fault script (no arguments: behave normally) and reset
        the ``times`` counters; returns :attr:`env`."""
        self.script_file.write_text(json.dumps(faults))
        with self._state() as state:
            state["counters"] = {}
        return self.env

    # -- inspection -----------------------------------------------------------

    def inventory(self) -> list[dict[str, Any]]:
        """Every sprite record, with memory, cpus and started_at."""
        with self._state() as state:
            return [dict(sprite) for sprite in state["sprites"].values()]

    def names(self) -> list[str]:
        return [sprite["name"] for sprite in self.inventory()]

    def history(self) -> list[dict[str, Any]]:
        """The successful state changes, oldest first."""
        with self._state() as state:
            return [dict(entry) for entry in state["history"]]

    def peak(self) -> dict[str, int]:
        """The highest running count, memory and cpus ever reached."""
        peak = {"running": 0, "memory_total": 0, "cpus_total": 0}
        for entry in self.history():
            for key in peak:
                peak[key] = max(peak[key], int(entry[key]))
        return peak

    def call_records(self) -> list[dict[str, Any]]:
        """Every invocation (``argv``, ``pid``, ``pgid``) and every process a
        call forked (``child``, ``of``, ``pgid``)."""
        return _json_lines(self.calls_file)

    def calls(self) -> list[list[str]]:
        """The argv (without the program) of every invocation, oldest first."""
        return [record["argv"] for record in self.call_records() if "argv" in record]

    def pgids(self) -> list[int]:
        """The process group of every invocation, oldest first."""
        return [record["pgid"] for record in self.call_records() if "argv" in record]

    # -- arranging ------------------------------------------------------------

    def add_sprite(
        self,
        name: str,
        *,
        state: str = "running",
        pid: int | None = None,
        memory: int = 512 * MiB,
        cpus: int = 1,
        id: str | None = None,
        address: str | None = None,
    ) -> dict[str, Any]:
        """Put a sprite in the inventory as if started earlier (no history
        entry). Any name is accepted, so tests can plant invalid ones."""
        with self._state() as data:
            number = data["next"]
            data["next"] = number + 1
            ident = id if id is not None else f"sprite-{number:06x}"
            sprite = {
                "id": ident,
                "name": name,
                "state": state,
                "pid": pid,
                "address": address,
                "memory": memory,
                "cpus": cpus,
                "started_at": time.time(),
            }
            data["sprites"][name] = sprite
            return dict(sprite)

    def remove_sprite(self, name: str) -> None:
        """Drop a sprite as if it died outside wisp's control."""
        with self._state() as data:
            data["sprites"].pop(name, None)

    def set_state(self, name: str, state: str) -> None:
        with self._state() as data:
            data["sprites"][name]["state"] = state

    def kill_leftovers(self) -> None:
        """SIGKILL whatever is still running in the process groups this
        fake's calls led (hung or lingering children). Calls that ran in
        someone else's group (started without a new session) are left alone."""
        own = os.getpgid(0)
        led = {
            record["pgid"]
            for record in self.call_records()
            if "argv" in record and record["pgid"] == record["pid"] != own
        }
        for pgid in led:
            if process_group_members(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reset(self) -> None:
        """Empty inventory, history, call log and script."""
        for path in (self.state_file, self.calls_file, self.script_file):
            path.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------

    def _state(self) -> Any:
        return fakewisp_module().locked_state(str(self.state_file))

    def _write_wrapper(self, target: Path) -> None:
        # The wrapper names the interpreter running the tests and skips
        # site-packages (-S): the fake is stdlib-only, and this keeps each call
        # fast even behind version-manager shims.
        exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in self.env.items())
        target.write_text(
            "#!/bin/sh\n"
            + exports
            + f'exec {shlex.quote(sys.executable)} -S {shlex.quote(self.executable)} "$@"\n'
        )
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def process_group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


@pytest.fixture
def fakewisp(tmp_path: Path) -> Iterator[FakeWisp]:
    """A fresh :class:`FakeWisp` under ``tmp_path``; import it into a
    conftest to use it (``from tests.helpers.fakewisp import fakewisp``)."""
    fake = FakeWisp(tmp_path / "fakewisp")
    yield fake
    fake.kill_leftovers()
