"""The composite driver that lets one manifest mix runtimes, and the engine's
choice of it."""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from reconciler import planner
from reconciler.drivers.base import CallResult, ExecResult, StartRequest
from reconciler.drivers.multi import MultiDriver, runtimes_in_use
from reconciler.engine import Engine
from reconciler.errors import RuntimeCallError, SpriteExistsError, SpriteNotFoundError
from reconciler.executor import Executor
from reconciler.models.desired import Budget, DesiredSprite
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.state import ProjectState
from tests.helpers.fakewisp import FakeWisp

MiB = 1 << 20


@dataclass
class Fake:
    """A runtime in a dict that records which calls reached it."""

    name: str
    sprites: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def list(self) -> Inventory:
        sprites = tuple(
            ObservedSprite(id=f"{self.name}-{n}", name=n, state=s, runtime=self.name)
            for n, s in self.sprites.items()
        )
        return Inventory(sprites=sprites, warnings=self.warnings)

    def start(self, request: StartRequest) -> CallResult:
        with self.lock:
            self.calls.append(("start", request.name))
            if request.name in self.sprites:
                raise SpriteExistsError("start", f"sprite '{request.name}' already exists")
            self.sprites[request.name] = "running"
        return CallResult(stdout=f"started on {self.name}\n", id=f"{self.name}-{request.name}")

    def kill(self, name: str) -> CallResult:
        with self.lock:
            self.calls.append(("kill", name))
            if self.sprites.pop(name, None) is None:
                raise SpriteNotFoundError("kill", f"sprite '{name}' not found")
        return CallResult(stdout=f"Terminated VM {name} (PID: 1)\n")

    def attach(self, name: str, *, interactive: bool) -> CallResult:
        self.calls.append(("attach", name))
        if name not in self.sprites:
            raise SpriteNotFoundError("attach", f"sprite '{name}' not found")
        return CallResult(stdout=f"Connected to {name}. Console output:\n{self.name}\n")

    def logs(self, name: str | None) -> CallResult:
        self.calls.append(("logs", name or ""))
        return CallResult(stdout=f"{self.name} log\n")

    def exec(self, name: str, argv: Sequence[str], **options: object) -> ExecResult:
        self.calls.append(("exec", name))
        return ExecResult(exit_code=0, stdout=f"{self.name}: {' '.join(argv)}\n".encode())

    def close(self) -> None:
        self.calls.append(("close", ""))


def _pair() -> tuple[Fake, Fake, MultiDriver]:
    builtin = Fake("builtin", {"ns-1": "running"}, warnings=("builtin: note",))
    microvm = Fake("microvm", {"vm-1": "stopped"}, warnings=("microvm: emulated",))
    return builtin, microvm, MultiDriver(builtin, [microvm])


def test_list_merges_the_runtimes_and_says_which_is_which() -> None:
    _, _, multi = _pair()
    listed = multi.list()
    assert {(s.name, s.runtime, s.state) for s in listed.sprites} == {
        ("ns-1", "builtin", "running"),
        ("vm-1", "microvm", "stopped"),
    }
    assert listed.warnings == ("builtin: note", "microvm: emulated")
    assert {entry["runtime"] for entry in json.loads(listed.raw)} == {"builtin", "microvm"}
    assert multi.name == "builtin" and multi.runtimes == ("builtin", "microvm")


def test_start_goes_to_the_named_runtime_else_the_default() -> None:
    builtin, microvm, multi = _pair()
    multi.start(StartRequest("vm-2", 256 * MiB, 1, options={"runtime": "microvm"}))
    multi.start(StartRequest("ns-2", 256 * MiB, 1))
    assert ("start", "vm-2") in microvm.calls and ("start", "vm-2") not in builtin.calls
    assert ("start", "ns-2") in builtin.calls and ("start", "ns-2") not in microvm.calls


def test_start_refuses_a_name_another_runtime_has() -> None:
    builtin, _, multi = _pair()
    with pytest.raises(SpriteExistsError, match="already exists"):
        multi.start(StartRequest("vm-1", 256 * MiB, 1))
    assert ("start", "vm-1") not in builtin.calls


def test_start_on_a_runtime_not_in_use_fails() -> None:
    _, _, multi = _pair()
    with pytest.raises(RuntimeCallError, match="the wisp runtime is not in use here"):
        multi.start(StartRequest("x", 256 * MiB, 1, options={"runtime": "wisp"}))


