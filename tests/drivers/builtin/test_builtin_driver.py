"""The built-in runtime against the real kernel: namespaces, cgroup limits,
console, kill, and the state ``list`` derives from records and /proc."""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from reconciler import errors
from reconciler.drivers import base
from reconciler.drivers.builtin import cgroups, console, records
from reconciler.drivers.builtin.driver import BuiltinDriver

from .conftest import wait_for

MiB = 1 << 20
Names = Callable[[str], str]
#: The Python a sprite sees: its root has the host's /usr, not this venv.
SPRITE_PYTHON = "/usr/bin/python3"


def start(
    driver: BuiltinDriver,
    name: str,
    *command: str,
    memory: int = 64 * MiB,
    cpus: int = 1,
    **options: object,
) -> base.CallResult:
    env = options.pop("env", {})
    assert isinstance(env, dict)
    return driver.start(
        base.StartRequest(
            name=name, memory=memory, cpus=cpus, command=command, env=env, options=options
        )
    )


def sprite(driver: BuiltinDriver, name: str) -> object:
    return driver.list().by_name()[name]


def state_of(driver: BuiltinDriver, name: str) -> str:
    return driver.list().by_name()[name].state


def wait_ended(driver: BuiltinDriver, name: str, timeout: float = 10.0) -> None:
    assert wait_for(lambda: state_of(driver, name) != "running", timeout), "sprite kept running"


def console_of(driver: BuiltinDriver, name: str) -> str:
    out = driver.attach(name, interactive=False).stdout
    header = f"Connected to {name}. Console output:\n"
    assert out.startswith(header)
    return out[len(header) :]


def wait_console(driver: BuiltinDriver, name: str, text: str, timeout: float = 10.0) -> str:
    assert wait_for(lambda: text in console_of(driver, name), timeout), console_of(driver, name)
    return console_of(driver, name)


def limits_of(driver: BuiltinDriver, name: str) -> cgroups.SpriteCgroups:
    fd = records.open_dir(driver.layout.sprite(name))
    try:
        data = records.read_json(fd, "limits")
    finally:
        os.close(fd)
    assert data is not None
    groups = cgroups.SpriteCgroups.from_json(data)
    assert groups is not None
    return groups


def read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read().strip()


def groups_named(name: str) -> list[str]:
    """Every sprite group on this host made for a sprite called ``name``,
    whatever its state dir."""
    hierarchy = cgroups.detect()
    assert hierarchy is not None
    roots = [hierarchy.unified] if hierarchy.version == 2 else [m for _, m in hierarchy.v1]
    found: list[str] = []
    for root in roots:
        found += [str(p) for p in pathlib.Path(root, cgroups.PARENT).glob(f"{name}.*")]
    return found


# ------------------------------------------------------------------- start


