"""The microVM runtime: each sprite is a QEMU ``microvm`` machine with its
own guest kernel.

QEMU runs daemonized (argv only, no shell), with ``-m``/``-smp`` from the
sprite's memory and CPUs, no network device, a QMP socket for status and
shutdown, and the guest's serial console on a unix socket whose output QEMU
also appends to a log file. The guest powers off when its command ends;
QEMU is told to stay (``-no-shutdown``) so that ``list`` can tell from QMP
whether a guest is running, powered off (``stopped``) or panicked
(``error``). ``kill`` asks QEMU to ``quit`` over QMP, then SIGKILLs.
``exec`` (and so ``cp``) goes through an agent in the guest on a virtio
serial port (:mod:`.agent`).

Layout under ``<state_dir>/microvm/`` (directories 0700, files 0600)::

    sprites/<name>/   one directory per sprite; flock on it = a start or kill in progress
        request.json  the sprite as started (id, resources, accelerator, sockets,
                      environment and workdir for exec)
        agent.lock    flock on it = an exec in progress (one at a time)
        vm.json       QEMU's pid and start time, once it runs
        console.log   everything the guest wrote on its console (kept bounded)
        log           the runtime's lines about this sprite
    run/<id>.qmp      QMP sockets, and run/<id>.sock console sockets (short for sun_path)
    run/<id>.agent.in, run/<id>.agent.out   the FIFOs of the exec agent's port
    image/            the guest image (``sprites image build``)
    accel.json        the cached verdict of the KVM probe
    runtime.log       start/kill lines of the runtime itself
    trash/            records being removed
"""

from __future__ import annotations

import builtins
import fcntl
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from reconciler import errors
from reconciler.drivers import base, hostio, process
from reconciler.drivers.microvm import accel as accel_mod
from reconciler.drivers.microvm import agent, console, image, qmp
from reconciler.models import observed, sandbox, units
from reconciler.record import record

QEMU_BINARY = "qemu-system-x86_64"
#: The Debian kernel needs about 96MiB to unpack its initramfs and run.
MIN_MEMORY = 128 << 20
#: x86 kernel command line limit (COMMAND_LINE_SIZE).
CMDLINE_MAX = 2048
#: How long ``qemu -daemonize`` may take to set the machine up and detach.
LAUNCH_TIMEOUT = 60.0
QMP_TIMEOUT = 5.0
KILL_WAIT = 5.0
#: Run states in which the guest is not (or no longer) running.
#: Sprite settings of the built-in runtime a microVM cannot honour yet: refused
#: rather than ignored, since each one changes what the sprite can reach.
UNSUPPORTED_OPTIONS = ("user", "mounts", "network", "keep", "pids")
_STOPPED_STATES = {"shutdown", "guest-panicked", "internal-error", "io-error"}
_EXIT_RE = re.compile(re.escape(image.EXIT_MARKER) + r" (\d+)")
_PANIC_RE = re.compile(r"Kernel panic - not syncing:[^\r\n]*")


def unavailable_reason(qemu: str = QEMU_BINARY) -> str | None:
    """None when QEMU is installed; otherwise the one-line reason with the fix."""
    if _resolve(qemu) is None:
        return f"{qemu} not found (install it: {image.INSTALL_COMMAND})"
    return None


def _resolve(qemu: str) -> str | None:
    if "/" in qemu:
        return qemu if os.path.isfile(qemu) and os.access(qemu, os.X_OK) else None
    return shutil.which(qemu)


def _escape(value: str) -> str:
    """A value inside a QEMU option list (commas are doubled)."""
    return value.replace(",", ",,")


def _socket_arg(path: str) -> str:
    """The socket path QEMU is given: absolute when it fits in sun_path, else
    relative to the run directory (QEMU starts there and binds before it
    detaches)."""
    return path if len(os.fsencode(path)) <= hostio.SUN_PATH_MAX else os.path.basename(path)


