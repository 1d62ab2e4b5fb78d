"""``exec`` inside a microVM: the guest's agent and the host's side of its protocol.

The channel
-----------
QEMU gives the guest a virtio serial port named ``sprites.agent``
(``-device virtio-serial-device -device virtserialport,name=sprites.agent``),
backed on the host by a ``pipe`` chardev: two FIFOs, ``<run>/<id>.agent.in``
(host to guest) and ``<run>/<id>.agent.out`` (guest to host), mode 0600,
made by the runtime before QEMU starts. A pipe rather than a unix socket:
virtio-console tells the guest whether a socket client is connected, and
while none is, every read in the guest returns end-of-file at once, so an
agent would have to poll; QEMU holds both FIFOs open, so the port always
looks connected and the agent just blocks on it. The channel is binary-clean
and flow-controlled (virtio queues): about 25 MB/s and 2 ms per echo under
TCG. (An ISA serial port, ``ttyS1``, needs no module but moves about
80 KB/s and has no flow control towards the guest.)

The guest kernel has ``virtio_mmio`` and ``virtio_console`` as modules; the
initramfs carries them (``image.MODULES``) and its ``/init`` starts
:data:`AGENT_SCRIPT` (``/bin/sprites-agent``), a busybox ``sh`` script, in
its own session, restarted if it dies. It finds its port under
``/sys/class/virtio-ports`` and opens it once (a port opens only once).

The protocol (version 1)
------------------------
Every message is a line ``VERB TOKEN [ARG]``; ``RUN``, ``IN``, ``OUT`` and
``ERR`` are followed by exactly ``N`` raw bytes. Tokens are lower-case hex
chosen by the host. One command runs at a time; the host serialises its
callers with a lock per sprite.

Host to guest:

``HELLO <t>``
    Opens a session. If the command of an earlier session still runs (its
    caller died), it is killed and its last frames are sent; then the agent
    answers ``READY <t> 1``. The host skips everything before that answer,
    and the agent ignores lines it does not know, so a session starts
    cleanly whatever a dead caller left half-written. HELLO is repeated
    every second until answered (an agent stuck on a half-sent payload gives
    up on it after 5 s).
``RUN <t> <n>`` + n bytes
    The command, as a ``sh`` script the host writes (:func:`command_script`):
    environment, workdir, user and argv, each value shell-quoted.
``IN <t> <n>`` + n bytes
    Command input (at most :data:`CHUNK` bytes a frame). Before ``GO`` it
    goes to a file the command reads first; after ``GO 1`` each frame is a
    chunk handed to the command through a pipe, in order.
``GO <t> <mode>``
    Run the command. Mode 0: its stdin is what came before (possibly
    nothing), and it ends there. Mode 1: more comes, until ``EOF <t>``.
``EOF <t>``
    The streamed stdin ends.
``KILL <t>``
    SIGKILL the command's process group (the caller's timeout passed).

Guest to host:

``READY <t> <version>``
    The answer to ``HELLO``, after an empty line (whatever came before it,
    even a line cut short, is over).
``ACK <t> <k>``
    The k-th chunk streamed after ``GO 1`` was handed to the command. The
    host keeps at most :data:`WINDOW` chunks unacknowledged, so a command
    that does not read its stdin holds it back as a pipe would.
``OUT <t> <n>`` / ``ERR <t> <n>`` + n bytes
    Output of the command as it comes (the agent polls the files the
    command writes to: every 20 ms while output flows, backing off to
    every 0.5 s when it is quiet).
``EXIT <t> <code>``
    The command ended: its exit code, 128 + N when signal N ended it. What
    a process it left in the background writes later is not sent.
``FAIL <t> <message>``
    The command could not be run (no such workdir or program) or its input
    could not be kept; what ran was killed.

Only the agent's relay process writes frames while a command runs, so
frames never interleave. Everything that comes out of the guest is
untrusted: sizes are bounded and a malformed frame ends the call with an
error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import select
import shlex
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Protocol

from reconciler.record import record

#: The name of the guest's virtio serial port for the agent.
PORT_NAME = "sprites.agent"
PROTOCOL = 1
#: Where the agent lives in the initramfs.
GUEST_PATH = "bin/sprites-agent"
#: Bytes of stdin per IN frame.
CHUNK = 256 << 10
#: Input read before the command starts: when it all comes without waiting
#: (bytes, a file, /dev/null) the command reads it from a file, which is
#: cheaper than streaming it.
PRELOAD = 1 << 20
#: Streamed chunks the guest may hold that the command has not taken yet.
WINDOW = 8
#: The longest command script (argv, environment) the agent takes.
MAX_SCRIPT = 1 << 20
#: The largest output frame a guest may send (the agent sends at most 1MiB).
MAX_FRAME = 16 << 20
MAX_LINE = 4096
#: How often HELLO is repeated while the agent does not answer.
HELLO_EVERY = 1.0
#: How long a caller waits for READY at most.
HELLO_TIMEOUT = 15.0
#: After KILL, how long to wait for the command's EXIT.
KILL_GRACE = 5.0
#: Once the command ended, how long to finish writing a frame begun before.
FLUSH_GRACE = 2.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

AGENT_SCRIPT = r"""#!/bin/sh
# sprites-agent: runs the host's commands, one at a time, on the virtio
# port sprites.agent. Protocol: reconciler/drivers/microvm/agent.py.
umask 077
D=/run/sprites-agent
R=$D/run
port= i=0
# The port shows up (and gets its name) shortly after the modules load.
while [ -z "$port" ] && [ $i -lt 100 ]; do
  for f in /sys/class/virtio-ports/*/name; do
    [ -r "$f" ] && read -r n <"$f" && [ "$n" = sprites.agent ] || continue
    p=${f%/name}
    port=/dev/${p##*/}
  done
  [ -n "$port" ] && [ -c "$port" ] || { port=; usleep 100000; }
  i=$((i + 1))