def test_start_reports_id_connection_and_pid(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("start")
    result = start(driver, name)
    match = re.fullmatch(
        r"Started Sprite VM with ID: (sprite-[0-9a-f]{12})\nConnection: unix://(\S+)\n",
        result.stdout,
    )
    assert match, result.stdout
    assert result.id == match.group(1)
    assert result.address == f"unix://{match.group(2)}"
    assert result.pid is not None and records.is_alive(result.pid, records.proc_stat(result.pid)[1])  # type: ignore[index]
    listed = driver.list().by_name()[name]
    assert (listed.id, listed.state, listed.pid, listed.address) == (
        result.id,
        "running",
        result.pid,
        result.address,
    )
    assert (listed.runtime, listed.memory, listed.cpus) == ("builtin", 64 * MiB, 1)
    assert listed.started_at is not None and abs(listed.started_at - time.time()) < 60


def test_records_are_private(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("private")
    result = start(driver, name)
    assert result.address
    sock = pathlib.Path(result.address.removeprefix("unix://"))
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    root = driver.layout.root
    for directory in (root, driver.layout.sprites, driver.layout.run, driver.layout.sprite(name)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for path in driver.layout.sprite(name).iterdir():
        private = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == private, path
    files = driver.layout.files
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert stat.S_IMODE((files / name).stat().st_mode) == 0o700


def test_sprite_has_its_own_namespaces(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("ns")
    pid = start(driver, name).pid
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[1:] == [str(pid), "1"], "the init is PID 1 of its namespace"


def test_hostname_proc_and_loopback_inside(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("inside")
    host_mounts = pathlib.Path("/proc/self/mountinfo").read_text()
    start(
        driver,
        name,
        "/bin/sh",
        "-c",
        "echo host=$(cat /proc/sys/kernel/hostname) pid=$$; sleep 30",
    )
    out = wait_console(driver, name, "host=")
    assert f"host={name} pid=" in out
    assert driver.exec(name, ["cat", "/proc/sys/kernel/hostname"]).stdout.decode().strip() == name
    # A fresh /proc: only the sprite's processes, the init first.
    pids = driver.exec(name, ["sh", "-c", "ls /proc | grep -E '^[0-9]+$'"]).stdout.split()
    assert b"1" in pids and len(pids) < 10
    assert b"sprite-helper" in driver.exec(name, ["cat", "/proc/1/cmdline"]).stdout
    # Network: loopback only, and up.
    devices = driver.exec(name, ["cat", "/proc/net/dev"]).stdout.decode().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]
    probe = (
        "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
        "c=socket.create_connection(s.getsockname(), timeout=2); print('loopback-up')"
    )
    assert driver.exec(name, [SPRITE_PYTHON, "-c", probe]).stdout.strip() == b"loopback-up"
    # Nothing the sprite mounted shows on the host.
    assert pathlib.Path("/proc/self/mountinfo").read_text() == host_mounts


def test_cgroup_limits_hold_the_requested_values(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("limits")
    pid = start(driver, name, memory=96 * MiB, cpus=2, pids=100).pid
    groups = limits_of(driver, name)
    leaf = f"{name}.{cgroups.scope(driver.state_dir)}"
    assert all(d.endswith(f"/sprites/{leaf}") for d in groups.dirs)
    if groups.version == 1:
        assert groups.memory_dir.endswith(f"/memory/sprites/{leaf}")
        assert int(read(f"{groups.memory_dir}/memory.limit_in_bytes")) == 96 * MiB
        period = int(read(f"{groups.cpu_dir}/cpu.cfs_period_us"))
        assert int(read(f"{groups.cpu_dir}/cpu.cfs_quota_us")) == 2 * period
    else:
        assert int(read(f"{groups.memory_dir}/memory.max")) == 96 * MiB
        quota, cpu_period = read(f"{groups.cpu_dir}/cpu.max").split()
        assert int(quota) == 2 * int(cpu_period)
    assert read(f"{groups.pids_dir}/pids.max") == "100"
    for directory in groups.dirs:
        assert str(pid) in read(f"{directory}/cgroup.procs").split(), directory


def test_default_pids_limit(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("pids")
    start(driver, name)
    assert read(f"{limits_of(driver, name).pids_dir}/pids.max") == str(cgroups.DEFAULT_PIDS)


def test_memory_hog_is_killed_by_the_kernel_and_listed_as_error(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("hog")
    hog = "b = []\nwhile True:\n    b.append(bytearray(1 << 20))\n"
    start(driver, name, SPRITE_PYTHON, "-c", hog, memory=48 * MiB)
    wait_ended(driver, name, timeout=30)
    listed = driver.list().by_name()[name]
    assert listed.state == "error"
    assert listed.reason == "killed by the kernel: out of memory (limit 48MiB)"
    assert listed.pid is None
    assert "killed by the kernel: out of memory (limit 48MiB)" in driver.logs(name).stdout


def test_cpu_quota_is_enforced(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("cpu")
    start(driver, name, "/bin/sh", "-c", "while :; do :; done", cpus=1)
    groups = limits_of(driver, name)
    if groups.version == 1:
        stat_file = f"{groups.cpu_dir}/cpu.stat"
        assert wait_for(
            lambda: (
                "nr_throttled" in read(stat_file)
                and int(read(stat_file).split("nr_periods ")[1].split()[0]) > 0
            ),
            5,
        )
    else:
        assert "usage_usec" in read(f"{groups.cpu_dir}/cpu.stat")


def test_env_workdir_and_default_environment(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("env")
    start(
        driver,
        name,
        "/bin/sh",
        "-c",
        'echo "foo=$FOO cwd=$(pwd) host=$HOSTNAME"; sleep 30',
        env={"FOO": "bar baz"},
        workdir="/tmp",
    )
    assert f"foo=bar baz cwd=/tmp host={name}" in wait_console(driver, name, "foo=")
    assert driver.exec(name, ["pwd"]).stdout.strip() == b"/tmp"
    assert driver.exec(name, ["sh", "-c", "echo $FOO"]).stdout.strip() == b"bar baz"


def test_start_of_an_existing_name_fails(driver: BuiltinDriver, sprite_name: Names) -> None:
    running, stopped = sprite_name("dup-run"), sprite_name("dup-stop")
    start(driver, running)
    start(driver, stopped, "true")
    wait_ended(driver, stopped)
    for name in (running, stopped):
        with pytest.raises(errors.SpriteExistsError) as info:
            start(driver, name)
        assert info.value.user_message == f"Failed to start Sprite: sprite '{name}' already exists"
    assert state_of(driver, running) == "running"


def test_concurrent_starts_of_one_name_have_one_winner(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("race")
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            start(driver, name)
            outcome = "started"
        except errors.SpriteExistsError:
            outcome = "exists"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["exists"] * 5 + ["started"]
    assert [s.name for s in driver.list().sprites] == [name]


def test_insufficient_memory(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("huge")
    with pytest.raises(errors.RuntimeCallError) as info:
        start(driver, name, memory=1 << 40)
    assert info.value.reason == "insufficient memory"
    assert info.value.user_message == "Failed to start Sprite: insufficient memory"
    assert not driver.layout.sprite(name).exists()
    assert groups_named(name) == []
    assert driver.list().sprites == ()


def test_a_command_that_cannot_run_fails_the_start_and_leaves_nothing(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("nocmd")
    with pytest.raises(errors.RuntimeCallError) as info:
        start(driver, name, "/nonexistent/command")
    assert info.value.reason == "cannot run /nonexistent/command: No such file or directory"
    assert driver.list().sprites == ()
    assert list(driver.layout.run.iterdir()) == []
    assert groups_named(name) == []


def test_invalid_names_never_reach_the_filesystem(driver: BuiltinDriver) -> None:
    for bad in ("../escape", "Upper", "-lead", "a" * 64, "a/b", ""):
        with pytest.raises(errors.RuntimeCallError) as info:
            start(driver, bad)
        assert "invalid name" in info.value.reason
        for op in (driver.kill, driver.logs):
            with pytest.raises(errors.RuntimeCallError):
                op(bad)
    assert not driver.layout.sprites.exists() or list(driver.layout.sprites.iterdir()) == []


def test_bad_options_are_reported(driver: BuiltinDriver, sprite_name: Names) -> None:
    for options in ({"workdir": "relative"}, {"pids": 0}, {"user": "no-such-user-here"}):
        with pytest.raises(errors.RuntimeCallError):
            start(driver, sprite_name("opt"), **options)
    with pytest.raises(errors.RuntimeCallError):
        start(driver, sprite_name("opt"), env={"A=B": "x"})


# ------------------------------------------------------------- states


def test_clean_exit_is_stopped_and_failures_are_errors(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    cases = {
        sprite_name("ok"): (("true",), "stopped", "exited with code 0"),
        sprite_name("code"): (("/bin/sh", "-c", "exit 3"), "error", "exited with code 3"),
        sprite_name("sig"): (
            ("/bin/sh", "-c", "kill -TERM $$"),
            "error",
            "killed by signal 15 (SIGTERM)",
        ),
    }
    for name, (command, _, _) in cases.items():
        start(driver, name, *command)
    for name, (_, state, reason) in cases.items():
        wait_ended(driver, name)
        listed = driver.list().by_name()[name]
        assert (listed.state, listed.reason, listed.pid, listed.address) == (
            state,
            reason,
            None,
            None,
        ), name


def test_list_never_trusts_a_reused_pid(
    driver: BuiltinDriver, sprite_name: Names, state_dir: pathlib.Path
) -> None:
    """A record whose pid now belongs to another process (other start time)
    is not running, and kill leaves that process alone."""
    name = sprite_name("reuse")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        facts = records.proc_stat(bystander.pid)
        assert facts is not None
        driver.layout.ensure()
        record_dir = driver.layout.sprite(name)
        os.mkdir(record_dir, 0o700)
        fd = records.open_dir(record_dir)
        try:
            records.write_json(
                fd,
                "request",
                {
                    "id": "sprite-0123456789ab",
                    "name": name,
                    "memory": MiB,
                    "cpus": 1,
                    "socket": str(driver.layout.socket("sprite-0123456789ab")),
                },
            )
            wrong = facts[1] + 12345
            records.write_new(
                fd,
                "pids",
                (
                    f"supervisor_pid={bystander.pid}\nsupervisor_start={wrong}\n"
                    f"init_pid={bystander.pid}\ninit_start={wrong}\nstarted_at=1\n"
                ).encode(),
            )
        finally:
            os.close(fd)
        listed = driver.list().by_name()[name]
        assert listed.state == "error" and listed.pid is None
        result = driver.kill(name)
        assert result.stdout == f"Terminated VM {name} (PID: {bystander.pid})\n"
        assert bystander.poll() is None, "kill must not signal a process that reused the pid"
        assert not record_dir.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_supervisor_killed_while_the_sprite_survives(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("orphan")
    # Ignoring SIGHUP keeps the command alive when its console hangs up.
    result = start(driver, name, "/bin/sh", "-c", "trap '' HUP; echo up; sleep 60")
    wait_console(driver, name, "up")
    supervisor = _pids(driver, name)["supervisor_pid"]
    os.kill(int(supervisor), signal.SIGKILL)
    assert wait_for(lambda: sprite(driver, name).reason is not None, 5)  # type: ignore[attr-defined]
    listed = driver.list().by_name()[name]
    assert (listed.state, listed.pid, listed.address) == ("running", result.pid, None)
    assert listed.reason == "the console supervisor is not running"
    assert console_of(driver, name).startswith("up")
    _assert_kill_cleans(driver, name, result)


def test_supervisor_killed_takes_the_console_and_list_tells(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("hangup")
    result = start(driver, name, "sleep", "60")
    supervisor = _pids(driver, name)["supervisor_pid"]
    os.kill(int(supervisor), signal.SIGKILL)
    wait_ended(driver, name)
    listed = driver.list().by_name()[name]
    assert (listed.state, listed.reason) == ("error", "killed by signal 1 (SIGHUP)")
    _assert_kill_cleans(driver, name, result)


def _pids(driver: BuiltinDriver, name: str) -> dict[str, str]:
    fd = records.open_dir(driver.layout.sprite(name))
    try:
        pids = records.read_kv(fd, "pids")
    finally:
        os.close(fd)
    assert pids is not None
    return pids


# ---------------------------------------------------------------- kill


def _assert_kill_cleans(driver: BuiltinDriver, name: str, started: base.CallResult) -> None:
    groups = limits_of(driver, name)
    pids = _pids(driver, name)
    result = driver.kill(name)
    assert result.stdout == f"Terminated VM {name} (PID: {started.pid})\n"
    for key in ("init", "supervisor"):
        assert not records.is_alive(int(pids[f"{key}_pid"]), int(pids[f"{key}_start"])), key
    for directory in groups.dirs:
        assert not os.path.exists(directory), directory
    assert started.address is not None
    assert not os.path.exists(started.address.removeprefix("unix://"))
    assert not driver.layout.sprite(name).exists()
    assert name not in driver.list().by_name()
    assert list(driver.layout.trash.iterdir()) == []


def test_kill_leaves_no_process_cgroup_or_socket(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("kill")
    result = start(driver, name, "/bin/sh", "-c", "sleep 100 & sleep 100 & wait")
    _assert_kill_cleans(driver, name, result)


def test_kill_of_an_idle_shell_is_fast(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("idle")
    result = start(driver, name)  # the default interactive /bin/sh ignores SIGTERM
    wait_for(lambda: "#" in console_of(driver, name), 2)
    began = time.monotonic()
    _assert_kill_cleans(driver, name, result)
    assert time.monotonic() - began < driver.grace / 2


def test_kill_escalates_to_sigkill_after_the_grace(
    state_dir: pathlib.Path, sprite_name: Names
) -> None:
    from reconciler.drivers.builtin import make_driver

    driver = make_driver(state_dir, timeout=30, grace=0.5)
    name = sprite_name("stubborn")
    result = start(
        driver, name, "/bin/sh", "-c", "trap '' TERM HUP; echo armed; while :; do sleep 0.1; done"
    )
    wait_console(driver, name, "armed")
    began = time.monotonic()
    _assert_kill_cleans(driver, name, result)
    assert 0.4 <= time.monotonic() - began < 3


def test_kill_of_a_stopped_sprite_cleans_up(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("gone")
    result = start(driver, name, "true")
    wait_ended(driver, name)
    _assert_kill_cleans(driver, name, result)


def test_unknown_names_are_not_found(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("nobody")
    for op, call in (
        ("kill", lambda: driver.kill(name)),
        ("attach", lambda: driver.attach(name, interactive=False)),
        ("logs", lambda: driver.logs(name)),
        ("exec", lambda: driver.exec(name, ["true"])),
    ):
        with pytest.raises(errors.SpriteNotFoundError) as info:
            call()
        assert info.value.op == op
        assert info.value.reason == f"sprite '{name}' not found"


# ------------------------------------------------------------- console


def test_attach_one_shot_shows_console_output(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("hello")
    start(driver, name, "/bin/sh", "-c", "echo hello; sleep 30")
    wait_console(driver, name, "hello")
    result = driver.attach(name, interactive=False)
    assert result.stdout == f"Connected to {name}. Console output:\nhello\n"
    # Without a terminal, interactive falls back to the one-shot form.
    assert driver.attach(name, interactive=True).stdout == result.stdout


def test_console_keeps_only_recent_output(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("ring")
    script = "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo done; sleep 30"
    start(driver, name, "/bin/sh", "-c", script)
    out = wait_console(driver, name, "done")
    assert len(out.encode()) <= 65536
    assert "line-2999-" in out and "line-0-" not in out
    tail = out.splitlines()
    assert tail[-1] == "done"


def test_interactive_round_trip_through_the_console_socket(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("socket")
    result = start(driver, name)
    assert result.address
    with console.connect(result.address.removeprefix("unix://")) as sock:
        sock.settimeout(5)
        sock.sendall(b"echo $((6*7))-answer\n")
        received = b""
        deadline = time.monotonic() + 10
        while b"42-answer\r\n" not in received and time.monotonic() < deadline:
            received += sock.recv(4096)
        assert b"42-answer\r\n" in received
    assert "42-answer" in console_of(driver, name)
    assert state_of(driver, name) == "running"


def test_interactive_attach_through_a_terminal(
    state_dir: pathlib.Path, driver: BuiltinDriver, sprite_name: Names
) -> None:
    import pty

    from .conftest import wisp_command

    name = sprite_name("tty")
    start(driver, name)
    master, slave = pty.openpty()
    env = dict(os.environ, SPRITES_STATE_DIR=str(state_dir))
    proc = subprocess.Popen(
        [*wisp_command(), "attach", name], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, timeout: float = 10) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert marker in seen, seen

    try:
        read_until(b"Ctrl-] to detach")
        os.write(master, b"echo round-$((1+1))-trip\r")
        read_until(b"round-2-trip\r\n")
        os.write(master, b"\x1d")
        read_until(b"Detached from")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert state_of(driver, name) == "running", "detaching leaves the sprite running"


# ---------------------------------------------------------------- logs


def test_logs_of_one_sprite_and_of_all(driver: BuiltinDriver, sprite_name: Names) -> None:
    first, second = sprite_name("log1"), sprite_name("log2")
    start(driver, first, "/bin/sh", "-c", "echo first-output; sleep 30")
    start(driver, second, "true")
    wait_console(driver, first, "first-output")
    wait_ended(driver, second)
    # The supervisor logs the end just after the init records it.
    assert wait_for(lambda: "sprite " + second + " ended" in driver.logs(second).stdout, 5)
    one = driver.logs(first).stdout
    assert f"started sprite {first}" in one
    assert "Console output:\nfirst-output\n" in one
    everything = driver.logs(None).stdout
    assert f"[{first}] started sprite {first}" in everything
    assert f"[{second}] command exited with code 0" in everything
    assert f"started sprite {second}" in everything
    stamps = [line.split(" ", 1)[0] for line in everything.splitlines()]
    assert stamps == sorted(stamps)
    driver.kill(second)
    assert f"killed sprite {second}" in driver.logs(None).stdout


# ---------------------------------------------------------------- exec


def test_exec_runs_inside_and_returns_the_exit_code(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("exec")
    start(driver, name)
    result = driver.exec(name, ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    with pytest.raises(errors.RuntimeCallError) as info:
        driver.exec(name, ["/no/such/binary"])
    assert info.value.reason.startswith("cannot run /no/such/binary")
    with pytest.raises(errors.RuntimeTimeoutError):
        driver.exec(name, ["sleep", "30"], timeout=0.3)


def test_exec_in_a_stopped_sprite_fails(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("exec-stopped")
    start(driver, name, "true")
    wait_ended(driver, name)
    with pytest.raises(errors.RuntimeCallError) as info:
        driver.exec(name, ["true"])
    assert info.value.reason == f"sprite '{name}' is not running"


# -------------------------------------------------------- no cgroups


def test_without_writable_cgroups_start_is_denied_or_unlimited(
    state_dir: pathlib.Path, sprite_name: Names
) -> None:
    from reconciler.drivers.builtin import make_driver

    # sysfs refuses new directories even to root, as cgroups do without delegation.
    unwritable = cgroups.Hierarchy(
        version=1, v1=(("cpu", "/sys/kernel"), ("memory", "/sys/kernel"), ("pids", "/sys/kernel"))
    )
    strict = make_driver(state_dir, timeout=30)
    strict._hierarchy, strict._hierarchy_known = unwritable, True
    name = sprite_name("nocg")
    with pytest.raises(errors.RuntimeCallError) as info:
        start(strict, name)
    assert info.value.user_message == "Failed to start Sprite: permission denied"
    assert strict.list().sprites == ()

    lenient = make_driver(state_dir, timeout=30, enforce_limits=False)
    lenient._hierarchy, lenient._hierarchy_known = unwritable, True
    start(lenient, name)
    inventory = lenient.list()
    assert inventory.by_name()[name].state == "running"
    assert len(inventory.warnings) == 1
    assert "limits are not enforced" in inventory.warnings[0] and name in inventory.warnings[0]
    lenient.kill(name)


def test_inventory_raw_is_the_wisp_json(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("raw")
    result = start(driver, name)
    raw = json.loads(driver.list().raw)
    assert raw == [
        {
            "id": result.id,
            "name": name,
            "state": "running",
            "pid": result.pid,
            "address": result.address,
        }
    ]


# ------------------------------------------------------------- robustness


def test_console_socket_beyond_the_sun_path_limit(
    tmp_path: pathlib.Path, helper_binary: pathlib.Path, sprite_name: Names
) -> None:
    from reconciler.drivers.builtin import make_driver

    from .conftest import _seed_helper, cleanup_state

    deep = tmp_path / ("d" * 60) / ("e" * 60) / "state"
    _seed_helper(deep, helper_binary)
    driver = make_driver(deep, timeout=30, grace=2)
    name = sprite_name("long-path")
    try:
        result = start(driver, name)
        assert result.address is not None
        path = result.address.removeprefix("unix://")
        assert len(path) > 108 and pathlib.Path(path).exists()
        with console.connect(path) as sock:
            sock.settimeout(5)
            sock.sendall(b"echo long-$((2+3))\n")
            received = b""
            deadline = time.monotonic() + 10
            while b"long-5\r\n" not in received and time.monotonic() < deadline:
                received += sock.recv(4096)
        assert b"long-5\r\n" in received
        _assert_kill_cleans(driver, name, result)
    finally:
        cleanup_state(deep)


def test_two_state_dirs_each_run_a_sprite_of_the_same_name_at_once(
    driver: BuiltinDriver, tmp_path: pathlib.Path, helper_binary: pathlib.Path, sprite_name: Names
) -> None:
    from reconciler.drivers.builtin import make_driver

    from .conftest import _seed_helper, cleanup_state

    other_state = tmp_path / "other-state"
    _seed_helper(other_state, helper_binary)
    other = make_driver(other_state, timeout=30, grace=2)
    name = sprite_name("twin")
    try:
        first = start(driver, name, "sleep", "600")
        second = start(other, name, "sleep", "600")
        assert first.id != second.id and first.pid != second.pid
        assert state_of(driver, name) == state_of(other, name) == "running"
        first_groups, second_groups = limits_of(driver, name), limits_of(other, name)
        assert set(first_groups.dirs).isdisjoint(second_groups.dirs)
        assert sorted(groups_named(name)) == sorted(first_groups.dirs + second_groups.dirs)
        for groups, result in ((first_groups, first), (second_groups, second)):
            for directory in groups.dirs:
                assert str(result.pid) in read(f"{directory}/cgroup.procs").split(), directory
        # Killing one leaves the other running, in its own groups.
        _assert_kill_cleans(driver, name, first)
        assert state_of(other, name) == "running"
        for directory in second_groups.dirs:
            assert str(second.pid) in read(f"{directory}/cgroup.procs").split(), directory
        _assert_kill_cleans(other, name, second)
        assert driver.list().sprites == () and other.list().sprites == ()
        assert groups_named(name) == []
    finally:
        cleanup_state(other_state)


def test_abandoned_reservations_and_trash_are_swept(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    driver.layout.ensure()
    abandoned = driver.layout.sprites / ".new-sprite-000000000000"
    abandoned.mkdir(mode=0o700)
    (abandoned / "request").write_text("{}")
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    young = driver.layout.sprites / ".new-sprite-111111111111"
    young.mkdir(mode=0o700)
    (driver.layout.trash / "leftover.1234").mkdir()
    assert driver.list().sprites == ()
    assert not abandoned.exists() and young.exists()
    assert list(driver.layout.trash.iterdir()) == []


def test_concurrent_first_builds_of_the_helper(tmp_path: pathlib.Path) -> None:
    code = (
        "import pathlib, sys; from reconciler.drivers.builtin import helper;"
        "print(helper.ensure(pathlib.Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outputs) == 1
    built = pathlib.Path(outputs.pop())
    assert built.parent == tmp_path / "bin"
    assert [p.name for p in built.parent.iterdir()] == [built.name], "no partial builds left"
    assert stat.S_IMODE(built.stat().st_mode) == 0o700
    assert subprocess.run([str(built), "--version"], capture_output=True, check=True).stdout


UNPRIVILEGED_PYTHON = "/usr/bin/python3"


def _unprivileged_problem() -> str | None:
    if not os.access(UNPRIVILEGED_PYTHON, os.X_OK):
        return f"no {UNPRIVILEGED_PYTHON} an unprivileged user could run"
    version = subprocess.run(
        [UNPRIVILEGED_PYTHON, "-c", "import sys; print(sys.version_info >= (3, 10))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if version != "True":
        return f"{UNPRIVILEGED_PYTHON} is older than 3.10"
    limit = pathlib.Path("/proc/sys/user/max_user_namespaces")
    if not limit.exists() or limit.read_text().strip() == "0":
        return "user namespaces are disabled"
    return None


def test_unprivileged_user_runs_sprites_without_limits(helper_binary: pathlib.Path) -> None:
    """Without root the sprite gets a user namespace too; cgroups cannot be
    written, so start is denied unless limits may go unenforced."""
    problem = _unprivileged_problem()
    if problem:
        pytest.skip(problem)
    import shutil
    import tempfile

    nobody = 65534
    base_dir = pathlib.Path(tempfile.mkdtemp(prefix="sprites-unpriv-", dir="/tmp"))
    os.chmod(base_dir, 0o755)
    state = base_dir / "state"
    bin_dir = state / "bin"
    bin_dir.mkdir(parents=True, mode=0o700)
    built = bin_dir / helper_binary.name
    shutil.copy2(helper_binary, built)
    for path in (state, bin_dir, built):
        os.chown(path, nobody, nobody)
    repo = pathlib.Path(__file__).resolve().parents[3]
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r});"
        "from reconciler.drivers.builtin import wispcli; sys.exit(wispcli.main(sys.argv[1:]))"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base_dir), "SPRITES_STATE_DIR": str(state)}

    def wisp(*args: str, enforce: str = "0") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [UNPRIVILEGED_PYTHON, "-c", code, *args],
            env=dict(env, SPRITES_ENFORCE_LIMITS=enforce),
            user=nobody,
            group=nobody,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        denied = wisp("start", "unpriv-strict", enforce="1")
        assert (denied.returncode, denied.stderr) == (1, "permission denied\n")
        started = wisp("start", "unpriv", "--", "/bin/sh", "-c", "echo uid=$(id -u); sleep 60")
        assert started.returncode == 0, started.stderr
        listed = wisp("list", "--json")
        assert json.loads(listed.stdout)[0]["state"] == "running"
        assert "limits are not enforced" in listed.stderr
        inside = wisp("exec", "unpriv", "--", "cat", "/proc/sys/kernel/hostname")
        assert inside.stdout == "unpriv\n", inside.stderr
        assert wisp("exec", "unpriv", "--", "id", "-u").stdout == "0\n"
        killed = wisp("kill", "unpriv")
        assert killed.returncode == 0 and killed.stdout.startswith("Terminated VM unpriv")
        assert json.loads(wisp("list", "--json").stdout) == []
    finally:
        wisp("kill", "unpriv")
        shutil.rmtree(base_dir, ignore_errors=True)
