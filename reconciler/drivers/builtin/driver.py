"""The built-in runtime: a sprite is a process tree in its own PID, mount,
UTS, IPC and network namespaces, limited by cgroups, with a console kept by a
small compiled supervisor (see ``native/sprite-helper.c``).

Each sprite has its own root (the host's /usr read-only, a generated /etc,
fresh /proc and /dev, private /tmp, /work and /home/sprite kept under
``<state_dir>/builtin/files/<name>/``) and runs without capabilities, with
no_new_privs, as uid 1000 ``sprite`` by default, inside a user namespace
where the kernel allows it (ids 0-65535 inside are :data:`UID_BASE` and up on
the host), with loopback-only networking unless ``network: host``.

State is never cached: every call reads the records under
``<state_dir>/builtin/`` and checks them against /proc, so ``sprites`` and
``sprites-wisp`` (or two engines) see the same sprites.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import select
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reconciler import errors
from reconciler.drivers import base, hostio
from reconciler.drivers.builtin import cgroups, helper, records
from reconciler.models import observed, sandbox, units
from reconciler.record import record

if TYPE_CHECKING:
    import subprocess

NAMESPACES = ("pid", "mnt", "uts", "ipc", "net")
DEFAULT_COMMAND = ("/bin/sh",)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Host uid and gid of id 0 inside a sprite's user namespace; 0-65535 are mapped.
UID_BASE = 1 << 30
SUPERVISOR_EXIT_WAIT = 2.0
KILL_WAIT = 5.0
MAX_PIDS = sandbox.MAX_PIDS
#: A reservation left unlocked this long (seconds) belongs to a start that died.
ABANDONED_AFTER = 60.0


def default_state_dir() -> pathlib.Path:
    """``$SPRITES_STATE_DIR``, else ``${XDG_STATE_HOME:-~/.local/state}/sprites``."""
    explicit = os.environ.get("SPRITES_STATE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base_dir = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return pathlib.Path(base_dir) / "sprites"


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def unavailable_reason() -> str | None:
    """None when this host can run built-in sprites, else a one-line reason."""
    if not sys.platform.startswith("linux"):
        return (
            f"the built-in runtime needs Linux namespaces and cgroups (this host is {sys.platform})"
        )
    for ns in NAMESPACES:
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            return f"the built-in runtime needs {ns} namespaces, which this kernel lacks"
    if os.geteuid() != 0:
        if _read_sysctl("/proc/sys/user/max_user_namespaces") == "0":
            return (
                "the built-in runtime needs root or user namespaces (user.max_user_namespaces is 0)"
            )
        if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            return (
                "the built-in runtime needs root or unprivileged user namespaces "
                "(kernel.unprivileged_userns_clone is 0)"
            )
        if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return (
                "the built-in runtime needs root: AppArmor restricts unprivileged user "
                "namespaces (kernel.apparmor_restrict_unprivileged_userns is 1)"
            )
    if hostio.c_compiler() is None and not helper.is_built(default_state_dir()):
        return f"the built-in runtime builds a small C helper and needs a compiler: {helper.INSTALL_HINT}"
    return None


def userns_mode() -> int:
    """How this host puts sprites in a user namespace: 2 (root: entered after
    the sprite's setup, ids 0-65535 mapped to :data:`UID_BASE`), 1 (not root:
    made with the sprite, root inside is the caller) or 0 (none: user
    namespaces are disabled; root inside is root, without capabilities)."""
    if os.geteuid() != 0:
        return 1
    limit = _read_sysctl("/proc/sys/user/max_user_namespaces")
    return 2 if limit is not None and limit.isdigit() and int(limit) > 0 else 0


@record(frozen=True)
class Mount:
    """A host path bound into the sprite."""

    source: str  # resolved on the host, no symlinks
    target: str
    read_only: bool = True

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "target": self.target, "readOnly": self.read_only}


@record(frozen=True)
class _Settings:
    """A start request checked and turned into what the helper needs."""

    command: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str  # "uid:gid" inside the sprite
    pids: int
    network: str  # "none" | "host"
    mounts: tuple[Mount, ...]
    keep: bool
    userns: int


@record(frozen=True)
class _Record:
    """One sprite's records as read from disk."""

    name: str
    request: dict[str, Any]
    limits: cgroups.SpriteCgroups | None
    pids: dict[str, str] | None
    exit: dict[str, str] | None
    starting: bool
    log: str | None = None

    @property
    def id(self) -> str:
        return str(self.request.get("id", ""))

    @property
    def socket(self) -> str:
        return str(self.request.get("socket", ""))

    def _int(self, source: Mapping[str, Any] | None, key: str) -> int | None:
        if not source:
            return None
        try:
            return int(source[key])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def init_pid(self) -> int | None:
        return self._int(self.pids, "init_pid")

    @property
    def init_start(self) -> int | None:
        return self._int(self.pids, "init_start")

    @property
    def supervisor_pid(self) -> int | None:
        return self._int(self.pids, "supervisor_pid")

    @property
    def supervisor_start(self) -> int | None:
        return self._int(self.pids, "supervisor_start")

    @property
    def memory(self) -> int | None:
        return self._int(self.request, "memory")

    @property
    def cpus(self) -> int | None:
        return self._int(self.request, "cpus")

    @property
    def started_at(self) -> float | None:
        for source, key in ((self.pids, "started_at"), (self.request, "created_at")):
            if source and key in source:
                try:
                    return float(source[key])
                except (TypeError, ValueError):
                    pass
        return None

    @property
    def init_alive(self) -> bool:
        return records.is_alive(self.init_pid, self.init_start)

    @property
    def supervisor_alive(self) -> bool:
        return records.is_alive(self.supervisor_pid, self.supervisor_start)

    @property
    def limit_text(self) -> str:
        memory = self.memory
        return units.format_size(memory) if memory else "unknown"

    def oom_kills(self) -> int:
        return cgroups.oom_kills(self.limits) if self.limits else 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _ended(record: _Record) -> tuple[str, str]:
    """State and reason of a sprite whose init is gone."""
    oom = record.oom_kills()
    oom_reason = f"killed by the kernel: out of memory (limit {record.limit_text})"
    status = record.exit or {}

    def number(key: str) -> int | None:
        try:
            return int(status[key])
        except (KeyError, ValueError):
            return None

    code, sig = number("code"), number("signal")
    init_code, init_sig = number("init_code"), number("init_signal")
    if code is not None:
        if code == 0:
            return "stopped", "exited with code 0"
        return (
            "error",
            f"{oom_reason}; exited with code {code}" if oom else f"exited with code {code}",
        )
    if sig is not None:
        if oom and sig == signal.SIGKILL:
            return "error", oom_reason
        return "error", f"killed by signal {sig} ({_signal_name(sig)})"
    if init_sig is not None:
        if oom:
            return "error", oom_reason
        return (
            "error",
            f"the sprite's init was killed by signal {init_sig} ({_signal_name(init_sig)})",
        )
    if init_code is not None:
        if init_code == 0:
            return "stopped", "exited with code 0"
        return "error", f"the sprite's init exited with code {init_code}"
    if oom:
        return "error", oom_reason
    return "error", "the sprite ended without recording an exit status"