done
[ -n "$port" ] || exit 0
set -f
exec </dev/null >/dev/null 2>&1
mkdir -p "$D" && exec 3<>"$port" || exit 1
job= token= mode= lost= k=0

take() { # N FILE: append exactly N bytes of the port to FILE
  timeout 5 dd bs="$1" count=1 iflag=fullblock <&3 >>"$2"
}

stop() { # end the command of the last session, and wait for its last frames
  [ -n "$job" ] || return 0
  i=0 dog=
  while [ ! -s "$R/pgid" ] && [ ! -s "$R/rc" ] && [ $i -lt 50 ]; do
    usleep 100000
    i=$((i + 1))
  done
  if [ ! -s "$R/rc" ]; then
    [ -s "$R/pgid" ] && read -r g <"$R/pgid" && kill -KILL -"$g"
    # A relay that does not end even so is killed: the host skips what it
    # left half-written up to the empty line before READY.
    (
      sleep 10
      kill -KILL "$job"
    ) &
    dog=$!
  fi
  wait "$job"
  [ -z "$dog" ] || kill "$dog"
  job=
}

lose() { # MESSAGE: input was lost; stop the command (its relay says why) or say it now
  lost=1
  if [ -n "$job" ]; then
    echo "$1" >"$R/lost"
    [ -s "$R/pgid" ] && read -r g <"$R/pgid" && kill -KILL -"$g"
  else
    printf 'FAIL %s %s\n' "$token" "$1" >&3
  fi
}

send() { # KIND FILE: send what FILE gained since the last call (1MiB at most)
  eval "off=\$off_$2"
  [ "$off" -gt 0 ] || [ -s "$R/$2" ] || return 1
  dd if="$R/$2" of="$R/chunk" bs=65536 count=16 skip="$off" iflag=skip_bytes || return 1
  [ -s "$R/chunk" ] || return 1
  n=$(stat -c %s "$R/chunk")
  printf '%s %s %s\n' "$1" "$t" "$n" >&3
  cat "$R/chunk" >&3
  eval "off_$2=\$((off + n))"
}

