"""exec and cp inside a real microVM under TCG, through the agent in its
initramfs. One guest boots for the whole module (booting is the slow part)
and every case runs against it; the module's state directory is swept
afterwards, whatever happened: VMs killed, then any QEMU left SIGKILLed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler import transfer
from reconciler.drivers.base import ExecInput, ExecResult, OutputSink, StartRequest
from reconciler.drivers.microvm import MicroVMDriver
from reconciler.drivers.microvm.image import Image
from reconciler.errors import RuntimeCallError, RuntimeTimeoutError, SpriteNotFoundError
from tests.drivers.microvm.conftest import qemu_processes, sweep

pytestmark = pytest.mark.slow
MiB = 1 << 20
NAME = "mvm-exec"


@dataclass
class Guest:
    driver: MicroVMDriver
    state_dir: pathlib.Path

    def run(self, *argv: str, **options: Any) -> ExecResult:
        options.setdefault("timeout", 120)
        return self.driver.exec(NAME, list(argv), **options)

    def out(self, *argv: str, **options: Any) -> str:
        result = self.run(*argv, **options)
        assert result.exit_code == 0, result
        return result.stdout.decode()


@pytest.fixture(scope="module")
def guest(qemu: str, guest_image: Image) -> Iterator[Guest]:
    base = pathlib.Path(tempfile.mkdtemp(prefix="mvm-exec-"))
    try:
        (base / "microvm").mkdir(mode=0o700)
        os.symlink(guest_image.kernel.parent, base / "microvm" / "image")
        driver = MicroVMDriver(base, timeout=240, accel="tcg")
        driver.start(
            StartRequest(
                name=NAME,
                memory=256 * MiB,
                cpus=1,
                env={"FROM_SPRITE": "yes", "SHARED": "sprite"},
                options={"workdir": "/work"},
            )
        )
        yield Guest(driver, base)
        driver.kill(NAME)
        # Nothing is left: no QEMU, socket, FIFO or record.
        assert not qemu_processes(str(base))
        assert os.listdir(driver.layout.run) == []
        assert os.listdir(driver.layout.sprites) == []
    finally:
        sweep(base)


def test_exit_codes_and_output(guest: Guest) -> None:
    result = guest.run("sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert result.duration > 0
    assert guest.run("true").exit_code == 0
    assert guest.run("sh", "-c", "kill -TERM $$").exit_code == 128 + 15
    # Back to back, each call gets its own command's code (none is cut short
    # or mixed up with the one before).
    codes = [guest.run("sh", "-c", f"exit {n % 7}").exit_code for n in range(60)]
    assert codes == [n % 7 for n in range(60)]
    # Binary output of several frames comes back intact.
    digest = guest.out("sh", "-c", "head -c 3000000 /dev/urandom >/tmp/blob; sha256sum /tmp/blob")
    blob = guest.run("cat", "/tmp/blob").stdout
    assert hashlib.sha256(blob).hexdigest() == digest.split()[0]
    # Every argument arrives as it was given, with no shell in between.
    printed = guest.out("printf", "%s|", "a b", "", "it's", "$(echo no)", "*", "x=y")
    assert printed == "a b||it's|$(echo no)|*|x=y|"


def test_the_environment_and_workdir(guest: Guest) -> None:
    shown = guest.out("sh", "-c", 'echo "$FROM_SPRITE $SHARED $HOSTNAME $HOME $USER"; pwd')
    assert shown == "yes sprite mvm-exec /root root\n/work\n"
    tricky = 'it\'s "quoted" $HOME\nand a second line'
    shown = guest.out(
        "sh", "-c", 'printf "%s/%s" "$SHARED" "$TRICKY"', env={"SHARED": "exec", "TRICKY": tricky}
    )
    assert shown == f"exec/{tricky}"
    assert "odd-name=1" in guest.out("env", env={"odd-name": "1"}).splitlines()
    assert guest.out("pwd", workdir="/tmp") == "/tmp\n"
    with pytest.raises(RuntimeCallError, match="cannot enter workdir /no/such: No such file"):
        guest.run("pwd", workdir="/no/such")
    with pytest.raises(RuntimeCallError, match="expected an absolute path"):
        guest.run("pwd", workdir="relative")


def test_users(guest: Guest) -> None:
    assert guest.out("id", "-u") == "0\n"
    assert guest.out("id", user="sprite") == "uid=1000(sprite) gid=1000(sprite)\n"
    assert guest.out("sh", "-c", "echo $HOME $USER", user="sprite") == "/home/sprite sprite\n"
    assert guest.out("sh", "-c", "id -un; echo $HOME", user="nobody") == "nobody\n/nonexistent\n"
    assert guest.out("id", user="4242:sprite") == "uid=4242 gid=1000(sprite)\n"
    assert guest.out("sh", "-c", "touch /home/sprite/mine && stat -c %U /home/sprite/mine",
                     user="sprite") == "sprite\n"  # fmt: skip
    with pytest.raises(RuntimeCallError, match="unknown user 'alice'"):
        guest.run("true", user="alice")


def test_stdin(guest: Guest) -> None:
    assert guest.out("wc", "-c", stdin=b"x" * 100_000).split() == ["100000"]
    # Without stdin the command reads nothing, and does not wait.
    assert guest.run("sh", "-c", "cat; echo after").stdout == b"after\n"
    # A pipe is streamed, a window at a time, however long it is.
    data = os.urandom(3 * MiB + 17)
    reader, writer = os.pipe()

    def produce() -> None:
        with os.fdopen(writer, "wb") as stream:
            stream.write(data)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        digest = guest.out("sha256sum", stdin=reader)
    finally:
        os.close(reader)
        producer.join()
    assert digest.split()[0] == hashlib.sha256(data).hexdigest()
    # A command that does not read an open pipe ends all the same.
    reader, writer = os.pipe()
    try:
        assert guest.run("true", stdin=reader, timeout=60).exit_code == 0
    finally:
        os.close(reader)
        os.close(writer)


def test_input_and_output_stream_while_the_command_runs(guest: Guest) -> None:
    """The command answers a line it reads only after its first line came
    out: without streaming both ways it would never end."""
    reader, writer = os.pipe()

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, chunk: bytes) -> None:
            self.data += chunk
            if b"first" in self.data and writer_open:
                os.write(writer, b"hello\n")
                os.close(writer)
                writer_open.clear()

    writer_open = [True]
    sink = Sink()
    try:
        result = guest.run(
            "sh", "-c", 'echo first; read line; echo "got $line"', stdin=reader, stdout=sink
        )
    finally:
        os.close(reader)
        if writer_open:
            os.close(writer)
    assert result.exit_code == 0
    assert sink.data == b"first\ngot hello\n" and result.stdout == b""


def test_failures_to_run(guest: Guest) -> None:
    with pytest.raises(RuntimeCallError, match="cannot run /no/such/program: No such file"):
        guest.run("/no/such/program")
    with pytest.raises(RuntimeCallError, match="cannot run no-such-command: No such file"):
        guest.run("no-such-command")
    with pytest.raises(RuntimeCallError, match="cannot run /tmp: Permission denied"):
        guest.run("/tmp")
    with pytest.raises(SpriteNotFoundError):
        guest.driver.exec("mvm-nobody", ["true"])
    assert guest.run("true").exit_code == 0


def test_a_command_past_its_timeout_is_killed_and_the_guest_stays_usable(guest: Guest) -> None:
    with pytest.raises(RuntimeTimeoutError) as caught:
        guest.run("sh", "-c", "sleep 60 & wait", timeout=2)
    assert caught.value.user_message == (
        "Failed to exec in Sprite: Command timed out after 2 seconds"
    )
    processes = guest.out("ps", "-o", "args")
    assert "sleep 60" not in processes
    assert guest.out("echo", "still here") == "still here\n"


def test_concurrent_callers_take_turns(guest: Guest) -> None:
    results: dict[str, str] = {}

    def call(word: str) -> None:
        results[word] = guest.out("sh", "-c", 'sleep 0.3; echo "$1"', "sh", word)

    threads = [threading.Thread(target=call, args=(word,)) for word in ("one", "two", "three")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"one": "one\n", "two": "two\n", "three": "three\n"}


def _tree(root: pathlib.Path) -> dict[str, tuple[str, int, bytes]]:
    """relative path -> (kind, mode, content or link target) of a host tree."""
    found: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("link", 0, os.readlink(path).encode())
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode), b"")
        else:
            found[name] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return found


def test_cp_a_directory_in_and_out(guest: Guest, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "project"
    (source / "src" / "deep").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "README").write_text("read me\n")
    (source / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (source / "run.sh").chmod(0o751)
    (source / "src" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (source / "src" / "deep" / "data.bin").chmod(0o600)
    (source / "src" / ("long-name-" * 12)).write_text("long\n")
    (source / "link").symlink_to("README")

    def exec_in(argv: Sequence[str], stdin: ExecInput, stdout: OutputSink | None) -> ExecResult:
        return guest.driver.exec(NAME, argv, stdin=stdin, stdout=stdout, timeout=120)

    # A directory copied to a path that does not exist becomes that path.
    copied = transfer.copy_to(
        exec_in, transfer.Location(str(source)), transfer.Location("/work/project", NAME)
    )
    assert copied.target == "/work/project"
    assert copied.bytes == 300_000 + len("read me\n") + len("#!/bin/sh\necho ran\n") + 5
    assert guest.out("/work/project/run.sh") == "ran\n"
    assert guest.out("stat", "-c", "%a", "/work/project/src/deep/data.bin") == "600\n"
    assert guest.out("readlink", "/work/project/link") == "README\n"
    # Onto an existing directory it goes inside it.
    transfer.copy_to(
        exec_in, transfer.Location(str(source / "README")), transfer.Location("/work", NAME)
    )
    assert guest.out("cat", "/work/README") == "read me\n"

    back = tmp_path / "back"
    copied = transfer.copy_from(
        exec_in, transfer.Location("/work/project", NAME), transfer.Location(str(back))
    )
    assert copied.target == str(back)
    assert _tree(back) == _tree(source)

    with pytest.raises(transfer.CopyError, match="no such file or directory"):
        transfer.copy_from(
            exec_in, transfer.Location("/work/nothing", NAME), transfer.Location(str(tmp_path))
        )


def test_the_command_line_execs_and_copies(
    guest: Guest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from reconciler.cli import cli

    config = tmp_path / ".wreckit" / "config.json"
    config.parent.mkdir()
    agent = {"kind": "sprite", "runtime": "microvm", "accel": "tcg", "timeout": 120}
    config.write_text(json.dumps({"agent": agent}))
    monkeypatch.chdir(tmp_path)

    def sprites(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        options = ["--config", str(config), "--state-dir", str(guest.state_dir)]
        result = CliRunner().invoke(cli, [*options, *args], input=stdin, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    assert sprites("exec", NAME, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3") == (
        3,
        "hi\n",
        "oops\n",
    )
    code, out, _ = sprites("exec", NAME, "--json", "-e", "N=4", "--", "sh", "-c", "echo $N")
    document = json.loads(out)
    assert code == 0 and document["success"] is True
    assert (document["data"]["exitCode"], document["data"]["stdout"]) == (0, "4\n")
    assert sprites("exec", NAME, "--", "tr", "a-z", "A-Z", stdin=b"shout\n")[:2] == (0, "SHOUT\n")
    code, _, err = sprites("exec", NAME, "--timeout", "1s", "--", "sleep", "30")
    assert code == 1 and "Command timed out after 1 seconds" in err

    (tmp_path / "notes.txt").write_text("copied by the cli\n")
    code, out, _ = sprites("cp", "notes.txt", f"{NAME}:/tmp/")
    assert code == 0, out
    assert guest.out("cat", "/tmp/notes.txt") == "copied by the cli\n"
    code, out, _ = sprites("cp", f"{NAME}:/tmp/notes.txt", "returned.txt")
    assert code == 0, out
    assert (tmp_path / "returned.txt").read_text() == "copied by the cli\n"