def host_khz() -> int | None:
    """The host CPU's clock in kHz, for ``tsc_early_khz`` (TCG calibration)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError, IndexError):
        return None
    return None


# ------------------------------------------------------------------- records


@record(frozen=True)
class _Record:
    name: str
    directory: pathlib.Path
    request: dict[str, Any]
    vm: dict[str, Any] | None
    busy: bool

    @property
    def id(self) -> str:
        return str(self.request.get("id", ""))

    @property
    def qmp(self) -> str:
        return str(self.request.get("qmp", ""))

    @property
    def console(self) -> str:
        return str(self.request.get("console", ""))

    @property
    def console_log(self) -> str:
        return str(self.directory / "console.log")

    def _int(self, source: Mapping[str, Any] | None, key: str) -> int | None:
        value = (source or {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def pid(self) -> int | None:
        return self._int(self.vm, "pid")

    @property
    def start(self) -> int | None:
        return self._int(self.vm, "start")

    @property
    def alive(self) -> bool:
        return hostio.is_alive(self.pid, self.start)


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            value = json.loads(handle.read(1 << 20))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, sort_keys=True)
    os.replace(tmp, path)


# ----------------------------------------------------------- process facts


def _find_qemu(marker: str) -> builtins.list[tuple[int, int]]:
    """(pid, start) of every process whose argv mentions ``marker`` (the name
    of a sprite's QMP socket, unique by its id): finds a QEMU whose pid was
    never recorded."""
    found: builtins.list[tuple[int, int]] = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read()
        except OSError:
            continue
        program = os.path.basename(argv.split(b"\0", 1)[0])
        if needle in argv and program.startswith(b"qemu"):
            facts = hostio.proc_stat(int(entry))
            if facts is not None and facts[0] not in ("Z", "X"):
                found.append((int(entry), facts[1]))
    return found


# -------------------------------------------------------------------- driver


class MicroVMDriver:
    """Runs sprites as QEMU microVMs. Thread-safe; every call reads the
    records on disk, so several engines see the same sprites."""

    name = "microvm"

    def __init__(
        self,
        state_dir: pathlib.Path,
        *,
        timeout: float = 300.0,
        accel: str = "auto",
        qemu: str = QEMU_BINARY,
        grace: float = KILL_WAIT,
        probe_timeout: float = accel_mod.PROBE_TIMEOUT,
        kvm_device: str = accel_mod.KVM_DEVICE,
    ) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, got {accel!r}")
        self.state_dir = pathlib.Path(state_dir)
        self.layout = hostio.Layout(self.state_dir, "microvm")
        self.timeout = float(timeout)
        self.accel = accel
        self.qemu = qemu
        self.grace = float(grace)
        self.probe_timeout = probe_timeout
        self.kvm_device = kvm_device
        self._lock = threading.Lock()
        self._decision: accel_mod.Decision | None = None

    # -------------------------------------------------------------- helpers

    def qemu_path(self) -> str | None:
        return _resolve(self.qemu)

    def built_image(self) -> image.Image | None:
        return image.find_image(self.layout.root)

    def decide(self, guest: image.Image | None, *, probe: bool = True) -> accel_mod.Decision | None:
        """The accelerator for new sprites (None when it needs a probe that
        cannot or may not run now)."""
        with self._lock:
            if self._decision is not None:
                return self._decision
            qemu = self.qemu_path()
            problem = accel_mod.kvm_device_problem(self.kvm_device)
            key = accel_mod.cache_key(qemu or self.qemu)
            cached = accel_mod.read_cached(self.layout.root, key)
            if self.accel == "auto" and problem is None and cached is None:
                if not probe or qemu is None or guest is None:
                    return None

            def run_probe() -> accel_mod.ProbeResult:
                if cached is not None:
                    return cached
                assert qemu is not None and guest is not None
                self._ensure_layout()
                return accel_mod.cached_probe(
                    self.layout.root,
                    key,
                    lambda: accel_mod.run_probe(
                        accel_mod.probe_argv(qemu, guest), timeout=self.probe_timeout
                    ),
                )

            decision = accel_mod.decide(self.accel, device_problem=problem, probe=run_probe)
            self._decision = decision
            return decision

    def _warning(self) -> str | None:
        if self.accel != "auto":
            return None
        decision = self.decide(self.built_image(), probe=self.qemu_path() is not None)
        return decision.warning if decision is not None else None

    # ------------------------------------------------------------- protocol

    def list(self) -> observed.Inventory:
        sprites = [self._observe(record) for record in self._records()]
        warnings: tuple[str, ...] = ()
        warning = self._warning()
        if warning:
            warnings = (warning,)
        raw = json.dumps([sprite.to_json() for sprite in sprites])
        return observed.Inventory(sprites=tuple(sprites), raw=raw, warnings=warnings)

    def start(self, request: base.StartRequest) -> base.CallResult:
        name = self._checked("start", request.name)
        qemu = self.qemu_path()
        if qemu is None:
            raise errors.RuntimeCallError(
                "start", unavailable_reason(self.qemu) or "QEMU not found"
            )
        unsupported = sorted(key for key in UNSUPPORTED_OPTIONS if request.options.get(key))
        if unsupported:
            raise errors.RuntimeCallError(
                "start", f"the microvm runtime does not support {', '.join(unsupported)} yet"
            )
        guest = self._guest(request.options)
        if request.memory < MIN_MEMORY:
            raise errors.RuntimeCallError(
                "start",
                f"a microVM needs at least {units.format_size(MIN_MEMORY)} of memory, "
                f"got {units.format_size(request.memory)}",
            )
        decision = self.decide(guest)
        assert decision is not None
        available = hostio.mem_available()
        if available is not None and request.memory > available:
            raise errors.RuntimeCallError("start", "insufficient memory")
        self._ensure_layout()
        sprite_id = f"sprite-{secrets.token_hex(6)}"
        directory, dir_fd = self._reserve(name)
        qmp_path = str(self.layout.run / f"{sprite_id}.qmp")
        console_path = str(self.layout.run / f"{sprite_id}.sock")
        agent_path = str(self.layout.run / f"{sprite_id}.agent")
        workdir = request.options.get("workdir")
        workdir = workdir if isinstance(workdir, str) else None
        started = time.monotonic()
        try:
            request_data = {
                "id": sprite_id,
                "name": name,
                "memory": request.memory,
                "cpus": request.cpus,
                "accel": decision.accel,
                "kernel": str(guest.kernel),
                "initrd": str(guest.initrd),
                "custom_initrd": guest.custom,
                "qmp": qmp_path,
                "console": console_path,
                "agent": agent_path,
                "env": dict(request.env),
                "workdir": workdir,
                "created_at": time.time(),
            }
            _write_json(directory / "request.json", request_data)
            agent.make_channel(agent_path)
            initrd = directory / "initrd"
            files = {"sprite/name": name.encode()}
            if request.command or request.env or workdir:
                script = image.sprite_script(request.command or ("sh",), request.env, workdir)
                files["sprite/run"] = script.encode()
            image.sprite_initrd(guest.initrd, initrd, files)
            argv = self._argv(
                qemu,
                name,
                request,
                guest,
                initrd,
                directory,
                decision.accel,
                qmp_path,
                console_path,
                agent_path,
            )
            self._log(
                directory,
                f"starting: accel {decision.accel}, memory "
                f"{units.format_size(request.memory)}, cpus {request.cpus}",
            )
            pid, start = self._launch(argv, directory, qmp_path)
            _write_json(
                directory / "vm.json", {"pid": pid, "start": start, "started_at": time.time()}
            )
            for path in (qmp_path, console_path, str(directory / "console.log")):
                try:
                    os.chmod(path, 0o600)
                except FileNotFoundError:
                    pass
            self._wait_ready(directory, pid, start, qmp_path, guest.custom, started)
            os.unlink(initrd)
        except BaseException as exc:
            self._log(directory, f"start failed: {getattr(exc, 'user_message', exc)}")
            self._teardown(directory, qmp_path, console_path)
            raise
        finally:
            os.close(dir_fd)
        boot = time.monotonic() - started
        self._log(directory, f"started: pid {pid}, init announced after {boot:.3f}s")
        hostio.append_line(
            self.layout.runtime_log,
            f"{hostio.timestamp()} started sprite {name} (id {sprite_id}, qemu pid {pid}, "
            f"accel {decision.accel}, boot {boot:.3f}s)",
        )
        address = f"unix://{console_path}"
        stdout = f"Started Sprite VM with ID: {sprite_id}\nConnection: {address}\n"
        if decision.warning:
            stdout += f"Warning: {decision.warning}\n"
        return base.CallResult(stdout=stdout, id=sprite_id, pid=pid, address=address)

    def kill(self, name: str) -> base.CallResult:
        name = self._checked("kill", name)
        directory = self.layout.sprite(name)
        with self._locked("kill", name, directory):
            record = self._read(name, directory, busy=False)
            request = record.request if record else {}
            pid = record.pid if record else None
            self._teardown(
                directory, str(request.get("qmp", "")), str(request.get("console", "")), record
            )
        shown = pid if pid is not None else "unknown"
        sprite_id = request.get("id", "?")
        hostio.append_line(
            self.layout.runtime_log,
            f"{hostio.timestamp()} killed sprite {name} (id {sprite_id}, qemu pid {shown})",
        )
        return base.CallResult(
            stdout=f"Terminated VM {name} (PID: {shown})\n",
            id=str(sprite_id) if record else None,
            pid=pid,
        )

    def attach(self, name: str, *, interactive: bool) -> base.CallResult:
        name = self._checked("attach", name)
        record = self._existing("attach", name)
        console.trim(record.console_log)
        recent = console.tail(record.console_log)
        if interactive and os.isatty(0) and os.isatty(1) and record.alive:
            try:
                last = console.tail(record.console_log, 2048)
                ended = console.interactive(record.console, name, last)
            except OSError as exc:
                raise errors.RuntimeCallError(
                    "attach", f"cannot reach the console of '{name}': {exc.strerror or exc}"
                ) from exc
            return base.CallResult(stdout=f"{ended}\n", id=record.id, pid=record.pid)
        return base.CallResult(
            stdout=hostio.console_text(name, console.text(recent)),
            id=record.id,
            pid=record.pid if record.alive else None,
        )

    def logs(self, name: str | None) -> base.CallResult:
        if name is not None:
            name = self._checked("logs", name)
            record = self._existing("logs", name)
            lines = self._sprite_log(record)
            console.trim(record.console_log)
            text = console.text(console.tail(record.console_log))
            return base.CallResult(stdout=hostio.sprite_logs_text(lines, text), id=record.id)
        try:
            runtime = self.layout.runtime_log.read_text(errors="replace")
        except OSError:
            runtime = ""
        sprites = [(record.name, self._sprite_log(record)) for record in self._records()]
        return base.CallResult(stdout=hostio.merged_logs_text(runtime, sprites))

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
        """Run ``argv`` in the guest through its agent (:mod:`.agent`): as
        root unless ``user`` says otherwise, in the sprite's workdir (else
        /root) unless ``workdir`` says otherwise, with the sprite's
        environment plus ``env``. One command at a time per sprite: a caller
        waits for the one before (within its own timeout)."""
        name = self._checked("exec", name)
        if not argv or any(not isinstance(arg, str) or "\0" in arg for arg in argv) or not argv[0]:
            raise errors.RuntimeCallError("exec", "exec needs a command (strings without NUL)")
        record = self._existing("exec", name)
        channel = record.request.get("agent")
        if not isinstance(channel, str) or not channel:
            raise errors.RuntimeCallError(
                "exec",
                f"sprite '{name}' was started without the exec agent; start it again to use exec",
            )
        if record.vm is None or not record.alive:
            raise errors.RuntimeCallError("exec", f"sprite '{name}' is not running")
        script = self._exec_script(record, argv, env, workdir, user)
        limit = self.timeout if timeout is None else float(timeout)
        began = time.monotonic()
        deadline = began + limit if limit > 0 else None
        try:
            lock_fd = agent.lock(str(record.directory / "agent.lock"), deadline)
        except FileNotFoundError:
            raise errors.SpriteNotFoundError("exec", f"sprite '{name}' not found") from None
        if lock_fd is None:
            raise errors.RuntimeTimeoutError("exec", limit)
        try:
            remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
            outcome = agent.run(
                channel,
                script,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                timeout=remaining,
                still_running=lambda: self._not_running(record),
            )
        except agent.AgentGone as exc:
            reason = self._not_running(record) or f"cannot reach '{name}': {exc}"
            raise errors.RuntimeCallError("exec", reason) from None
        except agent.AgentError as exc:
            reason = f"cannot run commands in '{name}': {exc}"
            if record.request.get("custom_initrd"):
                reason += " (it boots its own initrd, which may have no sprites agent)"
            raise errors.RuntimeCallError("exec", reason) from None
        finally:
            os.close(lock_fd)
        if outcome.failure is not None:
            raise errors.RuntimeCallError("exec", outcome.failure)
        if outcome.timed_out or outcome.exit_code is None:
            raise errors.RuntimeTimeoutError("exec", limit)
        return base.ExecResult(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            duration=time.monotonic() - began,
        )

    def close(self) -> None:
        """Nothing to release: sprites outlive the driver by design."""

    # ------------------------------------------------------------ internals

    def _exec_script(
        self,
        record: _Record,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        workdir: str | None,
        user: str | None,
    ) -> bytes:
        """The agent's script for one exec: the environment is PATH, HOME,
        USER, LOGNAME, TERM and HOSTNAME, then the sprite's own, then
        ``env``; the ids are switched only for a user other than root."""
        if workdir is not None:
            if not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir:
                raise errors.RuntimeCallError(
                    "exec", f"invalid workdir {workdir!r}: expected an absolute path"
                )
        else:
            recorded = record.request.get("workdir")
            workdir = recorded if isinstance(recorded, str) and recorded else "/root"
        uid: int | None = None
        gid: int | None = None
        home, login = "/root", "root"
        if user is not None:
            try:
                uid, gid, home = sandbox.parse_user(user)
            except ValueError as exc:
                raise errors.RuntimeCallError("exec", str(exc)) from None
            login = sandbox.login_name(uid)
        environment = {
            "PATH": agent.DEFAULT_PATH,
            "HOME": home,
            "USER": login,
            "LOGNAME": login,
            "TERM": "xterm-256color",
            "HOSTNAME": record.name,
        }
        recorded_env = record.request.get("env")
        if isinstance(recorded_env, dict):
            environment.update(
                (key, value)
                for key, value in recorded_env.items()
                if isinstance(key, str) and isinstance(value, str)
            )
        if user is not None:
            environment.update(HOME=home, USER=login, LOGNAME=login)
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise errors.RuntimeCallError("exec", f"invalid environment variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise errors.RuntimeCallError(
                    "exec", f"invalid value for environment variable {key}"
                )
            environment[key] = value
        if uid == 0 and gid == 0:
            uid = gid = None
        return agent.command_script(argv, environment, workdir, uid, gid)

    def _not_running(self, record: _Record) -> str | None:
        """Why the guest cannot answer now (QEMU gone, guest stopped), or None."""
        if not record.alive:
            return f"sprite '{record.name}' is not running"
        try:
            status = qmp.query_status(record.qmp, timeout=QMP_TIMEOUT)
        except qmp.QMPError:
            return None
        if status != "running":
            return f"sprite '{record.name}' is not running ({status})"
        return None

    def _checked(self, op: str, name: object) -> str:
        problem = units.name_problem(name)
        if problem is not None:
            raise errors.InvalidNameError(problem)
        assert isinstance(name, str)
        return name

    def _guest(self, options: Mapping[str, object]) -> image.Image:
        """The kernel and initramfs to boot: the manifest's own, else the built image's."""
        chosen: dict[str, pathlib.Path] = {}
        for key in ("kernel", "initrd"):
            value = options.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not os.path.isfile(value):
                raise errors.RuntimeCallError("start", f"{key} {value} is not a file")
            chosen[key] = pathlib.Path(value)
        built = self.built_image()
        if built is None and len(chosen) < 2:
            raise errors.RuntimeCallError(
                "start",
                f"no microVM guest image in {image.image_dir(self.layout.root)} "
                f"(build it: {image.BUILD_COMMAND})",
            )
        if built is not None and not chosen:
            return built
        return image.Image(
            chosen["kernel"] if "kernel" in chosen or built is None else built.kernel,
            chosen["initrd"] if "initrd" in chosen or built is None else built.initrd,
            {"custom": "initrd" in chosen},
        )

    def _reserve(self, name: str) -> tuple[pathlib.Path, int]:
        """Create the sprite's record directory and lock it; SpriteExistsError
        when the name is taken. Reservations take turns on one lock file, so
        a directory is never taken over while its creator is about to lock it."""
        directory = self.layout.sprite(name)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        guard = os.open(
            self.layout.root / ".reserve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if os.path.lexists(directory):
                # A directory left by a start that died before writing its
                # request is free to take once nobody holds its lock.
                try:
                    stale = os.open(directory, flags)
                except OSError:
                    raise errors.SpriteExistsError(
                        "start", f"sprite '{name}' already exists"
                    ) from None
                try:
                    try:
                        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise errors.SpriteExistsError(
                            "start", f"sprite '{name}' already exists"
                        ) from None
                    if (directory / "request.json").exists():
                        raise errors.SpriteExistsError("start", f"sprite '{name}' already exists")
                    self._remove_dir(directory)
                finally:
                    os.close(stale)
            os.mkdir(directory, 0o700)
            dir_fd = os.open(directory, flags)
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            return directory, dir_fd
        finally:
            os.close(guard)

    def _argv(
        self,
        qemu: str,
        name: str,
        request: base.StartRequest,
        guest: image.Image,
        initrd: pathlib.Path,
        directory: pathlib.Path,
        accel: str,
        qmp_path: str,
        console_path: str,
        agent_path: str | None = None,
    ) -> builtins.list[str]:
        append = ["console=ttyS0", "panic=-1"]
        if not guest.custom:
            append.append("quiet")
        khz = host_khz() if accel == "tcg" else None
        if khz:
            # Under TCG a loaded host can hang the guest's TSC calibration.
            append.append(f"tsc_early_khz={khz}")
        append.append(f"sprites.hostname={name}")
        cmdline = " ".join(append)
        if len(cmdline.encode()) >= CMDLINE_MAX:
            raise errors.RuntimeCallError(
                "start", f"the kernel command line is longer than {CMDLINE_MAX - 1} bytes"
            )
        memory_mib = math.ceil(request.memory / (1 << 20))
        log = str(directory / "console.log")
        port = agent.qemu_args(agent_path, _escape) if agent_path else []
        return [
            qemu,
            "-name",
            f"guest={name},process=sprite-{name}",
            "-M",
            "microvm",
            "-accel",
            accel,
            "-cpu",
            "host" if accel == "kvm" else "max",
            "-m",
            str(memory_mib),
            "-smp",
            str(request.cpus),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-daemonize",
            "-pidfile",
            str(directory / "qemu.pid"),
            "-chardev",
            f"socket,id=console,path={_escape(_socket_arg(console_path))},server=on,wait=off,"
            f"logfile={_escape(log)},logappend=on",
            "-serial",
            "chardev:console",
            "-qmp",
            f"unix:{_escape(_socket_arg(qmp_path))},server=on,wait=off",
            "-nic",
            "none",
            "-no-reboot",
            "-no-shutdown",
            "-action",
            "panic=pause",
            "-device",
            "pvpanic",
            *port,
            "-kernel",
            str(guest.kernel),
            "-initrd",
            str(initrd),
            "-append",
            cmdline,
        ]

    def _launch(
        self, argv: builtins.list[str], directory: pathlib.Path, qmp_path: str
    ) -> tuple[int, int]:
        """Run ``qemu -daemonize``; (pid, start time) of the detached VM."""
        completed = process.run(
            argv,
            timeout=min(self.timeout, LAUNCH_TIMEOUT),
            op="start",
            stdin_open=False,
            cwd=self.layout.run,
        )
        if completed.returncode != 0:
            lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
            reason = lines[-1] if lines else f"{argv[0]} exited with status {completed.returncode}"
            raise errors.RuntimeCallError(
                "start",
                reason.removeprefix(f"{argv[0]}: ").removeprefix(f"{os.path.basename(argv[0])}: "),
                stderr=completed.stderr,
            )
        try:
            pid = int((directory / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            found = _find_qemu(os.path.basename(qmp_path))
            if len(found) != 1:
                raise errors.RuntimeCallError(
                    "start", "QEMU started but wrote no pid file"
                ) from None
            return found[0]
        facts = hostio.proc_stat(pid)
        if facts is None or facts[0] in ("Z", "X"):
            raise errors.RuntimeCallError("start", "QEMU exited right after starting")
        return pid, facts[1]

    def _wait_ready(
        self,
        directory: pathlib.Path,
        pid: int,
        start: int,
        qmp_path: str,
        custom: bool,
        began: float,
    ) -> None:
        """Return once the guest's init announced itself on the console."""
        markers = [image.READY_MARKER]
        if custom:
            markers.append(accel_mod.INIT_LINE)
        log = directory / "console.log"
        deadline = began + self.timeout
        seen = b""
        offset = 0
        delay = 0.005
        next_status = time.monotonic() + 0.5
        while True:
            try:
                with open(log, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                seen = (seen + chunk)[-65536:]
                text = seen.decode("utf-8", "replace")
                if any(marker in text for marker in markers):
                    return
            now = time.monotonic()
            if not hostio.is_alive(pid, start):
                raise errors.RuntimeCallError(
                    "start", f"QEMU exited while the guest booted{_last_line(seen)}"
                )
            if now >= next_status:
                next_status = now + 0.5
                try:
                    status = qmp.query_status(qmp_path, timeout=QMP_TIMEOUT)
                except qmp.QMPError:
                    status = "running"
                if status in _STOPPED_STATES:
                    raise errors.RuntimeCallError(
                        "start", f"the guest stopped while booting ({status}){_last_line(seen)}"
                    )
            if now >= deadline:
                shown = int(self.timeout) if self.timeout.is_integer() else self.timeout
                raise errors.RuntimeCallError(
                    "start",
                    f"the guest's init did not announce itself within {shown}s{_last_line(seen)}",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _teardown(
        self,
        directory: pathlib.Path,
        qmp_path: str,
        console_path: str,
        record: _Record | None = None,
    ) -> None:
        """Stop the VM (QMP quit, then SIGKILL) and remove every file of the sprite."""
        vm = record.vm if record is not None else _read_json(directory / "vm.json")
        targets: builtins.list[tuple[int, int]] = []
        if vm and isinstance(vm.get("pid"), int) and isinstance(vm.get("start"), int):
            targets.append((vm["pid"], vm["start"]))
        elif qmp_path:
            targets.extend(_find_qemu(os.path.basename(qmp_path)))
        for pid, start in targets:
            self._stop(pid, start, qmp_path)
        for path in (qmp_path, console_path):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        request = record.request if record is not None else _read_json(directory / "request.json")
        channel = (request or {}).get("agent")
        if isinstance(channel, str) and os.path.dirname(channel) == str(self.layout.run):
            agent.remove_channel(channel)
        self._remove_dir(directory)

    def _stop(self, pid: int, start: int, qmp_path: str) -> None:
        pidfd = hostio.open_process(pid, start)
        if pidfd is None:
            return
        try:
            try:
                qmp.quit_vm(qmp_path, timeout=min(QMP_TIMEOUT, self.grace))
            except qmp.QMPError:
                pass
            if hostio.wait_exit(pidfd, self.grace):
                return
            try:
                hostio.signal_process(pidfd, signal.SIGKILL)
            except OSError as exc:
                raise errors.RuntimeCallError(
                    "kill", f"cannot kill QEMU (pid {pid}): {exc.strerror}"
                ) from exc
            if not hostio.wait_exit(pidfd, KILL_WAIT):
                raise errors.RuntimeCallError("kill", f"QEMU (pid {pid}) survived SIGKILL")
        finally:
            os.close(pidfd)

    def _ensure_layout(self) -> None:
        try:
            self.layout.ensure()
        except hostio.UnsafePathError as exc:
            raise errors.RuntimeCallError(
                "start", f"{exc.path} is not a private directory of this user"
            ) from None

    def _remove_dir(self, directory: pathlib.Path) -> None:
        if not os.path.lexists(directory):
            return
        self._ensure_layout()
        doomed = self.layout.trash / f"{directory.name}.{secrets.token_hex(4)}"
        try:
            os.rename(directory, doomed)
        except OSError:
            doomed = directory
        shutil.rmtree(doomed, ignore_errors=True)

    @contextmanager
    def _locked(self, op: str, name: str, directory: pathlib.Path) -> Iterator[int]:
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found") from None
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise errors.RuntimeCallError(
                            op, f"sprite '{name}' is busy: a start or kill is in progress"
                        ) from None
                    time.sleep(0.02)
            if not os.path.isdir(directory):
                raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found")
            yield dir_fd
        finally:
            os.close(dir_fd)

    def _names(self) -> builtins.list[str]:
        try:
            entries = os.listdir(self.layout.sprites)
        except OSError:
            return []
        return sorted(entry for entry in entries if units.is_valid_name(entry))

    def _records(self) -> Iterator[_Record]:
        for name in self._names():
            directory = self.layout.sprite(name)
            try:
                dir_fd = os.open(
                    directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                )
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(dir_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    busy = False
                    fcntl.flock(dir_fd, fcntl.LOCK_UN)
                except BlockingIOError:
                    busy = True
            finally:
                os.close(dir_fd)
            record = self._read(name, directory, busy=busy)
            if record is not None:
                yield record

    def _read(self, name: str, directory: pathlib.Path, *, busy: bool) -> _Record | None:
        request = _read_json(directory / "request.json")
        if request is None:
            return None
        return _Record(name, directory, request, _read_json(directory / "vm.json"), busy)

    def _existing(self, op: str, name: str) -> _Record:
        record = self._read(name, self.layout.sprite(name), busy=False)
        if record is None:
            raise errors.SpriteNotFoundError(op, f"sprite '{name}' not found")
        return record

    def _observe(self, record: _Record) -> observed.ObservedSprite:
        state, reason = self._state(record)
        request = record.request
        memory, cpus, created = (
            request.get("memory"),
            request.get("cpus"),
            request.get("created_at"),
        )
        return observed.ObservedSprite(
            id=record.id,
            name=record.name,
            state=state,
            pid=record.pid if state == "running" else None,
            address=f"unix://{record.console}" if record.console else None,
            runtime=self.name,
            memory=memory if isinstance(memory, int) else None,
            cpus=cpus if isinstance(cpus, int) else None,
            started_at=float(created) if isinstance(created, (int, float)) else None,
            reason=reason,
        )

    def _state(self, record: _Record) -> tuple[str, str | None]:
        """running/stopped/error from QMP, and why a guest is not running."""
        if record.vm is None:
            if record.busy:
                return "running", "starting"
            return "error", "the start was interrupted before QEMU ran"
        if not record.alive:
            return "error", "QEMU exited unexpectedly"
        console.trim(record.console_log)
        try:
            status = qmp.query_status(record.qmp, timeout=QMP_TIMEOUT)
        except qmp.QMPTimeout:
            return "running", "QEMU did not answer on QMP in time"
        except qmp.QMPError as exc:
            return "error", f"QEMU does not answer on QMP: {exc}"
        if status == "running":
            return "running", None
        recent = console.text(console.tail(record.console_log, 16 << 10))
        if status == "guest-panicked":
            panic = _PANIC_RE.findall(recent)
            return "error", panic[-1] if panic else "the guest kernel panicked"
        if status == "shutdown":
            exits = _EXIT_RE.findall(recent)
            if exits:
                code = int(exits[-1])
                if code == 0:
                    return "stopped", "exited with code 0"
                return "error", f"exited with code {code}"
            panic = _PANIC_RE.findall(recent)
            if panic:
                return "error", panic[-1]
            return "stopped", "the guest powered off"
        if status == "internal-error":
            return "error", "the VM stopped on an internal error of the accelerator"
        return "stopped" if status not in _STOPPED_STATES else "error", f"VM status: {status}"

    def _log(self, directory: pathlib.Path, message: str) -> None:
        hostio.append_line(directory / "log", f"{hostio.timestamp()} {message}")

    def _sprite_log(self, record: _Record) -> builtins.list[str]:
        try:
            return (record.directory / "log").read_text(errors="replace").splitlines()
        except OSError:
            return []


def _last_line(raw: bytes) -> str:
    lines = [line.strip() for line in console.text(raw).splitlines() if line.strip()]
    return f"; last console line: {lines[-1][:200]}" if lines else ""
