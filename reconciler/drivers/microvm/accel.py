"""Which accelerator a microVM runs under: KVM where it really works, else TCG.

``/dev/kvm`` existing is not enough: some hosts expose a KVM that cannot
run an unmodified guest (a paravirtual KVM without VMX/SVM aborts on MSR
writes or stops with ``KVM internal error``). So ``auto`` boots a probe
guest under KVM once, with a timeout and a kill (a failing guest may hang
paused), and caches the verdict under the runtime's directory, keyed by
what could change it (the QEMU binary, the host kernel, this boot).
``agent.accel`` in the config overrides the choice.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pathlib
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from reconciler.drivers.microvm.image import READY_MARKER, Image
from reconciler.errors import RuntimeCallError
from reconciler.record import record

KVM_DEVICE = "/dev/kvm"
#: The guide's wording when KVM is required but missing.
KVM_ERROR = "/dev/kvm not found or no access"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_TIMEOUT = 20.0
CACHE_FILE = "accel.json"
#: A guest without our init (a custom initrd) shows it booted with this line.
INIT_LINE = "Run /init as init process"
_PR_SET_PDEATHSIG = 1


@record(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""


@record(frozen=True)
class Decision:
    """The accelerator to use, and the one-line warning to show when it is a fallback."""

    accel: str
    warning: str | None = None


def emulated_warning(reason: str) -> str:
    return (
        f"microvm: KVM is not usable on this host ({reason}); "
        "microVM sprites run emulated (TCG), much slower"
    )


def kvm_device_problem(path: str = KVM_DEVICE) -> str | None:
    """None when ``path`` opens read-write and speaks the KVM API; else why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return KVM_ERROR
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"{path} does not answer KVM_GET_API_VERSION ({exc.strerror})"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{path} speaks KVM API {version}, expected {KVM_API_VERSION}"
    return None


def decide(
    setting: str,
    *,
    device_problem: str | None,
    probe: Callable[[], ProbeResult],
) -> Decision:
    """The accelerator for ``agent.accel`` = ``setting``.

    ``kvm`` is taken as given once the device is usable (no probe);
    without the device it is the guide's error. ``tcg`` is taken as given.
    ``auto`` uses KVM only when ``probe`` says a guest boots under it."""
    if setting == "tcg":
        return Decision("tcg")
    if setting == "kvm":
        if device_problem is not None:
            raise RuntimeCallError("start", KVM_ERROR)
        return Decision("kvm")
    if device_problem is not None:
        return Decision("tcg", emulated_warning(device_problem))
    result = probe()
    if result.ok:
        return Decision("kvm")
    return Decision("tcg", emulated_warning(result.reason or "the KVM probe guest did not boot"))


# --------------------------------------------------------------------- probe


def probe_argv(qemu: str, image: Image) -> list[str]:
    append = "console=ttyS0 panic=-1 sprites.probe=1"
    if not image.custom:
        append += " quiet"
    return [
        qemu,
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        append,
    ]


def run_probe(argv: Sequence[str], *, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Boot ``argv`` (a KVM guest on stdio) until its init shows up, it
    fails, or ``timeout`` passes; the guest is always killed and reaped."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        return ProbeResult(False, f"cannot run {argv[0]}: {exc.strerror or exc}")
    assert proc.stdout is not None
    output = b""
    booted = False
    deadline = time.monotonic() + timeout
    try:
        fd = proc.stdout.fileno()
        while True:
            text = output.decode("utf-8", "replace")
            if READY_MARKER in text or INIT_LINE in text:
                booted = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                output = (output + chunk)[-65536:]
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stdout.close()
    if booted:
        return ProbeResult(True)
    return ProbeResult(False, _failure_reason(output.decode("utf-8", "replace"), timeout))


def _die_with_parent() -> Callable[[], None] | None:
    """A hook run in the probe before exec: the kernel SIGKILLs it when the
    thread that started it dies (``PR_SET_PDEATHSIG``), so a probe guest
    hanging paused never outlives a sprites process killed outright."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(255)

    return hook


def _failure_reason(output: str, timeout: float) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # QEMU's own error lines first ("error: failed to set MSR ...", "KVM
    # internal error ..."); an assertion that follows one says less.
    for words in (("error",), ("failed", "abort")):
        for line in lines:
            lowered = line.lower()
            if any(word in lowered for word in words):
                reason = line.removeprefix("qemu-system-x86_64: ").removeprefix("error: ")
                return reason[:160]
    shown = int(timeout) if float(timeout).is_integer() else timeout
    return f"a probe guest showed no sign of life within {shown}s under KVM"


# --------------------------------------------------------------------- cache


def cache_key(qemu: str) -> dict[str, Any]:
    """What the verdict depends on: the QEMU binary, the host kernel, this boot."""
    key: dict[str, Any] = {"qemu": qemu, "release": os.uname().release}
    try:
        info = os.stat(qemu)
        key["qemu_id"] = [info.st_size, info.st_mtime_ns]
    except OSError:
        pass
    try:
        key["boot_id"] = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pass
    try:
        key["kvm"] = os.stat(KVM_DEVICE).st_rdev
    except OSError:
        key["kvm"] = None
    return key


def cached_probe(
    root: pathlib.Path, key: dict[str, Any], probe: Callable[[], ProbeResult]
) -> ProbeResult:
    """The cached verdict for ``key``, or ``probe()``'s, cached. One prober at
    a time: concurrent callers wait for the first one's verdict."""
    found = read_cached(root, key)
    if found is not None:
        return found
    lock_fd = os.open(root / ".accel.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        found = read_cached(root, key)
        if found is not None:
            return found
        result = probe()
        data = {"key": key, "ok": result.ok, "reason": result.reason, "probed_at": time.time()}
        tmp = root / f".{CACHE_FILE}.{os.getpid()}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True)
        os.replace(tmp, root / CACHE_FILE)
        return result
    finally:
        os.close(lock_fd)


def read_cached(root: pathlib.Path, key: dict[str, Any]) -> ProbeResult | None:
    try:
        data = json.loads((root / CACHE_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("ok"), bool):
        return None
    return ProbeResult(bool(data["ok"]), str(data.get("reason") or ""))