feed() { # the command's streamed stdin: what came before GO, then each chunk announced
  cat "$R/stdin" || return
  while read -r c <&8; do
    [ "$c" = eof ] && return
    cat "$R/in.$c" || return
    rm -f "$R/in.$c"
    printf a 1<>"$R/wake"
  done
}

relay() { # TOKEN MODE: run the command, send its output as it comes, then how it ended
  t=$1 off_out=0 off_err=0 quiet=0 feeder= input=$R/stdin
  exec 7<>"$R/wake"
  if [ "$2" = 1 ]; then
    mkfifo "$R/in"
    input=$R/in
    (
      exec 3>&- 7>&- >"$R/in"
      feed
    ) &
    feeder=$!
  fi
  (
    exec 3>&- 7>&- 8>&-
    # A subshell that execs: the shell waiting for it writes no "Killed"
    # on the command's stderr.
    (
      exec <"$input" >"$R/out" 2>"$R/err" 9>"$R/fail"
      exec setsid /bin/sh -c 'echo $$ >"$1/pgid"; . "$1/script"' sh "$R"
    )
    echo $? >"$R/rc"
    printf d 1<>"$R/wake"
  ) &
  # Until the wrapper's "d" (rc may exist before it holds the code), with
  # an "a" from the feeder for each chunk. One byte each: a read -t that
  # times out drops what it read of a longer line.
  ended= acks=0
  while [ -z "$ended" ]; do
    if send OUT out; then quiet=0; fi
    if send ERR err; then quiet=0; fi
    case $quiet in 0) w=0.02 ;; 1) w=0.05 ;; 2) w=0.1 ;; 3) w=0.2 ;; *) w=0.5 ;; esac
    quiet=$((quiet + 1))
    if read -r -n 1 -t "$w" x <&7; then
      case $x in
      d) ended=1 ;;
      a)
        acks=$((acks + 1))
        printf 'ACK %s %s\n' "$t" "$acks" >&3
        quiet=0
        ;;
      esac
    fi
  done
  [ -z "$feeder" ] || kill "$feeder"
  while send OUT out; do :; done
  while send ERR err; do :; done
  if [ -s "$R/lost" ] && read -r m <"$R/lost"; then
    printf 'FAIL %s %s\n' "$t" "$m" >&3
  elif [ -s "$R/fail" ] && read -r m <"$R/fail"; then
    printf 'FAIL %s %s\n' "$t" "$m" >&3
  else
    read -r rc <"$R/rc"
    printf 'EXIT %s %s\n' "$t" "${rc:-255}" >&3
  fi
  rm -f "$R/out" "$R/err" "$R/chunk" "$R/stdin"  # the guest's memory
}

while read -r verb t n <&3; do
  case $t in '' | *[!0-9a-f]*) continue ;; esac
  if [ -n "$lost" ] && [ "$verb" != HELLO ]; then continue; fi
  case $verb in
  HELLO)
    stop
    lost= token=
    printf '\nREADY %s 1\n' "$t" >&3
    ;;
  RUN | IN)
    case $n in '' | *[!0-9]*) continue ;; esac
    [ "$n" -ge 1 ] && [ "$n" -le 1048576 ] || continue
    if [ "$verb" = RUN ]; then
      stop
      token=$t mode= k=0
      exec 8>&-
      rm -rf "$R"
      if mkdir "$R" && mkfifo "$R/wake" "$R/feed" && : >"$R/stdin" && exec 8<>"$R/feed"; then
        take "$n" "$R/script" || lose 'cannot receive the command'
      else
        take "$n" /dev/null
        lose 'cannot prepare the command in the guest'
      fi
    elif [ "$t" != "$token" ]; then
      take "$n" /dev/null
    elif [ -z "$job" ]; then
      take "$n" "$R/stdin" || lose "cannot keep stdin in the guest's memory"
    elif [ "$mode" = 1 ] && [ ! -s "$R/rc" ]; then
      k=$((k + 1))
      if take "$n" "$R/in.$k"; then
        echo "$k" >&8
      else
        lose "cannot keep stdin in the guest's memory"
      fi
    else
      take "$n" /dev/null
    fi
    ;;
  GO)
    [ "$t" = "$token" ] && [ -z "$job" ] || continue
    case $n in 0 | 1) mode=$n ;; *) continue ;; esac
    relay "$t" "$mode" &
    job=$!
    ;;
  EOF)
    [ "$t" = "$token" ] && [ "$mode" = 1 ] && echo eof >&8
    ;;
  KILL)
    [ "$t" = "$token" ] && [ ! -s "$R/rc" ] && [ -s "$R/pgid" ] && read -r g <"$R/pgid" &&
      kill -KILL -"$g"
    ;;
  esac
