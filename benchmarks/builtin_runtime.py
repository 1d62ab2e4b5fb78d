"""Benchmark of the built-in runtime against its targets.

Starts N sprites one after another (start-to-running latency, p50/p95), then
measures the host memory each sprite costs beyond its own command (PSS of its
init and supervisor from /proc/<pid>/smaps_rollup), then starts 100 sprites
with a pool of 10 workers. Everything it starts is killed at the end, even on
failure. The last lines are the figures next to their targets; the exit status
is non-zero when a target is missed.

    python benchmarks/builtin_runtime.py [--quick] [--count N] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import statistics
import sys
import time

from _common import in_state_dir, print_checks

from reconciler.drivers import base
from reconciler.drivers.builtin import helper, make_driver, records, unavailable_reason
from reconciler.drivers.builtin.driver import BuiltinDriver

P50_TARGET_MS = 30.0
MEMORY_TARGET_MIB = 2.0
BURST_TARGET_S = 3.0
MiB = 1 << 20
COMMAND = ("sleep", "3600")


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, in KiB."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def request(name: str) -> base.StartRequest:
    return base.StartRequest(name=name, memory=64 * MiB, cpus=1, command=COMMAND)


def supervisor_and_init(driver: BuiltinDriver, name: str) -> tuple[int, int]:
    fd = records.open_dir(driver.layout.sprite(name))
    try:
        pids = records.read_kv(fd, "pids") or {}
    finally:
        os.close(fd)
    return int(pids["supervisor_pid"]), int(pids["init_pid"])


def kill_all(driver: BuiltinDriver, names: list[str], workers: int = 10) -> None:
    def kill(name: str) -> None:
        try:
            driver.kill(name)
        except Exception as exc:  # keep cleaning up the rest
            print(f"warning: kill {name}: {exc}", file=sys.stderr)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(kill, names))


def run(count: int, burst: int, state_dir: pathlib.Path) -> int:
    driver = make_driver(state_dir, timeout=60.0, grace=1.0)
    helper.ensure(state_dir)  # building the helper is a one-time cost, not a start
    tag = os.urandom(2).hex()
    started: list[str] = []
    try:
        latencies: list[float] = []
        for index in range(count):
            name = f"bench-{tag}-{index}"
            began = time.perf_counter()
            driver.start(request(name))
            latencies.append((time.perf_counter() - began) * 1000)
            started.append(name)
        inventory = driver.list().by_name()
        assert all(inventory[n].state == "running" for n in started), "a sprite is not running"

        pss: list[float] = []
        rss: list[float] = []
        for name in started:
            supervisor, init = supervisor_and_init(driver, name)
            pss.append((pss_kib(supervisor) + pss_kib(init)) / 1024)
            rss.append((rss_kib(supervisor) + rss_kib(init)) / 1024)

        began = time.perf_counter()
        kill_all(driver, started)
        kill_seconds = time.perf_counter() - began

        burst_names = [f"bench-{tag}-p{index}" for index in range(burst)]
        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            list(pool.map(driver.start, map(request, burst_names)))
        burst_seconds = time.perf_counter() - began
        running = sum(1 for s in driver.list().sprites if s.state == "running")
    finally:
        # Whatever this run started, even when a start failed half way.
        mine = [s.name for s in driver.list().sprites if s.name.startswith(f"bench-{tag}-")]
        kill_all(driver, mine)

    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
    mem_mean, mem_max = statistics.mean(pss), max(pss)
    checks = [
        (
            "start-to-running p50",
            f"{p50:.1f} ms",
            f"<= {P50_TARGET_MS:.0f} ms",
            p50 <= P50_TARGET_MS,
        ),
        (
            "host memory per sprite (init + supervisor PSS, mean)",
            f"{mem_mean:.2f} MiB",
            f"<= {MEMORY_TARGET_MIB:.0f} MiB",
            mem_mean <= MEMORY_TARGET_MIB,
        ),
        (
            "host memory per sprite (worst)",
            f"{mem_max:.2f} MiB",
            f"<= {MEMORY_TARGET_MIB:.0f} MiB",
            mem_max <= MEMORY_TARGET_MIB,
        ),
        (
            f"{burst} sprites started with a pool of 10",
            f"{burst_seconds:.2f} s ({running} running)",
            f"<= {BURST_TARGET_S:.0f} s" if burst == 100 else "set for 100 sprites only",
            burst_seconds <= BURST_TARGET_S and running == burst,
        ),
    ]
    print(f"sprites started one by one: {count}")
    print(
        f"start-to-running p95: {p95:.1f} ms (min {min(latencies):.1f}, max {max(latencies):.1f})"
    )
    print(f"init + supervisor RSS per sprite: {statistics.mean(rss):.2f} MiB (not shared-adjusted)")
    print(f"killed {count} sprites with a pool of 10 in {kill_seconds:.2f} s")
    return print_checks(checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 sprites, then a burst of 10")
    parser.add_argument("--count", type=int, help="sprites started one by one (default 50)")
    parser.add_argument("--state-dir", type=pathlib.Path, help="default: a temporary directory")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"built-in runtime unavailable: {reason}", file=sys.stderr)
        return 2
    count = args.count or (5 if args.quick else 50)
    burst = 10 if args.quick else 100
    return in_state_dir(args.state_dir, lambda state: run(count, burst, state))


if __name__ == "__main__":
    sys.exit(main())
