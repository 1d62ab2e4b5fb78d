"""``wisp exec`` through WispDriver: on every wisp implementation (the fake
runs commands on this host when scripted to; sprites-wisp runs them in real
sprites), and the fake's scripted answers of wisps that cannot."""

from __future__ import annotations

import pytest

from reconciler.drivers.base import StartRequest
from reconciler.drivers.wisp import WispDriver
from reconciler.errors import RuntimeCallError, SpriteNotFoundError
from tests.drivers.conftest import WispHarness
from tests.helpers.fakewisp import FakeWisp

fakewisp_only = pytest.mark.fakewisp_only
MiB = 1 << 20


@pytest.fixture
def running(driver: WispDriver, wisp: WispHarness) -> str:
    """A running sprite whose exec really runs commands."""
    if wisp.fake is not None:
        wisp.fake.script(exec="run")
    driver.start(StartRequest(name="ex-1", memory=64 * MiB, cpus=1))
    return "ex-1"


class Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def test_output_and_exit_status_are_the_commands(driver: WispDriver, running: str) -> None:
    result = driver.exec(running, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    out, err = Sink(), Sink()
    streamed = driver.exec(running, ["sh", "-c", "echo a; echo b >&2"], stdout=out, stderr=err)
    assert (streamed.exit_code, out.data, err.data) == (0, b"a\n", b"b\n")
    assert streamed.stdout == b"" and streamed.stderr == b""


def test_env_workdir_and_stdin(driver: WispDriver, running: str) -> None:
    result = driver.exec(
        running, ["sh", "-c", "echo $A:$(pwd); cat"], env={"A": "1"}, workdir="/", stdin=b"in\n"
    )
    assert result.stdout == b"1:/\nin\n"
    # Without stdin the command reads nothing, whatever the caller's stdin is.
    assert driver.exec(running, ["sh", "-c", "cat; echo end"]).stdout == b"end\n"


def test_unknown_sprites_and_programs(driver: WispDriver, running: str) -> None:
    with pytest.raises(SpriteNotFoundError):
        driver.exec("ex-nobody", ["true"])
    err = Sink()
    with pytest.raises(RuntimeCallError) as info:
        driver.exec(running, ["/no/such/program"], stderr=err)
    assert "cannot run /no/such/program" in info.value.reason
    assert err.data == b"", "wisp's own failure must not also pass as the command's output"


def test_a_commands_own_stderr_is_not_held_back(driver: WispDriver, running: str) -> None:
    err = Sink()
    result = driver.exec(running, ["sh", "-c", "echo 'cannot run this' >&2; exit 0"], stderr=err)
    assert result.exit_code == 0 and err.data == b"cannot run this\n"
    err = Sink()
    failed = driver.exec(running, ["sh", "-c", "echo oops >&2; exit 125"], stderr=err)
    assert failed.exit_code == 125 and err.data == b"oops\n"


@fakewisp_only
def test_options_are_given_only_when_set(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("ex-2")
    driver.exec("ex-2", ["true"])
    driver.exec("ex-2", ["true"], env={"K": "V"}, workdir="/tmp", user="root", stdin=b"")
    execs = [call for call in fake.calls() if call[0] == "exec"]
    assert execs[0] == ["exec", "ex-2", "--", "true"]
    assert execs[1] == [
        "exec",
        "ex-2",
        "--env",
        "K=V",
        "--workdir",
        "/tmp",
        "--user",
        "root",
        "--stdin",
        "--",
        "true",
    ]


@fakewisp_only
def test_a_wisp_without_exec_is_named(driver: WispDriver, fake: FakeWisp) -> None:
    fake.add_sprite("ex-3")
    fake.script(exec="unsupported")
    with pytest.raises(RuntimeCallError) as info:
        driver.exec("ex-3", ["true"])
    assert "has no exec command (it answered: unknown command 'exec')" in info.value.reason
    assert info.value.user_message.startswith("Failed to exec in Sprite: this wisp (")


def test_bad_arguments_never_reach_wisp(driver: WispDriver) -> None:
    with pytest.raises(RuntimeCallError):
        driver.exec("ex-4", [])
    with pytest.raises(RuntimeCallError):
        driver.exec("ex-4", ["true"], env={"BAD KEY": "x"})