done
exit 1
"""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


#: What a command reads: bytes, a readable binary file object, a file
#: descriptor, or None (nothing).
Input = bytes | int | IO[bytes] | None


class AgentError(Exception):
    """The agent cannot be reached, or broke the protocol."""


class AgentGone(AgentError):
    """The VM went away, or cannot run the agent now."""


@record(frozen=True, slots=True)
class Outcome:
    """How a command ended: ``exit_code`` (None when it did not end after
    its KILL), or ``failure`` when it could not run; ``timed_out`` when the
    caller's deadline passed. Output given to a sink is not kept here."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    failure: str | None = None
    timed_out: bool = False


def channel_paths(base: str) -> tuple[str, str]:
    """(host-to-guest FIFO, guest-to-host FIFO) of a channel."""
    return base + ".in", base + ".out"


def make_channel(base: str) -> None:
    """Create the channel's two FIFOs (0600); QEMU opens them at start."""
    for path in channel_paths(base):
        os.mkfifo(path, 0o600)


def remove_channel(base: str) -> None:
    for path in channel_paths(base):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def qemu_args(base: str, escape: Callable[[str], str]) -> list[str]:
    """QEMU's options for the agent's port."""
    return [
        "-chardev",
        f"pipe,id=agent,path={escape(base)}",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
    ]


# ------------------------------------------------------------ the command


def command_script(
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str,
    uid: int | None = None,
    gid: int | None = None,
) -> bytes:
    """The ``sh`` script the agent runs (sources) for one command: enter ``workdir``,
    check that ``argv[0]`` can run (in ``env``'s PATH), then exec it with
    exactly ``env`` as ``uid:gid`` (busybox ``nsenter -S/-G`` without a
    namespace sets the ids and drops supplementary groups). A failure
    before the exec is one line on fd 9 (the agent's FAIL) and status 126."""
    q = shlex.quote
    path = env.get("PATH", DEFAULT_PATH)
    lines = [
        "set -f",
        "fail() { printf '%s\\n' \"$1\" >&9; exit 126; }",
        f"w={q(workdir)} a={q(argv[0])} P={q(path)}",
        'if ! cd -- "$w" 2>/dev/null; then',
        '  if [ -d "$w" ]; then fail "cannot enter workdir $w: Permission denied"',
        '  elif [ -e "$w" ]; then fail "cannot enter workdir $w: Not a directory"',
        '  else fail "cannot enter workdir $w: No such file or directory"; fi',
        "fi",
        "p=$a",
        "case $a in",
        "*/*) ;;",
        "*) p= IFS=:",
        "   for d in $P; do",
        '     [ -n "$d" ] || d=.',
        '     if [ -f "$d/$a" ] && [ -x "$d/$a" ]; then p=$d/$a; break; fi',
        "   done",
        "   unset IFS ;;",
        "esac",
        '[ -n "$p" ] && [ -e "$p" ] || fail "cannot run $a: No such file or directory"',
        '[ ! -d "$p" ] && [ -x "$p" ] || fail "cannot run $a: Permission denied"',
        "exec 9>&-",
    ]
    assignments = " ".join(q(f"{key}={value}") for key, value in env.items())
    words = " ".join(q(arg) for arg in argv)
    # env -i: exactly this environment. nsenter -S/-G switches the ids; its
    # "--" also keeps a program with a '=' in its name from being taken for
    # a variable. (Each exec costs some 5 ms under TCG: only when needed.)
    runner = ""
    if uid is not None and gid is not None:
        runner = f"/bin/nsenter -F -S {int(uid)} -G {int(gid)} -- "
    elif "=" in argv[0]:
        runner = "/bin/nsenter -F -- "
    lines.append(
        " ".join(part for part in ("exec /bin/env -i --", assignments, runner + words) if part)
    )
    return ("\n".join(lines) + "\n").encode()


