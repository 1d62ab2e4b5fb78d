"""The accelerator decision: KVM only where a probe guest boots under it,
otherwise TCG with a warning; ``agent.accel`` overrides; the probe is
bounded and cached."""

from __future__ import annotations

import os
import pathlib
import stat
import time

import pytest

from reconciler.drivers.base import StartRequest
from reconciler.drivers.microvm import MicroVMDriver
from reconciler.drivers.microvm import accel as accel_mod
from reconciler.drivers.microvm.accel import Decision, ProbeResult, decide
from reconciler.drivers.microvm.image import IMAGE_FORMAT, READY_MARKER
from reconciler.errors import RuntimeCallError


class Probe:
    """A probe that returns a fixed result and counts its calls."""

    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> ProbeResult:
        self.calls += 1
        return self.result


def test_auto_uses_kvm_when_the_probe_boots() -> None:
    probe = Probe(ProbeResult(True))
    assert decide("auto", device_problem=None, probe=probe) == Decision("kvm")
    assert probe.calls == 1


def test_auto_falls_back_to_tcg_with_a_one_line_warning_when_the_probe_fails() -> None:
    probe = Probe(ProbeResult(False, "failed to set MSR 0x10a to 0x69"))
    decision = decide("auto", device_problem=None, probe=probe)
    assert decision.accel == "tcg"
    assert decision.warning is not None and "\n" not in decision.warning
    assert "failed to set MSR 0x10a to 0x69" in decision.warning
    assert "emulated (TCG)" in decision.warning


def test_auto_without_a_usable_device_does_not_probe() -> None:
    probe = Probe(ProbeResult(True))
    decision = decide("auto", device_problem=accel_mod.KVM_ERROR, probe=probe)
    assert decision.accel == "tcg" and accel_mod.KVM_ERROR in (decision.warning or "")
    assert probe.calls == 0


def test_forced_tcg_neither_probes_nor_warns() -> None:
    probe = Probe(ProbeResult(True))
    assert decide("tcg", device_problem=None, probe=probe) == Decision("tcg")
    assert probe.calls == 0


def test_forced_kvm_is_taken_as_given_when_the_device_opens() -> None:
    probe = Probe(ProbeResult(False, "would fail"))
    assert decide("kvm", device_problem=None, probe=probe) == Decision("kvm")
    assert probe.calls == 0


def test_forced_kvm_without_the_device_is_the_guides_error() -> None:
    with pytest.raises(RuntimeCallError) as caught:
        decide("kvm", device_problem=accel_mod.KVM_ERROR, probe=Probe(ProbeResult(True)))
    assert caught.value.user_message == "Failed to start Sprite: /dev/kvm not found or no access"


def test_a_missing_device_is_reported(tmp_path: pathlib.Path) -> None:
    assert accel_mod.kvm_device_problem(str(tmp_path / "kvm")) == accel_mod.KVM_ERROR
    assert accel_mod.kvm_device_problem("/dev/null") is not None  # opens, but is not KVM


def test_the_verdict_is_cached_per_key(tmp_path: pathlib.Path) -> None:
    probe = Probe(ProbeResult(False, "KVM internal error. Suberror: 1"))
    key = {"qemu": "/usr/bin/qemu-system-x86_64", "boot_id": "one"}
    assert accel_mod.cached_probe(tmp_path, key, probe) == probe.result
    assert accel_mod.cached_probe(tmp_path, key, probe) == probe.result
    assert probe.calls == 1
    assert stat.S_IMODE(os.stat(tmp_path / accel_mod.CACHE_FILE).st_mode) == 0o600
    # Another boot (or another QEMU) probes again.
    assert accel_mod.cached_probe(tmp_path, {**key, "boot_id": "two"}, probe) == probe.result
    assert probe.calls == 2


def _fake_qemu(directory: pathlib.Path, body: str) -> str:
    path = directory / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_probe_guest_that_announces_itself_passes(tmp_path: pathlib.Path) -> None:
    qemu = _fake_qemu(tmp_path, f'echo "{READY_MARKER} sprite"\nsleep 30\n')
    began = time.monotonic()
    assert accel_mod.run_probe([qemu], timeout=20) == ProbeResult(True)
    assert time.monotonic() - began < 15  # killed at the marker, not at the timeout


def test_a_probe_that_fails_gives_qemus_reason(tmp_path: pathlib.Path) -> None:
    qemu = _fake_qemu(
        tmp_path,
        'echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2\n'
        'echo "qemu-system-x86_64: ../kvm.c:3183: kvm_buf_set_msrs: Assertion failed." >&2\n'
        "exit 134\n",
    )
    assert accel_mod.run_probe([qemu], timeout=20) == ProbeResult(
        False, "failed to set MSR 0x10a to 0x69"
    )


def test_a_hanging_probe_guest_is_killed_at_the_timeout(tmp_path: pathlib.Path) -> None:
    pidfile = tmp_path / "pid"
    qemu = _fake_qemu(tmp_path, f"echo $$ > {pidfile}\nexec sleep 300\n")
    result = accel_mod.run_probe([qemu], timeout=1)
    assert not result.ok and "no sign of life within 1s" in result.reason
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _fake_install(tmp_path: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A state dir with a (fake) image, and a QEMU that must never be run."""
    qemu = _fake_qemu(tmp_path, "echo 'must not run' >&2\nexit 99\n")
    state = tmp_path / "state"
    image = state / "microvm" / "image"
    image.mkdir(parents=True)
    for name in ("vmlinux", "initrd.cpio.gz"):
        (image / name).write_bytes(b"x")
    (image / "image.json").write_text(f'{{"format": {IMAGE_FORMAT}}}')
    return qemu, state


def test_forced_kvm_without_dev_kvm_fails_start_before_qemu_runs(tmp_path: pathlib.Path) -> None:
    qemu, state = _fake_install(tmp_path)
    driver = MicroVMDriver(state, accel="kvm", qemu=qemu, kvm_device=str(tmp_path / "no-kvm"))
    with pytest.raises(RuntimeCallError) as caught:
        driver.start(StartRequest(name="vm", memory=256 << 20, cpus=1))
    assert caught.value.user_message == "Failed to start Sprite: /dev/kvm not found or no access"
    assert driver.list().sprites == ()


def test_list_warns_that_sprites_are_emulated_after_a_failed_probe(tmp_path: pathlib.Path) -> None:
    qemu, state = _fake_install(tmp_path)
    driver = MicroVMDriver(state, accel="auto", qemu=qemu, kvm_device="/dev/kvm")
    if accel_mod.kvm_device_problem() is not None:
        # No usable /dev/kvm here: the warning comes from the device check.
        assert "emulated" in driver.list().warnings[0]
        return
    root = state / "microvm"
    key = accel_mod.cache_key(qemu)
    probe = Probe(ProbeResult(False, "KVM internal error. Suberror: 1"))
    accel_mod.cached_probe(root, key, probe)
    (warning,) = driver.list().warnings
    assert warning == accel_mod.emulated_warning("KVM internal error. Suberror: 1")


def test_forced_accelerators_list_no_warning(tmp_path: pathlib.Path) -> None:
    qemu, state = _fake_install(tmp_path)
    assert MicroVMDriver(state, accel="tcg", qemu=qemu).list().warnings == ()
