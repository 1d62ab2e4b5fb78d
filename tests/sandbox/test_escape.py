"""Escape attempts from inside a built-in sprite, every one of which must
fail: the host's files, /usr, host processes, mounts, capabilities, the
host's loopback, and a fork bomb. Each runs as the default user and, where it
matters, as root inside (who has no capabilities either)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from reconciler import errors
from reconciler.drivers.builtin import cgroups, records
from reconciler.drivers.builtin.driver import UID_BASE, BuiltinDriver

from .conftest import MiB, Names, needs_runtime, py_in, run_in, start

pytestmark = [pytest.mark.root, needs_runtime]

PROJECT = pathlib.Path(__file__).resolve().parents[2]
USERS = ["sprite", "root"]


@pytest.fixture
def sprite(driver: BuiltinDriver, sprite_name: Names) -> str:
    name = sprite_name("escape")
    start(driver, name)
    return name


def test_only_the_sprites_own_root_is_visible(driver: BuiltinDriver, sprite: str) -> None:
    code, out, _ = run_in(driver, sprite, "ls", "-A", "/")
    assert code == 0
    assert set(out.split()) == {
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib64",
        "proc",
        "root",
        "sbin",
        "tmp",
        "usr",
        "var",
        "work",
    } - ({"lib64"} if not os.path.lexists("/lib64") else set())
    _, etc, _ = run_in(driver, sprite, "ls", "-A", "/etc")
    assert set(etc.split()) == {"group", "hostname", "hosts", "nsswitch.conf", "passwd"}
    _, passwd, _ = run_in(driver, sprite, "cat", "/etc/passwd")
    assert "sprite:x:1000:1000:sprite:/home/sprite:/bin/sh" in passwd.splitlines()
    _, mounts, _ = run_in(driver, sprite, "cat", "/proc/self/mounts")
    assert not any(" /sys" in line or " /root " in line for line in mounts.splitlines())


@pytest.mark.parametrize("user", USERS)
def test_host_files_cannot_be_read(
    driver: BuiltinDriver,
    sprite: str,
    user: str,
    planted: Callable[[pathlib.Path, str], pathlib.Path],
) -> None:
    secrets_ = [planted(pathlib.Path("/root"), "root-secret"), planted(PROJECT, "project-secret")]
    for path in secrets_:
        for target in (str(path), f"/proc/1/root{path}", f"/proc/self/root/../..{path}"):
            code, out, _ = run_in(driver, sprite, "cat", target, user=user)
            assert code != 0 and "secret" not in out, target
    # Nothing under the sprite's own /root, and the project is nowhere.
    assert run_in(driver, sprite, "ls", "-A", "/root", user="root")[1] == ""
    code, out, _ = run_in(driver, sprite, "sh", "-c", f"ls {PROJECT} 2>&1", user=user)
    assert code != 0 and "No such file" in out
    # /proc/1 is the sprite's init, and its root and fds are out of reach.
    for probe in ("ls /proc/1/root/", "ls /proc/1/fd/", "cat /proc/1/environ"):
        assert run_in(driver, sprite, *probe.split(), user=user)[0] != 0, probe


@pytest.mark.parametrize("user", USERS)
def test_usr_and_the_root_are_read_only(driver: BuiltinDriver, sprite: str, user: str) -> None:
    for path in ("/usr/sprites-probe", "/usr/bin/sprites-probe", "/sprites-probe", "/etc/x"):
        code, _, err = run_in(driver, sprite, "touch", path, user=user)
        assert code != 0 and "Read-only file system" in err, (path, err)
    code, _, err = run_in(driver, sprite, "sh", "-c", "echo x >> /usr/bin/env", user=user)
    assert code != 0
    assert not pathlib.Path("/usr/sprites-probe").exists()
    # The sprite's own places are writable by its user.
    assert run_in(driver, sprite, "touch", "/work/ok", "/tmp/ok", "/home/sprite/ok")[0] == 0


@pytest.mark.parametrize("user", USERS)
def test_host_processes_are_invisible_and_out_of_reach(
    driver: BuiltinDriver,
    sprite: str,
    user: str,
    host_process: Callable[[], subprocess.Popen[bytes]],
) -> None:
    victim = host_process()
    _, out, _ = run_in(driver, sprite, "sh", "-c", "ls /proc | grep -E '^[0-9]+$'", user=user)
    visible = {int(pid) for pid in out.split()}
    assert 1 in visible and len(visible) < 10
    names = run_in(driver, sprite, "ps", "-e", "-o", "comm=")[1].split()
    assert "sleep" in names and "python" not in " ".join(names)
    code, _, _ = run_in(driver, sprite, "kill", "-9", str(victim.pid), user=user)
    assert code != 0
    # Everything it may signal: only the sprite's own processes.
    run_in(driver, sprite, "kill", "-9", "-1", user=user)
    time.sleep(0.1)
    assert victim.poll() is None, "a host process was killed from inside a sprite"


@pytest.mark.parametrize("user", USERS)
def test_nothing_can_be_mounted(driver: BuiltinDriver, sprite: str, user: str) -> None:
    for argv in (
        ["mount", "-t", "tmpfs", "none", "/tmp"],
        ["mount", "-o", "remount,rw", "/usr"],
        ["mount", "--bind", "/tmp", "/work"],
        ["umount", "-l", "/work"],
        ["unshare", "-m", "true"],
    ):
        code, _, err = run_in(driver, sprite, *argv, user=user)
        assert code != 0, (argv, err)
    _, mounts, _ = run_in(driver, sprite, "cat", "/proc/self/mounts")
    assert " /tmp tmpfs " not in mounts


@pytest.mark.parametrize("user", USERS)
def test_no_capability_can_be_had(driver: BuiltinDriver, sprite: str, user: str) -> None:
    _, status, _ = run_in(driver, sprite, "cat", "/proc/self/status", user=user)
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1"
    # A new user namespace would hand every capability back: refused.
    for argv in (["unshare", "-r", "id"], ["unshare", "-U", "true"]):
        code, _, err = run_in(driver, sprite, *argv, user=user)
        assert code != 0, (argv, err)
    # Nor can ids be changed, nor a setuid binary raise them.
    probe = (
        "import os\n"
        "for call in (lambda: os.setuid(4242), lambda: os.setgid(4242),"
        " lambda: os.setgroups([0])):\n"
        "    try:\n"
        "        call(); print('changed')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    assert py_in(driver, sprite, probe, user=user)[1].split() == ["refused"] * 3
    # A setuid-root program runs with the caller's ids: mount is one on most hosts.
    if _is_setuid("/usr/bin/mount"):
        code, out, _ = run_in(
            driver, sprite, "sh", "-c", "mount -t tmpfs none /tmp 2>&1; id -u", user=user
        )
        assert out.split()[-1] == ("1000" if user == "sprite" else "0")
        assert " /tmp tmpfs " not in run_in(driver, sprite, "cat", "/proc/self/mounts")[1]
    # Kernel knobs stay out of reach.
    for path in ("/proc/sysrq-trigger", "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches"):
        code, _, _ = run_in(driver, sprite, "sh", "-c", f"echo 1 > {path}", user=user)
        assert code != 0, path


def _is_setuid(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o4000)
    except OSError:
        return False


def test_processes_run_as_unprivileged_host_users(driver: BuiltinDriver, sprite: str) -> None:
    """Even root inside is an unprivileged uid on the host (a user namespace)."""
    if driver.userns != 2:
        pytest.skip("user namespaces are disabled on this host")
    init = driver.list().by_name()[sprite].pid
    assert init is not None
    command_pid = int(pathlib.Path(f"/proc/{init}/task/{init}/children").read_text().split()[0])
    uids = _uids(command_pid)
    assert uids == [UID_BASE + 1000] * 4
    _, out, _ = run_in(driver, sprite, "sh", "-c", "sleep 30 & echo $!", user="root")
    # The exec'd process, seen from the host: root inside is UID_BASE outside.
    inside = int(out.split()[0])
    host_pids = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and _nspid(int(p)) == [int(p), inside] and _in_ns(int(p), init)
    ]
    assert host_pids and _uids(host_pids[0]) == [UID_BASE] * 4


def _uids(pid: int) -> list[int]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return [int(value) for value in line.split()[1:]]


def _nspid(pid: int) -> list[int]:
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    line = next((line for line in status.splitlines() if line.startswith("NSpid:")), "")
    return [int(value) for value in line.split()[1:]]


def _in_ns(pid: int, init: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return False


# ------------------------------------------------------------------- network


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's 127.0.0.1 that accepts and answers 'host'."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "    print('reached', s.recv(16).decode().strip())\n"
    "except OSError as exc:\n"
    "    print('refused', type(exc).__name__)\n"
)


@pytest.mark.parametrize("user", USERS)
def test_the_hosts_loopback_is_out_of_reach(
    driver: BuiltinDriver, sprite: str, host_listener: int, user: str
) -> None:
    _, out, _ = run_in(driver, sprite, "/usr/bin/python3", "-c", CONNECT, str(host_listener))
    assert out.startswith("refused"), out
    bash = run_in(
        driver,
        sprite,
        "bash",
        "-c",
        f"exec 3<>/dev/tcp/127.0.0.1/{host_listener} && head -c 4 <&3",
        user=user,
    )
    assert bash[0] != 0 and "host" not in bash[1]
    _, devices, _ = run_in(driver, sprite, "cat", "/proc/net/dev")
    assert [line.split(":")[0].strip() for line in devices.splitlines()[2:]] == ["lo"]


def test_network_host_reaches_it_when_asked(
    driver: BuiltinDriver, sprite_name: Names, host_listener: int
) -> None:
    name = sprite_name("nethost")
    start(driver, name, network="host")
    _, out, _ = run_in(driver, name, "/usr/bin/python3", "-c", CONNECT, str(host_listener))
    assert out.strip() == "reached host"
    if os.path.exists("/etc/resolv.conf"):
        assert run_in(driver, name, "test", "-f", "/etc/resolv.conf")[0] == 0
    # Still no capabilities, and still its own root.
    _, status, _ = run_in(driver, name, "grep", "CapEff", "/proc/self/status")
    assert status.split()[1] == "0000000000000000"


# ----------------------------------------------------------------- fork bomb


def test_a_fork_bomb_stops_at_the_pids_limit(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("bomb")
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 600"
    start(driver, name, "bash", "-c", bomb, pids=64)
    groups = _limits(driver, name)
    current = pathlib.Path(groups.pids_dir) / "pids.current"
    events = pathlib.Path(groups.pids_dir) / (
        "pids.events" if (pathlib.Path(groups.pids_dir) / "pids.events").exists() else "pids.max"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and int(current.read_text()) < 64:
        time.sleep(0.05)
    assert int(current.read_text()) <= 64
    if events.name == "pids.events":
        assert int(events.read_text().split()[1]) > 0, "no fork was refused"
    # The host is not hurt: it still starts processes.
    assert subprocess.run(["true"], check=False, timeout=30).returncode == 0
    # And the bomb ends with the sprite, leaving nothing behind.
    killed = driver.kill(name)
    assert killed.stdout.startswith(f"Terminated VM {name}")
    for directory in groups.dirs:
        assert not pathlib.Path(directory).exists()


def _limits(driver: BuiltinDriver, name: str) -> cgroups.SpriteCgroups:
    fd = records.open_dir(driver.layout.sprite(name))
    try:
        data = records.read_json(fd, "limits")
    finally:
        os.close(fd)
    assert data is not None
    groups = cgroups.SpriteCgroups.from_json(data)
    assert groups is not None
    return groups


def test_limits_apply_inside_the_user_namespace(driver: BuiltinDriver, sprite_name: Names) -> None:
    name = sprite_name("limits")
    start(driver, name, memory=48 * MiB, pids=20)
    groups = _limits(driver, name)
    _, out, _ = run_in(driver, name, "sh", "-c", "sleep 30 & echo started")
    assert out.strip() == "started"
    # The exec'd command is in the sprite's cgroups too.
    members = set()
    for directory in groups.dirs:
        members |= set(cgroups.tasks(directory))
    assert len(members) >= 3
    hog = "b = []\nwhile True:\n    b.append(bytearray(1 << 20))\n"
    code, _, _ = py_in(driver, name, hog)
    assert code == 128 + 9, "the memory limit did not kill the hog"
    code, _, err = run_in(driver, name, "sh", "-c", "for i in $(seq 40); do sleep 1 & done; wait")
    assert "fork" in err.lower() or "temporarily unavailable" in err.lower(), (code, err)


# ------------------------------------------------------------- files, mounts


def test_files_are_kept_only_when_asked(driver: BuiltinDriver, sprite_name: Names) -> None:
    gone, kept = sprite_name("gone"), sprite_name("kept")
    start(driver, gone)
    start(driver, kept, keep=True)
    for name in (gone, kept):
        assert run_in(driver, name, "sh", "-c", "echo data > /work/result")[0] == 0
        assert (driver.layout.files / name / "work" / "result").read_text() == "data\n"
    driver.kill(gone)
    driver.kill(kept)
    assert not (driver.layout.files / gone).exists()
    assert (driver.layout.files / kept / "work" / "result").read_text() == "data\n"
    assert f"its files are kept in {driver.layout.files / kept}" in driver.logs(None).stdout
    # A sprite of the same name finds them again.
    start(driver, kept, keep=True)
    assert run_in(driver, kept, "cat", "/work/result")[1] == "data\n"


def test_mounts(driver: BuiltinDriver, sprite_name: Names, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("input\n")
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    link = tmp_path / "data-link"
    link.symlink_to(data)
    name = sprite_name("mounts")
    start(
        driver,
        name,
        mounts=[
            {"source": str(link), "target": "/data"},
            {"source": str(out), "target": "/work/out", "readOnly": False},
        ],
    )
    assert run_in(driver, name, "cat", "/data/input.txt")[1] == "input\n"
    code, _, err = run_in(driver, name, "touch", "/data/new")
    assert code != 0 and "Read-only file system" in err
    assert run_in(driver, name, "sh", "-c", "echo result > /work/out/r")[0] == 0
    assert (out / "r").read_text() == "result\n"
    # The symlink was resolved on the host: the mount is the real directory.
    request = driver._load(name)
    assert request is not None
    assert request.request["mounts"][0]["source"] == str(data)


@pytest.mark.parametrize(
    ("mount", "words"),
    [
        ({"source": "/no/such/dir", "target": "/data"}, "does not exist"),
        ({"source": "relative", "target": "/data"}, "expected an absolute path"),
        ({"source": "/tmp", "target": "/usr/lib"}, "one of the sprite's own mounts"),
        ({"source": "/tmp", "target": "/proc/sys"}, "one of the sprite's own mounts"),
        ({"source": "/tmp", "target": "data"}, "expected an absolute path"),
        ({"source": "/tmp", "target": "/a/../etc"}, "expected a normalized path"),
    ],
)
def test_bad_mounts_are_refused(
    driver: BuiltinDriver, sprite_name: Names, mount: dict[str, str], words: str
) -> None:
    name = sprite_name("badmount")
    with pytest.raises(errors.RuntimeCallError) as info:
        start(driver, name, mounts=[mount])
    assert words in info.value.reason
    assert name not in driver.list().by_name()


def test_the_runtimes_own_state_cannot_be_mounted(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    name = sprite_name("ownstate")
    for source in (str(driver.state_dir), str(driver.layout.files)):
        with pytest.raises(errors.RuntimeCallError) as info:
            start(driver, name, mounts=[{"source": source, "target": "/state"}])
        assert "runtime's own state" in info.value.reason


def test_a_mount_through_a_kept_symlink_is_refused(
    driver: BuiltinDriver, sprite_name: Names, tmp_path: pathlib.Path
) -> None:
    """A kept /work may hold a symlink a previous sprite left: a mount target
    through it would land elsewhere, so the start fails instead."""
    name = sprite_name("trap")
    source = tmp_path / "source"
    source.mkdir()
    start(driver, name, keep=True)
    assert run_in(driver, name, "ln", "-s", "/usr/bin", "/work/trap")[0] == 0
    driver.kill(name)
    with pytest.raises(errors.RuntimeCallError) as info:
        start(
            driver,
            name,
            keep=True,
            mounts=[{"source": str(source), "target": "/work/trap/x"}],
        )
    assert "goes through a symlink" in info.value.reason


def test_records_keep_pid_reuse_safety(driver: BuiltinDriver, sprite: str) -> None:
    listed = driver.list().by_name()[sprite]
    assert listed.pid is not None
    start_time = records.proc_stat(listed.pid)
    assert start_time is not None and records.is_alive(listed.pid, start_time[1])


def test_without_user_namespaces_root_inside_still_cannot_escape(
    driver: BuiltinDriver, sprite_name: Names, planted: Callable[[pathlib.Path, str], pathlib.Path]
) -> None:
    """Where user namespaces are disabled, root inside is root on the host,
    without capabilities; the kernel's knobs in /proc are read-only to it."""
    driver.userns = 0
    name = sprite_name("nouserns")
    start(driver, name)
    secret = planted(pathlib.Path("/root"), "root-secret")
    assert run_in(driver, name, "cat", str(secret), user="root")[0] != 0
    _, status, _ = run_in(driver, name, "cat", "/proc/self/status", user="root")
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    knobs = ["/proc/sys/vm/drop_caches", "/proc/sys/kernel/panic"]
    if os.path.exists("/proc/sysrq-trigger"):
        knobs.append("/proc/sysrq-trigger")
    for path in knobs:
        code, _, err = run_in(driver, name, "sh", "-c", f"echo 0 > {path}", user="root")
        assert code != 0 and ("Read-only" in err or "denied" in err), (path, err)
    for argv in (["touch", "/usr/x"], ["mount", "-t", "tmpfs", "none", "/tmp"]):
        assert run_in(driver, name, *argv, user="root")[0] != 0, argv
    # The sprite's user is uid 1000 on the host here, and owns /work.
    assert run_in(driver, name, "touch", "/work/ok")[0] == 0
    assert (driver.layout.files / name / "work").stat().st_uid == 1000


def test_exec_falls_back_to_entering_the_namespaces(
    driver: BuiltinDriver, sprite_name: Names
) -> None:
    """A sprite without the init's exec service (started by an older helper)
    is entered with setns: same isolation, same results, same timeout."""
    name = sprite_name("setns")
    start(driver, name)
    (driver.layout.sprite(name) / "exec.sock").unlink()
    code, out, _ = run_in(driver, name, "sh", "-c", "id -un; pwd; grep CapEff /proc/self/status")
    assert code == 0
    assert out.split()[:2] == ["sprite", "/work"] and "0000000000000000" in out
    assert run_in(driver, name, "sh", "-c", "exit 6")[0] == 6
    with pytest.raises(errors.RuntimeTimeoutError):
        driver.exec(name, ["sleep", "30"], timeout=0.5)