# -------------------------------------------------------------- the host


_FRAME_RE = re.compile(rb"(OUT|ERR|EXIT|FAIL|READY|ACK) ([0-9a-f]+)(?: ([^\n]*))?")


def _token() -> str:
    return secrets.token_hex(8)


class _Channel:
    """The host's ends of the two FIFOs, non-blocking."""

    def __init__(self, base: str) -> None:
        to_guest, from_guest = channel_paths(base)
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.rfd = os.open(from_guest, os.O_RDONLY | flags)
        except FileNotFoundError:
            raise AgentGone("its agent channel is gone") from None
        try:
            if not stat.S_ISFIFO(os.fstat(self.rfd).st_mode):
                raise AgentError(f"{from_guest} is not a FIFO")
            try:
                self.wfd = os.open(to_guest, os.O_WRONLY | flags)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    raise AgentGone("QEMU no longer holds its agent channel") from None
                raise
            if not stat.S_ISFIFO(os.fstat(self.wfd).st_mode):
                os.close(self.wfd)
                raise AgentError(f"{to_guest} is not a FIFO")
        except BaseException:
            os.close(self.rfd)
            raise
        self.pending = bytearray()
        self.received = bytearray()

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)

    def send(self, data: bytes) -> None:
        self.pending += data

    def send_now(self, data: bytes) -> None:
        """Best effort, without waiting (a KILL on the way out)."""
        try:
            os.write(self.wfd, bytes(self.pending) + data)
        except OSError:
            pass

    def pump(self, until: float | None, extra: int | None = None) -> bool:
        """Write what is pending and read what came, waiting at most until
        ``until`` (None: until something happens); True when ``extra`` (an
        fd) is readable."""
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        if self.pending:
            poller.register(self.wfd, select.POLLOUT)
        if extra is not None:
            poller.register(extra, select.POLLIN)
        wait = None if until is None else max(0, int((until - time.monotonic()) * 1000) + 1)
        try:
            events = poller.poll(wait)
        except InterruptedError:
            return False
        ready = False
        for fd, _event in events:
            if fd == extra:
                ready = True
            elif fd == self.wfd:
                try:
                    written = os.write(self.wfd, self.pending)
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise AgentGone("QEMU stopped reading its agent channel") from None
                del self.pending[:written]
            elif fd == self.rfd:
                try:
                    data = os.read(self.rfd, 1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    raise AgentGone("QEMU closed its agent channel")
                self.received += data
        return ready


class _Source:
    """The command's stdin, read in chunks: bytes and file objects without
    a descriptor at once, a descriptor only once poll says it is readable."""

    def __init__(self, stdin: Input) -> None:
        self.data: bytes | None = None
        self.fd: int | None = None
        self.stream: IO[bytes] | None = None
        self.done = stdin is None
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            self.data = bytes(stdin)
        elif isinstance(stdin, int):
            self.fd = stdin
        elif stdin is not None:
            try:
                self.fd = stdin.fileno()
            except (AttributeError, OSError, ValueError):
                self.stream = stdin

    def poll_fd(self) -> int | None:
        """The descriptor to poll before :meth:`read`; None when it reads at once."""
        return self.fd if not self.done else None

    def ready_now(self) -> bool:
        if self.done or self.fd is None:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(0))

    def read(self) -> bytes | None:
        """The next chunk; b"" at the end, None when the descriptor had nothing."""
        if self.done:
            return b""
        if self.data is not None:
            chunk, self.data = self.data[:CHUNK], self.data[CHUNK:]
        elif self.fd is not None:
            try:
                chunk = os.read(self.fd, CHUNK)
            except BlockingIOError:
                return None
        else:
            assert self.stream is not None
            chunk = self.stream.read(CHUNK) or b""
        if not chunk:
            self.done = True
        return bytes(chunk)


