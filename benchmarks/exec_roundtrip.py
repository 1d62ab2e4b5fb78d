"""Benchmark of ``exec`` on the built-in runtime against its targets.

Starts one sprite, then measures the round trip of running ``true`` in it:
in-process through the driver (``BuiltinDriver.exec``), and through the CLI
(``sprites exec NAME -- true``, a fresh process each time) next to the CLI's
cold start (``sprites --help``) measured in the same run. The sprite is
killed at the end, even on failure. The package's modules are byte-compiled
first, as an installed package's are. The last lines are the figures next to
their targets; the exit status is non-zero when a target is missed.

    python benchmarks/exec_roundtrip.py [--quick] [--count N] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from _common import in_state_dir, print_checks

import reconciler
from reconciler.drivers import base
from reconciler.drivers.builtin import helper, make_driver, unavailable_reason

IN_PROCESS_TARGET_MS = 15.0
#: exec through the CLI may cost this much more than the CLI's cold start.
CLI_FACTOR_TARGET = 1.2
DOCKER_EXEC_MS = "50-100"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def timed(call: Callable[[], object], count: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def sprites_command() -> list[str]:
    found = shutil.which("sprites", path=os.path.dirname(sys.executable)) or shutil.which("sprites")
    if found:
        return [found]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def run(count: int, cli_count: int, state_dir: pathlib.Path) -> int:
    driver = make_driver(state_dir, timeout=60.0, grace=1.0)
    helper.ensure(state_dir)  # building the helper is a one-time cost
    # As installed: a checkout run with PYTHONDONTWRITEBYTECODE=1 would
    # otherwise compile every module on every command.
    compileall.compile_dir(os.path.dirname(reconciler.__file__), quiet=1)
    name = f"bench-exec-{os.urandom(2).hex()}"
    config = state_dir / "config.json"
    config.write_text(json.dumps({"agent": {"kind": "sprite", "runtime": "builtin"}}))
    base_argv = [*sprites_command(), "--config", str(config), "--state-dir", str(state_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRITES_")}

    def cli(*args: str) -> None:
        done = subprocess.run(
            [*base_argv, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sprites {' '.join(args)}: {done.stderr.decode().strip()}")

    try:
        driver.start(
            base.StartRequest(name=name, memory=64 << 20, cpus=1, command=("sleep", "3600"))
        )

        def in_process() -> None:
            result = driver.exec(name, ["true"])
            if result.exit_code != 0:
                raise RuntimeError(f"true exited {result.exit_code}")

        inproc = timed(in_process, count)
        # Interleaved, so both see the same machine load.
        helps: list[float] = []
        execs: list[float] = []
        cli("--help")
        cli("exec", name, "--", "true")
        for _ in range(cli_count):
            helps += timed(lambda: cli("--help"), 1, warmup=0)
            execs += timed(lambda: cli("exec", name, "--", "true"), 1, warmup=0)
    finally:
        try:
            driver.kill(name)
        except Exception as exc:
            print(f"warning: kill {name}: {exc}", file=sys.stderr)

    p50 = statistics.median(inproc)
    help_p50, exec_p50 = statistics.median(helps), statistics.median(execs)
    factor = exec_p50 / help_p50
    checks = [
        (
            "exec `true` in-process p50",
            f"{p50:.1f} ms",
            f"<= {IN_PROCESS_TARGET_MS:.0f} ms",
            p50 <= IN_PROCESS_TARGET_MS,
        ),
        (
            "exec `true` through the CLI p50",
            f"{exec_p50:.1f} ms = {factor:.2f} x the cold start ({help_p50:.1f} ms)",
            f"<= {CLI_FACTOR_TARGET} x",
            factor <= CLI_FACTOR_TARGET,
        ),
    ]
    print(f"in-process: {count} runs, p95 {percentile(inproc, 0.95):.1f} ms, min {min(inproc):.1f}")
    print(
        f"CLI: {cli_count} runs each; `sprites --help` p50 {help_p50:.1f} ms, "
        f"`sprites exec` p50 {exec_p50:.1f} ms (p95 {percentile(execs, 0.95):.1f})"
    )
    print(f"reference: docker exec typically takes {DOCKER_EXEC_MS} ms (not measured here)")
    return print_checks(checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 in-process runs, 7 CLI runs")
    parser.add_argument("--count", type=int, help="in-process runs (default 200)")
    parser.add_argument("--state-dir", type=pathlib.Path, help="default: a temporary directory")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"built-in runtime unavailable: {reason}", file=sys.stderr)
        return 2
    count = args.count or (20 if args.quick else 200)
    cli_count = 7 if args.quick else 30
    return in_state_dir(args.state_dir, lambda state: run(count, cli_count, state))


if __name__ == "__main__":
    sys.exit(main())
