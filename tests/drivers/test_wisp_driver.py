"""The wisp contract, exercised through WispDriver.

Unmarked tests run against every entry of ``WISP_IMPLEMENTATIONS``; the
``fakewisp_only`` ones script faults and run on fakewisp alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.drivers import process
from reconciler.drivers.base import Driver, StartRequest
from reconciler.drivers.wisp import WispDriver
from reconciler.errors import (
    InvalidNameError,
    RuntimeCallError,
    RuntimeOutputError,
    RuntimeTimeoutError,
    SpriteExistsError,
    SpriteNotFoundError,
    WispNotFoundError,
)
from tests.drivers.conftest import WispHarness
from tests.helpers.fakewisp import FakeWisp, process_group_members

MiB = 1 << 20
GiB = 1 << 30
fakewisp_only = pytest.mark.fakewisp_only


def request(name: str, memory: int = 512 * MiB, cpus: int = 1) -> StartRequest:
    return StartRequest(name=name, memory=memory, cpus=cpus)


# -- the contract, on every implementation -------------------------------------


def test_driver_satisfies_the_protocol(driver: WispDriver) -> None:
    assert isinstance(driver, Driver)
    assert driver.name == "wisp"


def test_version(wisp: WispHarness) -> None:
    completed = process.run([wisp.path, "--version"], timeout=10, op="check")
    assert completed.returncode == 0
    assert re.fullmatch(r"wisp \d+\.\d+\.\d+\S*", completed.stdout.strip())


def test_start_reports_id_and_address(driver: WispDriver) -> None:
    result = driver.start(request("agent-1"))
    assert "Started Sprite VM with ID:" in result.stdout
    assert result.id
    assert result.address is not None and result.address.startswith("unix://")


def test_list_of_nothing_is_empty(driver: WispDriver) -> None:
    inventory = driver.list()
    assert inventory.sprites == ()


def test_list_shows_a_started_sprite(driver: WispDriver) -> None:
    started = driver.start(request("agent-1"))
    inventory = driver.list()
    sprite = inventory.by_name()["agent-1"]
    assert sprite.state == "running"
    assert sprite.id == started.id
    assert sprite.runtime == "wisp"
    assert inventory.raw.strip().startswith("[")


def test_start_of_a_taken_name_is_exists_error(driver: WispDriver) -> None:
    driver.start(request("agent-1"))
    with pytest.raises(SpriteExistsError) as caught:
        driver.start(request("agent-1"))
    assert str(caught.value) == "Failed to start Sprite: sprite 'agent-1' already exists"
    assert caught.value.op == "start"


def test_kill_reports_pid_and_frees_the_name(driver: WispDriver) -> None:
    driver.start(request("agent-1"))
    result = driver.kill("agent-1")
    assert result.stdout.startswith("Terminated VM agent-1")
    assert isinstance(result.pid, int)
    assert "agent-1" not in {s.name for s in driver.list().running()}
    driver.start(request("agent-1"))


def test_kill_of_an_unknown_sprite_is_not_found(driver: WispDriver) -> None:
    with pytest.raises(SpriteNotFoundError) as caught:
        driver.kill("ghost")
    assert str(caught.value) == "Failed to kill Sprite: sprite 'ghost' not found"


def test_attach_without_a_terminal_prints_the_console(driver: WispDriver) -> None:
    driver.start(request("agent-1"))
    result = driver.attach("agent-1", interactive=False)
    assert result.stdout.startswith("Connected to agent-1. Console output:")


def test_attach_to_an_unknown_sprite_is_not_found(driver: WispDriver) -> None:
    with pytest.raises(SpriteNotFoundError, match=r"^Failed to attach to Sprite: sprite 'ghost'"):
        driver.attach("ghost", interactive=False)


def test_logs_for_all_and_for_one(driver: WispDriver) -> None:
    driver.start(request("agent-1"))
    driver.start(request("agent-2"))
    assert isinstance(driver.logs(None).stdout, str)
    assert isinstance(driver.logs("agent-1").stdout, str)
    with pytest.raises(SpriteNotFoundError, match=r"^Failed to read Sprite logs"):
        driver.logs("ghost")


def test_concurrent_calls_from_a_thread_pool(driver: WispDriver) -> None:
    names = [f"agent-{i}" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda n: driver.start(request(n)), names))
    assert len({r.id for r in results}) == len(names)
    assert sorted(s.name for s in driver.list().running()) == sorted(names)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(driver.kill, names))
    assert driver.list().running() == []


# -- names never reach argv ----------------------------------------------------

BAD_NAMES = [
    "Agent-1",
    "agent 1",
    "agent;rm -rf /",
    "$(touch pwned)",
    "`id`",
    "../etc",
    "a" * 64,
    "аgent",  # Cyrillic a
    "agent\u20101",  # Unicode hyphen
    "agent-１",  # fullwidth digit
    "",
    "-agent",
    "agent\n",
    "--memory",
]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real_run = process.run

    def recording(argv: list[str], **kwargs: object) -> process.Completed:
        calls.append(list(argv))
        return real_run(argv, **kwargs)  # type: ignore[arg-type]

    def interactive(argv: list[str], **kwargs: object) -> int:
        calls.append(list(argv))
        return 0

    monkeypatch.setattr(process, "run", recording)
    monkeypatch.setattr(process, "run_interactive", interactive)
    return calls


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda d, n: d.start(request(n)), id="start"),
        pytest.param(lambda d, n: d.kill(n), id="kill"),
        pytest.param(lambda d, n: d.attach(n, interactive=False), id="attach"),
        pytest.param(lambda d, n: d.attach(n, interactive=True), id="attach-interactive"),
        pytest.param(lambda d, n: d.logs(n), id="logs"),
    ],
)
def test_invalid_names_are_rejected_before_argv(
    fakewisp: FakeWisp,
    spy: list[list[str]],
    call: Callable[[WispDriver, str], object],
    name: str,
) -> None:
    driver = WispDriver(fakewisp.path, timeout=10)
    with pytest.raises(InvalidNameError):
        call(driver, name)
    assert spy == []
    assert fakewisp.calls() == []


def test_the_longest_valid_name_passes(fakewisp: FakeWisp) -> None:
    driver = WispDriver(fakewisp.path, timeout=10)
    driver.start(request("a" * 63))
    assert fakewisp.calls()[-1][1] == "a" * 63


# -- argv and parsing (fakewisp records every call) -----------------------------


@fakewisp_only
@pytest.mark.parametrize(
    ("memory", "cpus", "shown"),
    [
        (512 * MiB, 1, "512MiB"),
        (GiB, 2, "1GiB"),
        (1536 * MiB, 4, "1536MiB"),
        (64 << 10, 1, "64KiB"),
    ],
)
def test_start_argv(driver: WispDriver, fake: FakeWisp, memory: int, cpus: int, shown: str) -> None:
    driver.start(request("agent-1", memory, cpus))
    assert fake.calls() == [["start", "agent-1", "--memory", shown, "--cpus", str(cpus)]]
    entry = fake.history()[-1]
    assert (entry["memory"], entry["cpus"]) == (memory, cpus)


@fakewisp_only
def test_argv_of_the_other_calls(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("agent-1")
    driver.list()
    driver.attach("agent-1", interactive=False)
    driver.logs(None)
    driver.logs("agent-1")
    driver.kill("agent-1")
    assert fake.calls() == [
        ["list", "--json"],
        ["attach", "agent-1"],
        ["logs"],
        ["logs", "agent-1"],
        ["kill", "agent-1"],
    ]


@fakewisp_only
def test_interactive_attach_runs_on_the_terminal(
    driver: WispDriver, fake: FakeWisp, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def interactive(argv: list[str], **kwargs: object) -> int:
        seen.append(list(argv))
        return process.run(argv, timeout=10, op="attach").returncode

    monkeypatch.setattr(process, "run_interactive", interactive)
    fake.add_sprite("agent-1")
    assert driver.attach("agent-1", interactive=True).stdout == ""
    assert seen == [[fake.path, "attach", "agent-1"]]
    with pytest.raises(RuntimeCallError, match=r"^Failed to attach to Sprite: exit status 1$"):
        driver.attach("ghost", interactive=True)


@fakewisp_only
def test_start_tolerates_output_without_id_or_address(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(quiet=["start"])
    result = driver.start(request("agent-1"))
    assert (result.id, result.address, result.stdout) == (None, None, "")


@fakewisp_only
def test_kill_tolerates_output_without_pid(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("agent-1")
    fake.script(quiet=["kill"])
    assert driver.kill("agent-1").pid is None


@fakewisp_only
def test_list_fields(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("agent-1", pid=4242, address="unix:///run/a.sock", id="sprite-abc123")
    fake.add_sprite("agent-2", state="stopped")
    fake.add_sprite("agent-3", state="error")
    sprites = driver.list().by_name()
    assert sprites["agent-1"].pid == 4242
    assert sprites["agent-1"].address == "unix:///run/a.sock"
    assert sprites["agent-1"].id == "sprite-abc123"
    assert sprites["agent-2"].state == "stopped" and sprites["agent-2"].pid is None
    assert sprites["agent-3"].state == "error"


@fakewisp_only
def test_noisy_list_is_parsed(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("agent-1")
    fake.script(list="noise")
    inventory = driver.list()
    assert [s.name for s in inventory.sprites] == ["agent-1"]
    assert "level=info" in inventory.raw


@fakewisp_only
def test_garbage_list_shows_the_first_200_bytes(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(list="garbage")
    stdout = process.run([fake.path, "list", "--json"], timeout=10, op="list").stdout
    assert len(stdout.encode()) > 200
    with pytest.raises(RuntimeOutputError) as caught:
        driver.list()
    assert str(caught.value) == (
        "Failed to list Sprites: invalid JSON from 'wisp list --json': "
        + stdout.encode()[:200].decode()
    )


@fakewisp_only
@pytest.mark.parametrize("mode", ["truncated", "empty"])
def test_truncated_or_empty_list_is_an_output_error(
    driver: WispDriver, fake: FakeWisp, mode: str
) -> None:
    fake.add_sprite("agent-1")
    fake.add_sprite("agent-2")
    fake.script(list=mode)
    with pytest.raises(RuntimeOutputError, match=r"^Failed to list Sprites: invalid JSON from"):
        driver.list()


@fakewisp_only
def test_listed_names_that_are_invalid_are_kept_but_never_passed_on(
    driver: WispDriver, fake: FakeWisp
) -> None:
    fake.add_sprite("Bad Name; rm -rf /")
    fake.add_sprite("agent-1")
    inventory = driver.list()
    assert sorted(inventory.by_name()) == ["Bad Name; rm -rf /", "agent-1"]
    with pytest.raises(InvalidNameError):
        driver.kill("Bad Name; rm -rf /")
    assert fake.calls() == [["list", "--json"]]


@fakewisp_only
def test_list_ignores_unknown_keys(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(
        list_output='[{"id": "s1", "name": "a", "state": "running", "vcpus": 2, "extra": {}}]\n'
    )
    assert driver.list().sprites[0].name == "a"


@fakewisp_only
@pytest.mark.parametrize(
    "entry",
    [
        '{"name": "a", "state": "running"}',
        '{"id": 1, "name": "a", "state": "running"}',
        '{"id": "s1", "state": "running"}',
        '{"id": "s1", "name": "a", "state": "paused"}',
        '{"id": "s1", "name": "a", "state": "running", "pid": "12"}',
        '{"id": "s1", "name": "a", "state": "running", "pid": true}',
        '{"id": "s1", "name": "a", "state": "running", "address": 5}',
    ],
)
def test_invalid_list_entries_are_output_errors(
    driver: WispDriver, fake: FakeWisp, entry: str
) -> None:
    fake.script(list_output=f"[{entry}]")
    with pytest.raises(RuntimeOutputError, match=r"^Failed to list Sprites: invalid entry 0"):
        driver.list()


# -- failures ------------------------------------------------------------------

KNOWN_REASONS = [
    ("/dev/kvm not found or no access", RuntimeCallError),
    ("permission denied", RuntimeCallError),
    ("insufficient memory", RuntimeCallError),
    ("sprite '{name}' already exists", SpriteExistsError),
    ("sprite '{name}' not found", SpriteNotFoundError),
]

OPS: dict[str, Callable[[WispDriver], object]] = {
    "start": lambda d: d.start(request("agent-1")),
    "kill": lambda d: d.kill("agent-1"),
    "list": lambda d: d.list(),
    "attach": lambda d: d.attach("agent-1", interactive=False),
    "logs": lambda d: d.logs("agent-1"),
}


@fakewisp_only
@pytest.mark.parametrize(("reason", "kind"), KNOWN_REASONS, ids=[r for r, _ in KNOWN_REASONS])
@pytest.mark.parametrize("op", list(OPS))
def test_known_reasons_surface_as_failed_to_op(
    driver: WispDriver, fake: FakeWisp, op: str, reason: str, kind: type[RuntimeCallError]
) -> None:
    if op != "start":
        fake.add_sprite("agent-1", state="stopped")
    fake.script(fail={op: reason}, stderr_noise=True)
    with pytest.raises(RuntimeCallError) as caught:
        OPS[op](driver)
    shown = reason.replace("{name}", "" if op == "list" else "agent-1")
    assert type(caught.value) is kind
    phrase = {"list": "list Sprites", "attach": "attach to Sprite", "logs": "read Sprite logs"}
    assert str(caught.value) == f"Failed to {phrase.get(op, op + ' Sprite')}: {shown}"
    assert caught.value.op == op
    assert "cache is stale" in caught.value.stderr


@fakewisp_only
def test_failure_for_one_name_only(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(fail={"start": {"agent-2": "insufficient memory"}})
    driver.start(request("agent-1"))
    with pytest.raises(RuntimeCallError, match="^Failed to start Sprite: insufficient memory$"):
        driver.start(request("agent-2"))
    driver.start(request("agent-3"))
    assert sorted(fake.names()) == ["agent-1", "agent-3"]


@fakewisp_only
def test_transient_failure_then_success(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(fail={"start": {"reason": "permission denied", "times": 1}})
    with pytest.raises(RuntimeCallError):
        driver.start(request("agent-1"))
    driver.start(request("agent-1"))


@fakewisp_only
def test_silent_failure_reports_the_exit_status(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(fail={"list": ""}, exit_code=3)
    with pytest.raises(RuntimeCallError) as caught:
        driver.list()
    assert str(caught.value) == "Failed to list Sprites: exit status 3"


@fakewisp_only
def test_capacity_is_insufficient_memory(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(capacity={"memory": "1GiB"})
    driver.start(request("agent-1", 512 * MiB))
    driver.start(request("agent-2", 512 * MiB))
    with pytest.raises(RuntimeCallError, match="^Failed to start Sprite: insufficient memory$"):
        driver.start(request("agent-3", 512 * MiB))


@fakewisp_only
def test_kill_of_a_vanished_sprite_is_not_found(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("x")
    assert "x" in driver.list().by_name()
    fake.script(vanish_on_kill=["x"])
    with pytest.raises(SpriteNotFoundError, match=r"^Failed to kill Sprite: sprite 'x' not found$"):
        driver.kill("x")
    assert "x" not in driver.list().by_name()


@fakewisp_only
def test_phantom_start_is_missing_from_the_next_list(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(phantom=["agent-3"])
    result = driver.start(request("agent-3"))
    assert result.id
    assert "agent-3" not in driver.list().by_name()
    assert fake.history()[-1]["phantom"] is True


def test_missing_wisp_is_reported_with_the_guides_words(tmp_path: Path) -> None:
    driver = WispDriver(str(tmp_path / "nope" / "wisp"))
    with pytest.raises(WispNotFoundError) as caught:
        driver.list()
    assert str(caught.value) == (
        f"Wisp CLI not found at '{tmp_path / 'nope' / 'wisp'}'. "
        "Install Wisp to enable Sprite support"
    )


# -- timeouts ------------------------------------------------------------------


def _wait_gone(pgid: int, within: float = 2.0) -> list[int]:
    deadline = time.monotonic() + within
    while (members := process_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return members


@fakewisp_only
def test_a_hung_call_times_out_and_leaves_nothing_behind(
    make_driver: Callable[..., WispDriver], fake: FakeWisp
) -> None:
    fake.script(hang=["start"], hang_child=True)
    driver = make_driver(timeout=1)
    started = time.monotonic()
    with pytest.raises(RuntimeTimeoutError) as caught:
        driver.start(request("agent-1"))
    elapsed = time.monotonic() - started
    assert str(caught.value) == "Failed to start Sprite: Command timed out after 1 seconds"
    assert 1.0 <= elapsed < 1.0 + process.KILL_GRACE
    records = fake.call_records()
    assert any("child" in r for r in records), "the hung call forked a child"
    pgid = fake.pgids()[0]
    assert _wait_gone(pgid, within=0.5) == []
    assert fake.names() == []


@fakewisp_only
def test_sigterm_is_escalated_to_sigkill(
    make_driver: Callable[..., WispDriver], fake: FakeWisp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "KILL_GRACE", 0.5)
    fake.script(hang=["list"], hang_child=True, ignore_sigterm=True)
    driver = make_driver(timeout=1)
    started = time.monotonic()
    with pytest.raises(RuntimeTimeoutError, match="^Failed to list Sprites: Command timed out"):
        driver.list()
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0 + 0.5 - 0.05
    assert elapsed < 4.0
    assert _wait_gone(fake.pgids()[0], within=0.5) == []


def test_the_kill_grace_defaults_to_five_seconds() -> None:
    assert process.KILL_GRACE == 5.0


@fakewisp_only
def test_a_start_that_hangs_after_acting_leaves_the_sprite(
    make_driver: Callable[..., WispDriver], fake: FakeWisp
) -> None:
    fake.script(hang_after=["start"])
    with pytest.raises(RuntimeTimeoutError):
        make_driver(timeout=1).start(request("agent-1"))
    fake.script()
    assert "agent-1" in make_driver().list().by_name()


@fakewisp_only
def test_a_lingering_child_does_not_hold_up_the_call(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(linger=5)
    started = time.monotonic()
    result = driver.start(request("agent-1"))
    assert time.monotonic() - started < 3
    assert result.id


@fakewisp_only
def test_delay(driver: WispDriver, fake: FakeWisp) -> None:
    fake.script(delay={"start": 0.3})
    started = time.monotonic()
    driver.start(request("agent-1"))
    assert time.monotonic() - started >= 0.3
