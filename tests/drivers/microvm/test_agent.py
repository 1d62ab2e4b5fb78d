"""The host's side of the exec agent's protocol, against a scripted guest on
real FIFOs (what QEMU's pipe chardev holds): sessions that start after a
dead caller's leftovers, output and exit codes, stdin preloaded or
streamed within the window, failures, timeouts and a guest that breaks the
protocol. No VM boots here; tests/drivers/microvm/test_exec.py runs the
real agent."""

from __future__ import annotations

import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconciler.drivers.microvm import agent

Handler = Callable[["FakeGuest", bytes, bytes], None]


@dataclass
class FakeGuest:
    """Plays the agent: reads frames from ``<base>.in``, records them, and
    lets a handler answer on ``<base>.out``. Holds both FIFOs read-write,
    as QEMU does."""

    base: str
    on_go: Handler
    answer_hello: bool = True
    #: HELLOs to leave unanswered first (an agent busy with a dead caller's frame).
    ignore_hellos: int = 0
    #: HELLOs answered only once the next one comes (an agent slow to answer).
    hold_hellos: int = 0
    held: list[bytes] = field(default_factory=list)
    before_ready: bytes = b""
    frames: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    stdin: bytearray = field(default_factory=bytearray)
    streamed: list[bytes] = field(default_factory=list)
    token: bytes = b""
    go_mode: bytes = b""

    def __post_init__(self) -> None:
        agent.make_channel(self.base)
        to_guest, from_guest = agent.channel_paths(self.base)
        self.rfd = os.open(to_guest, os.O_RDWR)
        self.wfd = os.open(from_guest, os.O_RDWR)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def say(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def close(self) -> None:
        self.stop.set()
        os.write(self.rfd, b"\n")  # wake the reader
        self.thread.join(5)
        os.close(self.rfd)
        os.close(self.wfd)

    def _serve(self) -> None:
        buffer = b""
        while not self.stop.is_set():
            chunk = os.read(self.rfd, 65536)
            buffer += chunk
            while b"\n" in buffer:
                line, rest = buffer.split(b"\n", 1)
                parts = line.split(b" ")
                verb = parts[0]
                if verb in (b"RUN", b"IN"):
                    size = int(parts[2])
                    while len(rest) < size:
                        rest += os.read(self.rfd, 65536)
                    payload, buffer = rest[:size], rest[size:]
                else:
                    payload, buffer = b"", rest
                if not verb:
                    continue
                self.frames.append((verb, parts[1] if len(parts) > 1 else b"", payload))
                self._handle(verb, parts, payload)

    def _handle(self, verb: bytes, parts: list[bytes], payload: bytes) -> None:
        if verb == b"HELLO" and self.answer_hello:
            if self.ignore_hellos:
                self.ignore_hellos -= 1
                return
            if len(self.held) < self.hold_hellos:
                self.held.append(parts[1])
                return
            for token in self.held:
                self.say(b"\nREADY " + token + b" 1\n")
            self.say(self.before_ready + b"\nREADY " + parts[1] + b" 1\n")
        elif verb == b"RUN":
            self.token = parts[1]
        elif verb == b"IN":
            if any(frame[0] == b"GO" for frame in self.frames):
                self.streamed.append(payload)
            else:
                self.stdin += payload
        elif verb in (b"GO", b"EOF", b"KILL"):
            if verb == b"GO":
                self.go_mode = parts[2]
            self.on_go(self, verb, parts[2] if len(parts) > 2 else b"")

    def verbs(self) -> list[bytes]:
        return [frame[0] for frame in self.frames]


@pytest.fixture
def channel(tmp_path: pathlib.Path) -> Iterator[Callable[..., FakeGuest]]:
    guests: list[FakeGuest] = []

    def make(on_go: Handler, **options: Any) -> FakeGuest:
        guest = FakeGuest(str(tmp_path / f"g{len(guests)}.agent"), on_go, **options)
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        guest.close()


def exits(code: int, out: bytes = b"", err: bytes = b"") -> Handler:
    def handler(guest: FakeGuest, verb: bytes, arg: bytes) -> None:
        if verb != b"GO":
            return
        t = guest.token
        if out:
            guest.say(b"OUT %s %d\n%s" % (t, len(out), out))
        if err:
            guest.say(b"ERR %s %d\n%s" % (t, len(err), err))
        guest.say(b"EXIT %s %d\n" % (t, code))

    return handler


SCRIPT = agent.command_script(["true"], {"PATH": "/bin"}, "/")


def test_a_session_skips_what_an_earlier_one_left_and_gets_output_and_code(
    channel: Callable[..., FakeGuest],
) -> None:
    # A dead caller's command still sent output: it comes before READY and is dropped.
    stale = b"OUT 0123 9\nold\nstuff\nEXIT 0123 0\n" + os.urandom(3000)
    guest = channel(exits(3, b"out\x00\xff", b"err\n"), before_ready=stale)
    outcome = agent.run(guest.base, SCRIPT, timeout=10)
    assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (3, b"out\x00\xff", b"err\n")
    assert outcome.failure is None and not outcome.timed_out
    assert guest.verbs() == [b"HELLO", b"RUN", b"GO"]
    assert guest.frames[1][2] == SCRIPT
    assert guest.go_mode == b"0"  # no stdin: the command reads nothing


def test_output_goes_to_sinks_as_it_comes(channel: Callable[..., FakeGuest]) -> None:
    received: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            received.append(data)

    guest = channel(exits(0, b"streamed"))
    outcome = agent.run(guest.base, SCRIPT, stdout=Sink(), timeout=10)
    assert received == [b"streamed"] and outcome.stdout == b""


def test_input_that_comes_at_once_is_sent_before_the_command_starts(
    channel: Callable[..., FakeGuest],
) -> None:
    data = os.urandom(agent.CHUNK * 2 + 5)
    guest = channel(exits(0))
    agent.run(guest.base, SCRIPT, stdin=data, timeout=10)
    assert bytes(guest.stdin) == data
    assert guest.verbs() == [b"HELLO", b"RUN", b"IN", b"IN", b"IN", b"GO"]
    assert guest.go_mode == b"0" and guest.streamed == []


def test_a_pipe_is_streamed_within_the_window_until_its_end(
    channel: Callable[..., FakeGuest],
) -> None:
    """The guest acknowledges nothing at first: the host stops at a window's
    worth of chunks; then everything is acknowledged and the rest flows,
    then EOF, then the exit."""
    ended = threading.Event()
    held: list[int] = []

    def handler(guest: FakeGuest, verb: bytes, arg: bytes) -> None:
        if verb == b"EOF":
            ended.set()
            guest.say(b"EXIT %s 0\n" % guest.token)

    guest = channel(handler)
    reader, writer = os.pipe()
    total = agent.CHUNK * (agent.WINDOW + 4)

    def produce() -> None:
        with os.fdopen(writer, "wb") as stream:
            stream.write(b"x" * total)

    def acknowledge() -> None:
        while len(guest.streamed) < agent.WINDOW:
            ended.wait(0.01)
        ended.wait(0.3)
        held.append(len(guest.streamed))
        acked = 0
        while not ended.is_set():
            while len(guest.streamed) > acked:
                acked += 1
                guest.say(b"ACK %s %d\n" % (guest.token, acked))
            ended.wait(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    acknowledger = threading.Thread(target=acknowledge, daemon=True)
    acknowledger.start()
    try:
        outcome = agent.run(guest.base, SCRIPT, stdin=reader, timeout=30)
    finally:
        os.close(reader)
        producer.join()
    assert outcome.exit_code == 0
    assert guest.go_mode == b"1"
    assert held == [agent.WINDOW]
    assert bytes(guest.stdin) + b"".join(guest.streamed) == b"x" * total
    assert guest.verbs()[-1] == b"EOF"


def test_an_open_pipe_does_not_hold_a_command_that_ends(
    channel: Callable[..., FakeGuest],
) -> None:
    guest = channel(exits(0))
    reader, writer = os.pipe()
    try:
        outcome = agent.run(guest.base, SCRIPT, stdin=reader, timeout=10)
    finally:
        os.close(reader)
        os.close(writer)
    assert outcome.exit_code == 0 and not outcome.timed_out
    assert b"EOF" not in guest.verbs()


def test_a_failure_to_run_is_reported_not_an_exit(channel: Callable[..., FakeGuest]) -> None:
    def handler(guest: FakeGuest, verb: bytes, arg: bytes) -> None:
        guest.say(b"FAIL %s cannot run nope: No such file or directory\n" % guest.token)

    guest = channel(handler)
    outcome = agent.run(guest.base, SCRIPT, timeout=10)
    assert outcome.exit_code is None
    assert outcome.failure == "cannot run nope: No such file or directory"


def test_past_the_timeout_the_command_is_killed(channel: Callable[..., FakeGuest]) -> None:
    def handler(guest: FakeGuest, verb: bytes, arg: bytes) -> None:
        if verb == b"KILL":
            guest.say(b"EXIT %s 137\n" % guest.token)

    guest = channel(handler)
    outcome = agent.run(guest.base, SCRIPT, timeout=0.3)
    assert outcome.timed_out and outcome.exit_code == 137
    assert guest.verbs()[-1] == b"KILL"


def test_a_guest_that_breaks_the_protocol_ends_the_call(
    channel: Callable[..., FakeGuest],
) -> None:
    for reply in (b"NONSENSE\n", b"OUT %s 99999999999\n", b"EXIT %s -1\n", b"x" * 5000):

        def handler(guest: FakeGuest, verb: bytes, arg: bytes, reply: bytes = reply) -> None:
            guest.say(reply.replace(b"%s", guest.token))

        guest = channel(handler)
        with pytest.raises(agent.AgentError):
            agent.run(guest.base, SCRIPT, timeout=10)


def test_hello_is_repeated_until_the_agent_answers(channel: Callable[..., FakeGuest]) -> None:
    guest = channel(exits(5), ignore_hellos=1)
    outcome = agent.run(guest.base, SCRIPT, timeout=10)
    assert outcome.exit_code == 5
    assert guest.verbs() == [b"HELLO", b"HELLO", b"RUN", b"GO"]
    # A slow agent answers both: the second answer is skipped.
    slow = channel(exits(6), hold_hellos=1)
    assert agent.run(slow.base, SCRIPT, timeout=10).exit_code == 6
    assert slow.verbs() == [b"HELLO", b"HELLO", b"RUN", b"GO"]


def test_an_agent_that_does_not_answer(channel: Callable[..., FakeGuest]) -> None:
    guest = channel(exits(0), answer_hello=False)
    with pytest.raises(agent.AgentError, match="did not answer within 0.3s"):
        agent.run(guest.base, SCRIPT, timeout=10, hello_timeout=0.3)
    # Asked why, the runtime can say the guest is not running any more.
    with pytest.raises(agent.AgentGone, match="powered off"):
        agent.run(
            guest.base, SCRIPT, timeout=10, hello_timeout=5, still_running=lambda: "powered off"
        )
    # The caller's own deadline comes first: a timeout, nothing ran.
    outcome = agent.run(guest.base, SCRIPT, timeout=0.2)
    assert outcome.timed_out and outcome.exit_code is None


def test_a_channel_without_qemu_behind_it(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path / "gone.agent")
    with pytest.raises(agent.AgentGone):
        agent.run(base, SCRIPT, timeout=1)
    agent.make_channel(base)
    with pytest.raises(agent.AgentGone):
        agent.run(base, SCRIPT, timeout=1)  # nobody reads the FIFO
    agent.remove_channel(base)
    assert os.listdir(tmp_path) == []


def test_the_command_script_quotes_every_value() -> None:
    script = agent.command_script(
        ["printf", "%s|", "a b", "", "it's", "$(reboot)", "*"],
        {"PATH": "/bin", "ODD": "x'y\"z $HOME\nnext"},
        "/work dir",
        1000,
        1000,
    ).decode()
    last = script[script.index("exec /bin/env -i -- ") :]
    assert "/bin/nsenter -F -S 1000 -G 1000 -- printf" in last
    assert "'$(reboot)'" in last and "'*'" in last and "'it'\"'\"'s'" in last
    assert "w='/work dir'" in script
    assert re.search(r"'ODD=x'\"'\"'y\"z \$HOME\nnext'", script)
    root = agent.command_script(["id"], {}, "/").decode().splitlines()[-1]
    assert root == "exec /bin/env -i -- id"
    odd = agent.command_script(["a=b", "c=d"], {}, "/").decode().splitlines()[-1]
    assert odd.endswith("/bin/nsenter -F -- a=b c=d")


def test_the_lock_takes_turns(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "agent.lock")
    first = agent.lock(path, None)
    assert first is not None
    assert agent.lock(path, time.monotonic() + 0.05) is None
    os.close(first)
    second = agent.lock(path, time.monotonic() + 1)
    assert second is not None
    os.close(second)