def test_kill_attach_logs_go_to_the_runtime_that_lists_the_sprite() -> None:
    builtin, microvm, multi = _pair()
    assert "microvm" in multi.attach("vm-1", interactive=False).stdout
    assert multi.logs("vm-1").stdout == "microvm log\n"
    assert multi.exec("ns-1", ["echo", "hi"], timeout=5).stdout == b"builtin: echo hi\n"
    multi.kill("vm-1")
    assert ("kill", "vm-1") in microvm.calls and ("kill", "vm-1") not in builtin.calls
    assert multi.logs(None).stdout == "builtin log\nmicrovm log\n"
    with pytest.raises(SpriteNotFoundError):
        multi.kill("nobody")
    multi.close()
    assert ("close", "") in builtin.calls and ("close", "") in microvm.calls


def test_an_apply_records_each_sprites_own_runtime() -> None:
    builtin, microvm, multi = _pair()
    desired = {
        "vm-2": DesiredSprite.make("vm-2", 256 * MiB, 1, options={"runtime": "microvm"}),
        "ns-2": DesiredSprite.make("ns-2", 256 * MiB, 1),
    }
    inventory = multi.list()
    plan = planner.plan(desired, inventory, {}, Budget(), project="mix", runtime=multi.name)
    state = ProjectState("mix")
    result = Executor(multi, state, lambda s: None, Budget()).run(plan, inventory)
    assert result.ok, result.failures
    assert state.records["vm-2"].runtime == "microvm"
    assert state.records["ns-2"].runtime == "builtin"
    assert "vm-2" in microvm.sprites and "ns-2" in builtin.sprites


def test_an_unset_runtime_stays_out_of_the_spec() -> None:
    plain = DesiredSprite.make("a", 256 * MiB, 1, options={"runtime": None, "kernel": None})
    assert (
        plain.spec
        == DesiredSprite.make("a", 256 * MiB, 1).spec
        == {
            "memory": 256 * MiB,
            "cpus": 1,
        }
    )
    chosen = DesiredSprite.make("a", 256 * MiB, 1, options={"runtime": "microvm"})
    assert chosen.spec["runtime"] == "microvm"


def test_runtimes_in_use_are_those_with_records(tmp_path: pathlib.Path) -> None:
    assert runtimes_in_use(tmp_path) == []
    (tmp_path / "microvm" / "sprites" / "vm-1").mkdir(parents=True)
    (tmp_path / "builtin" / "sprites").mkdir(parents=True)
    assert runtimes_in_use(tmp_path) == ["microvm"]


def _engine(tmp_path: pathlib.Path, fake: FakeWisp) -> Engine:
    config = tmp_path / ".wreckit" / "config.json"
    config.parent.mkdir()
    agent = {"kind": "sprite", "wispPath": fake.path, "runtime": "wisp", "accel": "tcg"}
    config.write_text(json.dumps({"agent": agent}))
    return Engine(config_path=config, state_dir=tmp_path / "state")


def test_the_engine_adds_the_runtimes_a_manifest_names(tmp_path: pathlib.Path) -> None:
    fake = FakeWisp(tmp_path / "fakewisp")
    try:
        engine = _engine(tmp_path, fake)
        assert engine.driver.name == "wisp" and not isinstance(engine.driver, MultiDriver)
        manifest = tmp_path / "sprites.yaml"
        manifest.write_text(
            "version: 1\nproject: mix\nsprites:\n"
            "  vm: {runtime: microvm, memory: 256MiB}\n  plain: {}\n"
        )
        plan = engine.plan(manifest)
        assert isinstance(engine.driver, MultiDriver)
        assert engine.driver.runtimes == ("wisp", "microvm")
        after = {change.address: change.after for change in plan.changes}
        assert after["vm"] is not None and after["vm"]["runtime"] == "microvm"
        assert after["plain"] is not None and "runtime" not in after["plain"]
        assert plan.runtime == "wisp"
        from reconciler.views.plan import plan_lines

        lines = "\n".join(plan_lines(plan))
        assert "+ start vm: memory 256MiB, cpus 1, runtime microvm" in lines
    finally:
        fake.kill_leftovers()


def test_the_engine_keeps_seeing_microvm_sprites_on_this_host(tmp_path: pathlib.Path) -> None:
    fake = FakeWisp(tmp_path / "fakewisp")
    try:
        (tmp_path / "state" / "microvm" / "sprites" / "vm-1").mkdir(parents=True)
        engine = _engine(tmp_path, fake)
        assert isinstance(engine.driver, MultiDriver)
        assert engine.driver.runtimes == ("wisp", "microvm")
    finally:
        fake.kill_leftovers()