def run(
    base: str,
    script: bytes,
    *,
    stdin: Input = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    timeout: float | None = None,
    hello_timeout: float = HELLO_TIMEOUT,
    kill_grace: float = KILL_GRACE,
    still_running: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Run one command through the agent on channel ``base``.

    ``timeout`` None or <= 0 is no limit; past it the command is killed and
    the outcome says ``timed_out``. ``still_running`` is asked, while the
    agent does not answer, why the guest cannot (a reason, or None).
    Raises AgentGone when the VM goes away or cannot answer, AgentError
    when the agent does not answer or breaks the protocol."""
    if len(script) > MAX_SCRIPT:
        raise AgentError("the command and its environment are too long")
    deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
    channel = _Channel(base)
    try:
        session = _Session(channel, _Source(stdin), stdout, stderr)
        return session.run(script, deadline, hello_timeout, kill_grace, still_running)
    finally:
        channel.close()


class _Session:
    def __init__(
        self, channel: _Channel, source: _Source, stdout: Sink | None, stderr: Sink | None
    ) -> None:
        self.channel = channel
        self.source = source
        self.sinks: dict[bytes, Sink | None] = {b"OUT": stdout, b"ERR": stderr}
        self.kept: dict[bytes, list[bytes]] = {b"OUT": [], b"ERR": []}
        self.broken: set[bytes] = set()
        self.token = _token().encode()
        self.exit_code: int | None = None
        self.failure: str | None = None
        self.streamed = 0
        self.acked = 0

    # -- the phases ------------------------------------------------------

    def run(
        self,
        script: bytes,
        deadline: float | None,
        hello_timeout: float,
        kill_grace: float,
        still_running: Callable[[], str | None],
    ) -> Outcome:
        if not self._hello(deadline, hello_timeout, still_running):
            return self._outcome(timed_out=True)
        channel = self.channel
        channel.send(b"RUN %s %d\n" % (self.token, len(script)) + script)
        streaming = not self._preload()
        channel.send(b"GO %s %d\n" % (self.token, 1 if streaming else 0))
        try:
            while True:
                if self._frames():
                    self._flush()
                    return self._outcome()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                wait_on = None
                if streaming and self._room():
                    wait_on = self.source.poll_fd()
                    if wait_on is None:
                        streaming = self._stream_next()
                        continue
                if channel.pump(deadline, wait_on):
                    streaming = self._stream_next()
        except BaseException:
            channel.send_now(b"\nKILL %s\n" % self.token)
            raise
        # Past the deadline: kill the command, and give it a moment to end.
        channel.send(b"KILL %s\n" % self.token)
        grace = time.monotonic() + kill_grace
        while time.monotonic() < grace:
            channel.pump(grace)
            if self._frames():
                break
        return self._outcome(timed_out=True)

    def _preload(self) -> bool:
        """Send the input that comes without waiting, up to PRELOAD bytes;
        True when that was all of it."""
        sent = 0
        while sent < PRELOAD and self.source.ready_now():
            chunk = self.source.read()
            if chunk is None:
                return False
            if not chunk:
                return True
            self.channel.send(b"IN %s %d\n" % (self.token, len(chunk)) + chunk)
            sent += len(chunk)
        return self.source.done

    def _room(self) -> bool:
        return len(self.channel.pending) < CHUNK and self.streamed - self.acked < WINDOW

    def _stream_next(self) -> bool:
        """Send the next streamed chunk, or EOF; False once EOF is sent."""
        chunk = self.source.read()
        if chunk is None:
            return True
        if not chunk:
            self.channel.send(b"EOF %s\n" % self.token)
            return False
        self.streamed += 1
        self.channel.send(b"IN %s %d\n" % (self.token, len(chunk)) + chunk)
        return True

    def _flush(self) -> None:
        """Finish writing a frame begun before the command ended, so the
        next session finds the agent reading lines."""
        until = time.monotonic() + FLUSH_GRACE
        while self.channel.pending and time.monotonic() < until:
            self.channel.pump(until)

    def _hello(
        self,
        deadline: float | None,
        hello_timeout: float,
        still_running: Callable[[], str | None],
    ) -> bool:
        """Open the session: False when the caller's deadline passed first."""
        channel = self.channel
        now = time.monotonic()
        give_up = now + hello_timeout
        tokens: list[bytes] = []
        next_hello = now
        while True:
            now = time.monotonic()
            if now >= next_hello:
                if tokens:
                    reason = still_running()
                    if reason:
                        raise AgentGone(reason)
                token = _token().encode()
                tokens.append(token)
                channel.send(b"\nHELLO %s\n" % token)
                next_hello = now + HELLO_EVERY
            if self._ready(tokens):
                return True
            if deadline is not None and now >= deadline:
                return False
            if now >= give_up:
                raise AgentError(f"its agent did not answer within {hello_timeout:g}s")
            until = min(next_hello, give_up)
            if deadline is not None:
                until = min(until, deadline)
            channel.pump(until)

    def _ready(self, tokens: list[bytes]) -> bool:
        received = self.channel.received
        for token in tokens:
            marker = b"\nREADY %s " % token
            at = (b"\n" + received).find(marker)
            if at < 0:
                continue
            end = received.find(b"\n", at + len(marker) - 1)
            if end < 0:
                return False
            del received[: end + 1]
            return True
        # Output of an earlier session: keep only what may begin an answer.
        if len(received) > 256:
            del received[:-256]
        return False

    def _frames(self) -> bool:
        """Handle the complete frames received; True once the command ended."""
        received = self.channel.received
        while True:
            newline = received.find(b"\n", 0, MAX_LINE + 1)
            if newline < 0:
                if len(received) > MAX_LINE:
                    raise AgentError("its agent sent a line that is too long")
                return False
            if newline == 0:
                del received[:1]  # the empty line before a READY
                continue
            match = _FRAME_RE.fullmatch(bytes(received[:newline]))
            if match is None:
                raise AgentError(
                    f"its agent broke the protocol: {bytes(received[: min(newline, 80)])!r}"
                )
            kind, token, arg = match.group(1), match.group(2), match.group(3) or b""
            if kind == b"READY":
                del received[: newline + 1]  # the answer to a repeated HELLO
                continue
            if token != self.token:
                raise AgentError("its agent answered for another command")
            if kind in (b"OUT", b"ERR"):
                if not arg.isdigit() or int(arg) > MAX_FRAME:
                    raise AgentError("its agent sent a frame of a bad size")
                size = int(arg)
                if len(received) < newline + 1 + size:
                    return False
                self._output(kind, bytes(received[newline + 1 : newline + 1 + size]))
                del received[: newline + 1 + size]
                continue
            del received[: newline + 1]
            if kind == b"ACK":
                if arg.isdigit() and len(arg) < 12:
                    self.acked = max(self.acked, int(arg))
                continue
            if kind == b"EXIT":
                if not arg.isdigit() or len(arg) > 3:
                    raise AgentError("its agent sent a bad exit code")
                self.exit_code = int(arg)
            else:
                self.failure = arg.decode("utf-8", "replace").strip() or "the command failed"
            return True

    def _output(self, kind: bytes, data: bytes) -> None:
        sink = self.sinks[kind]
        if sink is None:
            self.kept[kind].append(data)
            return
        if kind in self.broken:
            return
        try:
            sink.write(data)
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()
        except (BrokenPipeError, ValueError):
            self.broken.add(kind)  # the reader went away; keep the protocol going

    def _outcome(self, *, timed_out: bool = False) -> Outcome:
        return Outcome(
            exit_code=self.exit_code,
            stdout=b"".join(self.kept[b"OUT"]),
            stderr=b"".join(self.kept[b"ERR"]),
            failure=self.failure,
            timed_out=timed_out,
        )


def lock(path: str, deadline: float | None) -> int | None:
    """An exclusive flock on ``path`` (created 0600): the descriptor, or
    None when the deadline passed first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
