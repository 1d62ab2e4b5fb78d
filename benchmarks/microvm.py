"""Benchmark of the microVM runtime next to the built-in runtime, in one run.

Boots N microVMs one after another and measures boot-to-init (``start``
returns once the guest's init announced itself on its console) and the
memory of each VMM (QEMU's RSS and PSS once the guest runs its shell), and
in the first guest the ``exec`` round trip of ``true`` through the guest's
agent and the throughput of 4 MiB through ``cat`` (stdin in, stdout out). Then
starts the same number of built-in sprites (when that runtime can run here)
and measures start-to-running and the memory of its per-sprite processes
(init and supervisor). Everything started is killed at the end, even on
failure. The last lines are the figures.

    python benchmarks/microvm.py [--quick] [--count N] [--memory MIB]
                                 [--accel auto|kvm|tcg] [--state-dir DIR]

The guest image is built under the state directory unless one is there
already (``--state-dir`` reuses it across runs).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from reconciler.drivers import base
from reconciler.drivers.microvm import MicroVMDriver, build_image, find_image, unavailable_reason

MiB = 1 << 20


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def kill_all(kill: Callable[[str], object], names: list[str]) -> None:
    for name in names:
        try:
            kill(name)
        except Exception as exc:  # noqa: BLE001  (keep cleaning up the rest)
            print(f"warning: kill {name}: {exc}", file=sys.stderr)


def bench_exec(driver: MicroVMDriver, name: str, count: int) -> tuple[list[float], float]:
    """ms per ``exec true`` (after 3 to warm up), and MB/s of 4 MiB through ``cat``."""
    for _ in range(3):
        driver.exec(name, ["true"])
    times = []
    for _ in range(count):
        began = time.perf_counter()
        result = driver.exec(name, ["true"])
        times.append((time.perf_counter() - began) * 1000)
        assert result.exit_code == 0
    data = os.urandom(4 * MiB)
    began = time.perf_counter()
    result = driver.exec(name, ["cat"], stdin=data)
    elapsed = time.perf_counter() - began
    assert result.stdout == data
    return times, len(data) / elapsed / 1e6


def bench_microvm(
    state_dir: pathlib.Path, count: int, memory: int, accel: str, exec_count: int
) -> tuple[str, list[float], list[int], list[int], tuple[list[float], float]]:
    if find_image(state_dir / "microvm") is None:
        print("building the guest image (sprites image build) ...", flush=True)
        build_image(state_dir, progress=lambda line: print(f"  {line}", flush=True))
    driver = MicroVMDriver(state_dir, timeout=300, accel=accel)
    decision = driver.decide(driver.built_image())
    assert decision is not None
    if decision.warning:
        print(f"warning: {decision.warning}")
    boots: list[float] = []
    rss: list[int] = []
    pss: list[int] = []
    names: list[str] = []
    execs: tuple[list[float], float] = ([], 0.0)
    try:
        for index in range(count):
            name = f"bench-vm-{index}"
            began = time.monotonic()
            result = driver.start(base.StartRequest(name=name, memory=memory, cpus=1))
            boots.append(time.monotonic() - began)
            names.append(name)
            assert result.pid is not None
            time.sleep(0.5)  # let the shell settle before reading memory
            rss.append(status_kib(result.pid, "VmRSS"))
            pss.append(pss_kib(result.pid))
            print(
                f"  {name}: boot to init {boots[-1]:.3f} s, QEMU RSS {rss[-1] / 1024:.1f} MiB",
                flush=True,
            )
            if index == 0:
                execs = bench_exec(driver, name, exec_count)
    finally:
        kill_all(driver.kill, names)
    return decision.accel, boots, rss, pss, execs


def bench_builtin(state_dir: pathlib.Path, count: int) -> tuple[list[float], list[int]] | str:
    try:
        from reconciler.drivers import builtin
        from reconciler.drivers.builtin import records
    except ImportError:
        return "the built-in runtime is not installed"
    reason = builtin.unavailable_reason()
    if reason is not None:
        return reason
    driver = builtin.make_driver(state_dir, timeout=60)
    starts: list[float] = []
    rss: list[int] = []
    names: list[str] = []
    try:
        for index in range(count):
            name = f"bench-ns-{index}"
            began = time.monotonic()
            driver.start(
                base.StartRequest(name=name, memory=64 * MiB, cpus=1, command=("sleep", "3600"))
            )
            starts.append(time.monotonic() - began)
            names.append(name)
            fd = records.open_dir(driver.layout.sprite(name))
            try:
                pids = records.read_kv(fd, "pids") or {}
            finally:
                os.close(fd)
            own = [int(pids[key]) for key in ("supervisor_pid", "init_pid") if key in pids]
            rss.append(sum(status_kib(pid, "VmRSS") for pid in own))
    finally:
        kill_all(driver.kill, names)
    return starts, rss


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 boots of each runtime")
    parser.add_argument("--count", type=int, default=10, help="boots of each runtime (default 10)")
    parser.add_argument("--memory", type=int, default=128, help="guest memory in MiB (default 128)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument(
        "--state-dir", type=pathlib.Path, help="reuse this state dir (and its image)"
    )
    args = parser.parse_args()
    count = 3 if args.quick else args.count
    reason = unavailable_reason()
    if reason is not None:
        print(f"microvm runtime unavailable: {reason}", file=sys.stderr)
        return 1
    made = args.state_dir is None
    state_dir = args.state_dir or pathlib.Path(tempfile.mkdtemp(prefix="mvm-bench-"))
    try:
        print(f"microvm: booting {count} guests of {args.memory} MiB one after another", flush=True)
        accel, boots, rss, pss, execs = bench_microvm(
            state_dir, count, args.memory * MiB, args.accel, 20 if args.quick else 100
        )
        print(f"builtin: starting {count} sprites one after another", flush=True)
        ns = bench_builtin(state_dir, count)
    finally:
        if made:
            shutil.rmtree(state_dir, ignore_errors=True)
    print()
    print(
        f"microvm ({accel}): boot to init p50 {statistics.median(boots):.3f} s, "
        f"p95 {percentile(boots, 0.95):.3f} s over {len(boots)} boots; "
        f"VMM (QEMU) RSS {statistics.mean(rss) / 1024:.1f} MiB, "
        f"PSS {statistics.mean(pss) / 1024:.1f} MiB per {args.memory} MiB guest"
    )
    exec_times, throughput = execs
    print(
        f"microvm ({accel}): exec true p50 {statistics.median(exec_times):.1f} ms, "
        f"p95 {percentile(exec_times, 0.95):.1f} ms over {len(exec_times)} calls "
        f"(through the guest's agent); 4 MiB through cat at {throughput:.1f} MB/s"
    )
    if isinstance(ns, str):
        print(f"builtin: not measured ({ns})")
    else:
        starts, ns_rss = ns
        print(
            f"builtin: start to running p50 {statistics.median(starts) * 1000:.1f} ms, "
            f"p95 {percentile(starts, 0.95) * 1000:.1f} ms over {len(starts)} starts; "
            f"init + supervisor RSS {statistics.mean(ns_rss) / 1024:.2f} MiB per sprite"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