def resolve_user(spec: object, mode: int, *, op: str) -> tuple[str, str]:
    """("uid:gid", home) inside the sprite for a ``user`` setting (see
    :func:`reconciler.models.sandbox.parse_user`); None is the default user,
    sprite, or root where the runtime can map only one id (``mode`` 1)."""
    if spec is None:
        spec = "root" if mode == 1 else sandbox.DEFAULT_USER
    try:
        uid, gid, home = sandbox.parse_user(spec)
    except ValueError as exc:
        raise errors.RuntimeCallError(op, str(exc)) from None
    if mode == 1 and (uid, gid) != (0, 0):
        raise errors.RuntimeCallError(
            op,
            f"cannot run as {spec!r}: without root the runtime maps only root inside a sprite",
        )
    return f"{uid}:{gid}", home


def login_name(spec: str) -> str:
    """The login name of ``uid:gid`` in the sprite's /etc/passwd, else the uid."""
    return sandbox.login_name(int(spec.split(":")[0]))


def _remove_tree(path: pathlib.Path) -> None:
    """Remove a tree the sprite wrote, whatever modes it left (symlinks are
    removed, never followed)."""

    def retry(function: Any, failed: str, info: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


class BuiltinDriver:
    """Runs sprites on this host; see the module docstring. Thread-safe: it
    keeps no state between calls besides configuration."""

    name = "builtin"

    def __init__(
        self,
        state_dir: pathlib.Path,
        *,
        timeout: float = 300.0,
        enforce_limits: bool = True,
        grace: float = 5.0,
    ) -> None:
        self.state_dir = pathlib.Path(state_dir)
        self.layout = hostio.Layout(self.state_dir, "builtin")
        self.timeout = float(timeout)
        self.enforce_limits = enforce_limits
        self.grace = float(grace)
        self._hierarchy: cgroups.Hierarchy | None = None
        self._hierarchy_known = False
        self._layout_ready = False
        #: How sprites get a user namespace here (see :func:`userns_mode`).
        self.userns = userns_mode()

    # ------------------------------------------------------------- protocol

    def list(self) -> observed.Inventory:
        self._sweep()
        sprites: builtins.list[observed.ObservedSprite] = []
        unlimited: builtins.list[str] = []
        for name in self._names():
            record = self._load(name)
            if record is None:
                continue
            sprites.append(self._observe(record))
            if record.limits is None:
                unlimited.append(name)
        warnings: tuple[str, ...] = ()
        if unlimited:
            warnings = (
                "builtin: memory and CPU limits are not enforced for "
                + ", ".join(unlimited)
                + " (cgroups are not writable here)",
            )
        raw = json.dumps([sprite.to_json() for sprite in sprites])
        return observed.Inventory(sprites=tuple(sprites), raw=raw, warnings=warnings)

    def start(self, request: base.StartRequest) -> base.CallResult:
        name = request.name
        self._check_name("start", name)
        settings = self._settings(request)
        helper_bin = self._helper("start")
        self._ensure_layout("start")
        final = self.layout.sprite(name)
        if os.path.lexists(final):
            raise errors.SpriteExistsError("start", f"sprite '{name}' already exists")
        sprite_id = f"sprite-{os.urandom(6).hex()}"
        socket_path = str(self.layout.socket(sprite_id))
        dir_fd = self._reserve(name, sprite_id, socket_path, request, settings)
        groups: cgroups.SpriteCgroups | None = None
        try:
            available = records.mem_available()
            if available is not None and request.memory > available:
                raise errors.RuntimeCallError("start", "insufficient memory")
            self._make_files(name, settings)
            groups = self._make_cgroups(name, request, settings)
            if groups is not None:
                records.write_json(dir_fd, "limits", groups.to_json())
            pid = self._launch(
                helper_bin, dir_fd, name, sprite_id, socket_path, request.memory, groups, settings
            )
        except BaseException:
            self._discard(name, sprite_id, groups, keep_files=settings.keep)
            os.close(dir_fd)
            raise
        os.close(dir_fd)
        records.append_line(
            self.layout.runtime_log,
            f"{records.timestamp()} started sprite {name} (id {sprite_id}, init pid {pid})",
        )
        address = f"unix://{socket_path}"
        return base.CallResult(
            stdout=f"Started Sprite VM with ID: {sprite_id}\nConnection: {address}\n",
            id=sprite_id,
            pid=pid,
            address=address,
        )

    def kill(self, name: str) -> base.CallResult:
        self._check_name("kill", name)
        path = self.layout.sprite(name)
        with self._locked_record("kill", name, path) as dir_fd:
            record = self._read_record(name, dir_fd, starting=False)
            pid = record.init_pid if record else None
            self._stop(record)
            if record and record.limits is not None:
                cgroups.remove(record.limits, timeout=KILL_WAIT)
            if record:
                self._unlink_socket(record.socket)
            self._remove_records(name, path)
            kept = bool(record and record.request.get("keep"))
            if not kept:
                self._remove_files(name)
        shown = pid if pid is not None else "unknown"
        records.append_line(
            self.layout.runtime_log,
            f"{records.timestamp()} killed sprite {name} (id {record.id if record else '?'}, "
            f"init pid {shown})"
            + (f"; its files are kept in {self.layout.files / name}" if kept else ""),
        )
        return base.CallResult(
            stdout=f"Terminated VM {name} (PID: {shown})\n",
            id=record.id if record else None,
            pid=pid,
        )

    def attach(self, name: str, *, interactive: bool) -> base.CallResult:
        self._check_name("attach", name)
        record, text = self._record_and_console("attach", name)
        if (
            interactive
            and os.isatty(0)
            and os.isatty(1)
            and record.init_alive
            and record.supervisor_alive
            and record.pids
        ):
            from reconciler.drivers.builtin import console  # only a terminal needs it

            try:
                ended = console.interactive(record.socket, record.pids.get("pts", ""), name)
            except OSError as exc:
                raise errors.RuntimeCallError(
                    "attach", f"cannot reach the console of '{name}': {exc.strerror or exc}"
                ) from exc
            return base.CallResult(stdout=f"{ended}\n", id=record.id, pid=record.init_pid)
        return base.CallResult(
            stdout=hostio.console_text(name, text),
            id=record.id,
            pid=record.init_pid if record.init_alive else None,
        )

    def logs(self, name: str | None) -> base.CallResult:
        if name is not None:
            self._check_name("logs", name)
            record, text = self._record_and_console("logs", name)
            out = hostio.sprite_logs_text(self._sprite_log(record), text)
            return base.CallResult(stdout=out, id=record.id)
        sprites: builtins.list[tuple[str, builtins.list[str]]] = []
        for sprite_name in self._names():
            other = self._load(sprite_name)
            if other is not None:
                sprites.append((sprite_name, self._sprite_log(other)))
        runtime = self._read_file(self.layout.runtime_log)
        return base.CallResult(stdout=hostio.merged_logs_text(runtime, sprites))

    def close(self) -> None:
        """Nothing to release: sprites outlive the driver by design."""

    # ------------------------------------------------------------ extension

    def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: base.ExecInput = None,
        stdout: base.OutputSink | None = None,
        stderr: base.OutputSink | None = None,
    ) -> base.ExecResult:
        """Run ``argv`` inside a running sprite: its namespaces, root,
        cgroups and environment, as its user (or ``user``) in its workdir (or
        ``workdir``), without capabilities; the exit code is the command's."""
        from reconciler.drivers import execio  # not needed by a pass-through exec

        limit = self.timeout if timeout is None else timeout
        err_r, err_w = os.pipe()
        try:
            helper_argv = self.exec_argv(name, argv, err_w, env=env, workdir=workdir, user=user)
            finished = execio.run(
                helper_argv,
                op="exec",
                timeout=limit,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(err_w,),
            )
        finally:
            os.close(err_w)
            failure = self._drain(err_r).strip()
            os.close(err_r)
        if failure:
            raise errors.RuntimeCallError("exec", failure.splitlines()[0])
        return base.ExecResult(
            exit_code=finished.returncode,
            stdout=finished.stdout,
            stderr=finished.stderr,
            duration=finished.duration,
        )

    def exec_replace(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bool = True,
        error_prefix: str = "",
        error_status: int = 1,
        timeout_message: str = "",
    ) -> None:
        """Replace this process with the helper running ``argv`` in the
        sprite: stdio pass straight through (stdin only with ``stdin``) and
        the exit status is the command's, with nothing copied on the way. A
        failure to run it prints ``error_prefix`` + the reason and exits
        ``error_status``; past ``timeout`` (None: the driver's) the command
        is stopped, ``timeout_message`` printed and ``error_status`` the
        exit status. Raises before replacing anything when the sprite is
        unknown or not running; returns only when it cannot replace."""
        limit = self.timeout if timeout is None else timeout
        helper_argv = self.exec_argv(name, argv, env=env, workdir=workdir, user=user)
        options = ["--error-prefix", error_prefix, "--error-status", str(error_status)]
        if limit and limit > 0:
            options += ["--timeout-ms", str(max(1, int(limit * 1000)))]
            options += ["--timeout-message", timeout_message]
        cut = helper_argv.index("--")
        helper_argv[cut:cut] = options
        sys.stdout.flush()
        sys.stderr.flush()
        if not stdin:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
        os.execv(helper_argv[0], helper_argv)

    def exec_argv(
        self,
        name: str,
        argv: Sequence[str],
        error_fd: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> builtins.list[str]:
        """The helper argv that runs ``argv`` in sprite ``name`` with the caller's
        stdin, stdout and stderr (for a pass-through ``exec``). Setup failures
        are one line on ``error_fd``, else on stderr with exit status 125."""
        self._check_name("exec", name)
        if not argv or any(not isinstance(a, str) or "\0" in a for a in argv):
            raise errors.RuntimeCallError("exec", "exec needs a command (strings without NUL)")
        record = self._load(name)
        if record is None:
            raise errors.SpriteNotFoundError("exec", f"sprite '{name}' not found")
        if not record.init_alive:
            raise errors.RuntimeCallError("exec", f"sprite '{name}' is not running")
        return self._exec_argv(record, error_fd, argv, env=env, workdir=workdir, user=user)

    # ------------------------------------------------------------ internals

    def _check_name(self, op: str, name: object) -> None:
        if not units.is_valid_name(name):
            raise errors.RuntimeCallError(op, units.name_problem(name) or "invalid name")

    def _helper(self, op: str) -> str:
        try:
            return str(helper.ensure(self.state_dir))
        except helper.HelperUnavailableError as exc:
            raise errors.RuntimeCallError(op, str(exc)) from exc

    def _ensure_layout(self, op: str, *, recheck: bool = False) -> None:
        if self._layout_ready and not recheck:
            return
        try:
            self.layout.ensure()
            self._layout_ready = True
        except records.UnsafePathError as exc:
            raise errors.RuntimeCallError(op, str(exc)) from exc
        except OSError as exc:
            raise errors.RuntimeCallError(op, self._os_reason(exc)) from exc

    @staticmethod
    def _os_reason(exc: OSError) -> str:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "permission denied"
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)

    def _settings(self, request: base.StartRequest) -> _Settings:
        def bad(reason: str) -> errors.RuntimeCallError:
            return errors.RuntimeCallError("start", reason)

        if not isinstance(request.memory, int) or request.memory <= 0:
            raise bad(f"invalid memory {request.memory!r}")
        if not isinstance(request.cpus, int) or request.cpus <= 0:
            raise bad(f"invalid cpus {request.cpus!r}")
        command = tuple(request.command) or DEFAULT_COMMAND
        if any(not isinstance(arg, str) or "\0" in arg for arg in command):
            raise bad("the command must be strings without NUL bytes")
        options = request.options
        workdir = options.get("workdir") or sandbox.DEFAULT_WORKDIR
        if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
            raise bad(f"invalid workdir {workdir!r}: expected an absolute path")
        pids = options.get("pids", sandbox.DEFAULT_PIDS)
        if isinstance(pids, bool) or not isinstance(pids, int) or not 1 <= pids <= MAX_PIDS:
            raise bad(f"invalid pids {pids!r}: expected a positive integer")
        network = options.get("network") or "none"
        if network not in ("none", "host"):
            raise bad(f"invalid network {network!r}: expected none or host")
        keep = options.get("keep") or False
        if not isinstance(keep, bool):
            raise bad(f"invalid keep {keep!r}: expected true or false")
        mode = self.userns
        user, home = resolve_user(options.get("user"), mode, op="start")
        mounts = self._mounts(options.get("mounts"))
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": home,
            "USER": login_name(user),
            "LOGNAME": login_name(user),
            "TERM": "xterm-256color",
            "HOSTNAME": request.name,
            "LANG": "C.UTF-8",
        }
        for key, value in request.env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise bad(f"invalid environment variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise bad(f"invalid value for environment variable {key}")
            env[key] = value
        return _Settings(
            command=command,
            env=env,
            workdir=workdir,
            user=user,
            pids=pids,
            network=str(network),
            mounts=mounts,
            keep=keep,
            userns=mode,
        )

    def _mounts(self, spec: object) -> tuple[Mount, ...]:
        """The manifest's mounts, checked: sources absolute, existing and
        resolved (no symlink left to swap), outside the runtime's own state;
        targets absolute, normalized, unique and clear of the sprite's
        essential paths."""

        def bad(reason: str) -> errors.RuntimeCallError:
            return errors.RuntimeCallError("start", reason)

        if not spec:
            return ()
        if not isinstance(spec, (list, tuple)) or len(spec) > sandbox.MAX_MOUNTS:
            raise bad(f"invalid mounts: expected a list of at most {sandbox.MAX_MOUNTS} mounts")
        own = os.path.realpath(self.layout.root)
        mounts: builtins.list[Mount] = []
        for index, item in enumerate(spec):
            if not isinstance(item, Mapping):
                raise bad(f"invalid mounts[{index}]: expected {{source, target, readOnly}}")
            source, target = item.get("source"), item.get("target")
            read_only = item.get("readOnly", True)
            if not isinstance(read_only, bool):
                raise bad(f"invalid mounts[{index}].readOnly {read_only!r}: expected true or false")
            problem = sandbox.target_problem(target)
            if problem:
                raise bad(f"invalid mount target {target!r}: {problem}")
            assert isinstance(target, str)
            if not isinstance(source, str) or not source.startswith("/") or "\0" in source:
                raise bad(f"invalid mount source {source!r}: expected an absolute path")
            resolved = os.path.realpath(source)
            if resolved == own or resolved.startswith(own + "/") or own.startswith(resolved + "/"):
                raise bad(f"mount source {source} holds the runtime's own state")
            if not os.path.exists(resolved):
                raise bad(f"mount source {source} does not exist")
            if any(m.target == target for m in mounts):
                raise bad(f"mount target {target} is given twice")
            mounts.append(Mount(resolved, target, read_only))
        return tuple(mounts)

    def host_id(self, inside: int, mode: int | None = None) -> int:
        """The host uid (or gid) of id ``inside`` in a sprite."""
        mode = self.userns if mode is None else mode
        if mode == 2:
            return UID_BASE + inside
        if mode == 1:
            return os.geteuid()
        return inside

    def _make_files(self, name: str, settings: _Settings) -> None:
        """The sprite's writable /tmp, /work and /home/sprite, under the
        state dir; kept ones (``keep: true``) are used again as they are."""
        base_dir = self.layout.files / name
        try:
            records.make_private_dir(self.layout.files)
            records.make_private_dir(base_dir)
            uid, gid = (int(part) for part in settings.user.split(":"))
            sprite_uid, sprite_gid, _ = sandbox.USERS["sprite"]
            for sub, mode, owner in (
                ("tmp", 0o1777, (0, 0)),
                ("work", 0o755, (uid, gid)),
                ("home", 0o755, (sprite_uid, sprite_gid)),
            ):
                path = base_dir / sub
                try:
                    os.mkdir(path)
                except FileExistsError:
                    if not path.is_dir() or path.is_symlink():
                        raise records.UnsafePathError(f"{path} is not a directory", path) from None
                    continue
                os.chmod(path, mode)
                if settings.userns != 1:
                    os.chown(
                        path,
                        self.host_id(owner[0], settings.userns),
                        self.host_id(owner[1], settings.userns),
                    )
        except records.UnsafePathError as exc:
            raise errors.RuntimeCallError("start", str(exc)) from exc
        except OSError as exc:
            raise errors.RuntimeCallError("start", self._os_reason(exc)) from exc

    def _remove_files(self, name: str) -> None:
        path = self.layout.files / name
        trash = self.layout.trash / f"files-{name}.{os.urandom(4).hex()}"
        try:
            os.rename(path, trash)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError:
            trash = path
        _remove_tree(trash)

    def _reserve(
        self,
        name: str,
        sprite_id: str,
        socket_path: str,
        request: base.StartRequest,
        settings: _Settings,
    ) -> int:
        """Create the sprite's record directory, locked, under its final name.

        It is filled under a temporary name and renamed into place, so a
        visible record always has its request and two starts of one name
        cannot both win (renaming onto a non-empty directory fails)."""
        tmp = self.layout.sprites / f".new-{sprite_id}"
        try:
            try:
                os.mkdir(tmp, 0o700)
            except FileNotFoundError:  # the state dir was removed under us
                self._ensure_layout("start", recheck=True)
                os.mkdir(tmp, 0o700)
            dir_fd = records.open_dir(tmp)
        except OSError as exc:
            raise errors.RuntimeCallError("start", self._os_reason(exc)) from exc
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            os.mkdir("root", 0o700, dir_fd=dir_fd)
            records.write_json(
                dir_fd,
                "request",
                {
                    "id": sprite_id,
                    "name": name,
                    "memory": request.memory,
                    "cpus": request.cpus,
                    "pids": settings.pids,
                    "command": list(settings.command),
                    "workdir": settings.workdir,
                    "user": settings.user,
                    "userns": settings.userns,
                    "uid_base": UID_BASE if settings.userns == 2 else None,
                    "network": settings.network,
                    "mounts": [mount.to_json() for mount in settings.mounts],
                    "keep": settings.keep,
                    "socket": socket_path,
                    "created_at": time.time(),
                },
            )
            os.rename(tmp, self.layout.sprite(name))
        except OSError as exc:
            os.close(dir_fd)
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise errors.SpriteExistsError("start", f"sprite '{name}' already exists") from exc
            raise errors.RuntimeCallError("start", self._os_reason(exc)) from exc
        return dir_fd

    def _hierarchy_once(self) -> cgroups.Hierarchy | None:
        if not self._hierarchy_known:
            self._hierarchy = cgroups.detect()
            self._hierarchy_known = True
        return self._hierarchy

    def _make_cgroups(
        self, name: str, request: base.StartRequest, settings: _Settings
    ) -> cgroups.SpriteCgroups | None:
        hierarchy = self._hierarchy_once()
        if hierarchy is None:
            if self.enforce_limits:
                raise errors.RuntimeCallError(
                    "start", "cgroup controllers memory, cpu and pids are not available"
                )
            return None
        groups = cgroups.plan(hierarchy, name, self.state_dir)
        try:
            cgroups.create(groups, memory=request.memory, cpus=request.cpus, pids=settings.pids)
        except cgroups.CgroupBusyError as exc:
            raise errors.SpriteExistsError("start", f"sprite '{name}' already exists") from exc
        except cgroups.CgroupError as exc:
            if self.enforce_limits:
                raise errors.RuntimeCallError("start", exc.reason) from exc
            return None
        return groups

    def _launch(
        self,
        helper_bin: str,
        dir_fd: int,
        name: str,
        sprite_id: str,
        socket_path: str,
        memory: int,
        groups: cgroups.SpriteCgroups | None,
        settings: _Settings,
    ) -> int:
        """Run the helper and wait for it to report the sprite running; the init's pid."""
        import subprocess  # only starts need it: exec and list stay light

        ready_r, ready_w = os.pipe()
        argv = [
            helper_bin,
            "start",
            "--name",
            name,
            "--id",
            sprite_id,
            "--socket",
            socket_path,
            "--lock-fd",
            str(dir_fd),
            "--ready-fd",
            str(ready_w),
            "--userns",
            str(settings.userns),
            "--root",
            str(self.layout.sprite(name) / "root"),
            "--files",
            str(self.layout.files / name),
            "--network",
            settings.network,
            "--workdir",
            settings.workdir,
            "--user",
            settings.user,
        ]
        if settings.userns == 2:
            argv += ["--uid-base", str(UID_BASE)]
        if groups is not None:
            for path in groups.dirs:
                argv += ["--cgroup", path]
            argv += ["--oom-file", groups.oom_file]
        argv += ["--limit-text", units.format_size(memory)]
        for mount in settings.mounts:
            argv += ["--mount-source", mount.source, "--mount-target", mount.target]
            argv += ["--mount-rw", "0" if mount.read_only else "1"]
        argv += ["--", *settings.command]
        try:
            proc = subprocess.Popen(
                argv,
                pass_fds=(dir_fd, ready_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env=settings.env,
            )
        except OSError as exc:
            os.close(ready_r)
            raise errors.RuntimeCallError("start", f"cannot run the sprite helper: {exc}") from exc
        finally:
            os.close(ready_w)
        try:
            deadline = time.monotonic() + self.timeout
            buffer = b""
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandon(proc, dir_fd)
                    raise errors.RuntimeTimeoutError("start", self.timeout)
                readable, _, _ = select.select([ready_r], [], [], remaining)
                if not readable:
                    continue
                chunk = os.read(ready_r, 4096)
                if not chunk:
                    code = proc.wait()
                    raise errors.RuntimeCallError(
                        "start", f"the sprite helper ended without reporting (exit code {code})"
                    )
                buffer += chunk
            line = buffer.partition(b"\n")[0].decode("utf-8", "replace")
            proc.wait()
            if line.startswith("err "):
                raise errors.RuntimeCallError("start", line[4:])
            pids = records.read_kv(dir_fd, "pids") or {}
            if line != "ok" or not pids.get("init_pid", "").isdigit():
                self._abandon(proc, dir_fd)
                raise errors.RuntimeOutputError("start", f"unexpected helper report {line!r}")
            return int(pids["init_pid"])
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            os.close(ready_r)

    @staticmethod
    def _abandon(proc: subprocess.Popen[bytes], dir_fd: int) -> None:
        """Stop a start that went wrong: the helper, its supervisor and init."""
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pids = records.read_kv(dir_fd, "pids") or {}
        for key in ("init", "supervisor"):
            try:
                pid, start = int(pids[f"{key}_pid"]), int(pids[f"{key}_start"])
            except (KeyError, ValueError):
                continue
            fd = records.open_process(pid, start)
            if fd is not None:
                try:
                    records.signal_process(fd, signal.SIGKILL)
                finally:
                    os.close(fd)

    def _discard(
        self,
        name: str,
        sprite_id: str,
        groups: cgroups.SpriteCgroups | None,
        *,
        keep_files: bool = False,
    ) -> None:
        """Undo a failed start (the caller still holds the record's lock)."""
        if groups is not None:
            cgroups.remove(groups, timeout=KILL_WAIT)
        self._unlink_socket(str(self.layout.socket(sprite_id)))
        self._remove_records(name, self.layout.sprite(name))
        if not keep_files:
            self._remove_files(name)

    def _remove_records(self, name: str, path: pathlib.Path) -> None:
        trash = self.layout.trash / f"{name}.{os.urandom(4).hex()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _unlink_socket(self, socket_path: str) -> None:
        if not socket_path:
            return
        path = pathlib.Path(socket_path)
        if path.parent != self.layout.run:
            return  # never remove anything outside our own socket directory
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    @contextlib.contextmanager
    def _locked_record(self, op: str, name: str, path: pathlib.Path) -> Iterator[int]:
        """The record's directory fd, locked against a concurrent start or kill."""
        try:
            dir_fd = records.open_dir(path)
        except (FileNotFoundError, NotADirectoryError):
            raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found") from None
        try:
            if not records.lock_exclusive(dir_fd, self.timeout):
                raise errors.RuntimeTimeoutError(op, self.timeout)
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found") from None
            mine = os.fstat(dir_fd)
            if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found")
            yield dir_fd
        finally:
            os.close(dir_fd)

    def _stop(self, record: _Record | None) -> None:
        """SIGTERM the init, SIGKILL after the grace period, and wait for the
        supervisor to record the end. Every signal goes through a pidfd
        opened after the start time matched, so a reused pid is never hit."""
        if record is None:
            return
        init_fd = records.open_process(record.init_pid, record.init_start)
        supervisor_fd = records.open_process(record.supervisor_pid, record.supervisor_start)
        try:
            if init_fd is not None:
                records.signal_process(init_fd, signal.SIGTERM)
                if not records.wait_exit(init_fd, self.grace):
                    records.signal_process(init_fd, signal.SIGKILL)
                    records.wait_exit(init_fd, KILL_WAIT)
            if supervisor_fd is not None:
                if init_fd is None:
                    records.signal_process(supervisor_fd, signal.SIGKILL)
                if not records.wait_exit(supervisor_fd, SUPERVISOR_EXIT_WAIT):
                    records.signal_process(supervisor_fd, signal.SIGKILL)
                    records.wait_exit(supervisor_fd, KILL_WAIT)
        finally:
            for fd in (init_fd, supervisor_fd):
                if fd is not None:
                    os.close(fd)

    def _sweep(self) -> None:
        """Remove what a process that died mid-start or mid-kill left behind:
        unlocked reservations (``.new-*``) and anything in the trash."""
        try:
            entries = os.listdir(self.layout.sprites)
        except OSError:
            entries = []
        for entry in entries:
            if not entry.startswith(".new-"):
                continue
            path = self.layout.sprites / entry
            try:
                fd = records.open_dir(path)
                # Young ones may not be locked yet by the start creating them.
                if time.time() - os.fstat(fd).st_mtime < ABANDONED_AFTER:
                    os.close(fd)
                    continue
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a start is filling it right now
                continue
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)
        try:
            trash = os.listdir(self.layout.trash)
        except OSError:
            trash = []
        for entry in trash:
            shutil.rmtree(self.layout.trash / entry, ignore_errors=True)

    def _names(self) -> builtins.list[str]:
        try:
            entries = os.listdir(self.layout.sprites)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e for e in entries if not e.startswith(".") and units.is_valid_name(e))

    def _load(self, name: str) -> _Record | None:
        try:
            dir_fd = records.open_dir(self.layout.sprite(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return self._read_record(name, dir_fd, starting=None)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _read_record(
        name: str, dir_fd: int, *, starting: bool | None, with_log: bool = False
    ) -> _Record | None:
        request = records.read_json(dir_fd, "request")
        if request is None:
            return None
        limits_json = records.read_json(dir_fd, "limits")
        limits = cgroups.SpriteCgroups.from_json(limits_json) if limits_json else None
        pids = records.read_kv(dir_fd, "pids")
        exit_status = records.read_kv(dir_fd, "exit")
        if starting is None:
            starting = pids is None and not records.try_lock_shared(dir_fd)
        log = None
        if with_log:
            log = (records.read_bytes(dir_fd, "log") or b"").decode("utf-8", "replace")
        return _Record(name, request, limits, pids, exit_status, starting, log)

    def _observe(self, record: _Record) -> observed.ObservedSprite:
        pid: int | None = None
        address: str | None = None
        reason: str | None
        if record.pids is None:
            if record.starting:
                state, reason = "running", "starting"
            else:
                state, reason = "error", "the start did not complete"
        elif record.init_alive:
            state, pid = "running", record.init_pid
            if record.supervisor_alive:
                address, reason = f"unix://{record.socket}", None
            else:
                reason = "the console supervisor is not running"
        else:
            state, reason = _ended(record)
        return observed.ObservedSprite(
            id=record.id,
            name=record.name,
            state=state,
            pid=pid,
            address=address,
            runtime=self.name,
            memory=record.memory,
            cpus=record.cpus,
            started_at=record.started_at,
            reason=reason,
        )

    def _record_and_console(self, op: str, name: str) -> tuple[_Record, str]:
        try:
            dir_fd = records.open_dir(self.layout.sprite(name))
        except (FileNotFoundError, NotADirectoryError):
            raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found") from None
        try:
            record = self._read_record(name, dir_fd, starting=None, with_log=True)
            if record is None:
                raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found")
            text = records.console_text(records.read_console(dir_fd))
        finally:
            os.close(dir_fd)
        return record, text

    def _sprite_log(self, record: _Record) -> builtins.list[str]:
        log = record.log
        if log is None:
            log = self._read_file(self.layout.sprite(record.name) / "log")
        lines = log.splitlines()
        kills = record.oom_kills()
        if kills and not any("out of memory" in line for line in lines):
            lines.append(
                f"{records.timestamp()} killed by the kernel: out of memory "
                f"(limit {record.limit_text}): {kills} process(es)"
            )
        return lines

    @staticmethod
    def _read_file(path: pathlib.Path) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def _exec_argv(
        self,
        record: _Record,
        error_fd: int | None,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> builtins.list[str]:
        helper_bin = self._helper("exec")
        mode = int(record.request.get("userns") or 0)
        args = [
            helper_bin,
            "exec",
            "--name",
            record.name,
            "--pid",
            str(record.init_pid),
            "--start",
            str(record.init_start),
            "--userns",
            str(mode),
            "--network",
            str(record.request.get("network") or "none"),
            "--exec-socket",
            str(self.layout.sprite(record.name) / "exec.sock"),
        ]
        if error_fd is not None:
            args += ["--error-fd", str(error_fd)]
        if record.limits is not None:
            for path in record.limits.dirs:
                args += ["--cgroup", path]
        if workdir is not None:
            if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
                raise errors.RuntimeCallError(
                    "exec", f"invalid workdir {workdir!r}: expected an absolute path"
                )
        else:
            recorded = record.request.get("workdir")
            workdir = recorded if isinstance(recorded, str) and recorded else None
        if workdir:
            args += ["--workdir", workdir]
        extra: dict[str, str] = {}
        if user is not None:
            spec, home = resolve_user(user, mode, op="exec")
            args += ["--user", spec]
            login = login_name(spec)
            extra.update(HOME=home, USER=login, LOGNAME=login)
        else:
            recorded = record.request.get("user")
            if isinstance(recorded, str) and recorded:
                args += ["--user", recorded]
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise errors.RuntimeCallError("exec", f"invalid environment variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise errors.RuntimeCallError(
                    "exec", f"invalid value for environment variable {key}"
                )
            extra[key] = value
        for key, value in extra.items():
            args += ["--env", f"{key}={value}"]
        return [*args, "--", *argv]

    @staticmethod
    def _drain(fd: int) -> str:
        chunks = []
        while True:
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
