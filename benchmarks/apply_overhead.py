"""Apply overhead: ``sprites apply`` of 50 starts against a runtime whose
start takes 100 ms, next to the ideal measured in the same run.

The ideal is the same 50 runtime calls (``start <name> --memory 512MiB --cpus
1``) made directly from Python, N at a time, plus the CLI's cold start
(``sprites --help``). The apply's extra is everything else: importing the
engine, reading and validating the manifest, the project and host locks,
the runtime's ``list --json`` before planning and after starting (to
verify), the journal written before the calls and after them, the event
log, and starting each call so that it dies with the apply (through
``setpriv --pdeathsig``).

The runtime is a stand-in wisp, a shell script whose start sleeps 100 ms and
whose other calls cost next to nothing; or with ``--runtime fake`` the test
suite's fake wisp with ``delay={"start": 0.1}``, a Python program whose every
call also costs a Python start-up (ten of them at once keep both cores busy,
so its figures follow the machine's other load more than sprites'). Each run
starts from an empty inventory and an empty state directory.

Target: at ``--parallelism 10``, apply <= 1.1 x the ideal; the curve for 1,
5, 10 and 25 is printed beside it. Figures are best-of-N wall times over
interleaved rounds (medians beside them); the package is byte-compiled
first, as an install does. Exit status 1 when the target is missed.

    python benchmarks/apply_overhead.py [--quick] [--runtime stub|fake] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    REPO,
    Check,
    Samples,
    clean_env,
    interleave,
    precompile,
    runner,
    sprites_command,
    verdict,
    write_executable,
)

TARGET = 1.1
TARGET_STARTS = 50
TARGET_PARALLELISM = 10
DELAY = 0.1

STUB = """#!/bin/sh
dir='{records}'
case "$1" in
start)
    sleep {delay}
    : > "$dir/$2"
    echo "Started Sprite VM with ID: stub-$2"
    echo "Connection: unix:///tmp/stub-$2.sock" ;;
list)
    sep=''
    printf '['
    for path in "$dir"/*; do
        [ -e "$path" ] || continue
        name=${{path##*/}}
        printf '%s{{"id": "stub-%s", "name": "%s", "state": "running"}}' "$sep" "$name" "$name"
        sep=', '
    done
    printf ']\\n' ;;
kill)
    rm -f "$dir/$2"
    echo "Killed Sprite $2" ;;
*)
    echo "unknown command '$1'" >&2
    exit 1 ;;
esac
"""


class Runtime:
    """A wisp whose inventory can be emptied between runs."""

    path: str

    def reset(self) -> None:
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError


class FakeRuntime(Runtime):
    def __init__(self, directory: Path, delay: float) -> None:
        sys.path.insert(0, str(REPO))
        from tests.helpers.fakewisp import FakeWisp

        self.fake = FakeWisp(directory)
        self.delay = delay
        self.path = self.fake.path

    def reset(self) -> None:
        self.fake.reset()
        self.fake.script(delay={"start": self.delay})

    def running(self) -> int:
        return sum(1 for sprite in self.fake.inventory() if sprite["state"] == "running")


class StubRuntime(Runtime):
    def __init__(self, directory: Path, delay: float) -> None:
        self.records = directory / "records"
        self.records.mkdir(parents=True)
        self.path = write_executable(
            directory / "wisp", STUB.format(records=self.records, delay=delay)
        )

    def reset(self) -> None:
        shutil.rmtree(self.records)
        self.records.mkdir()

    def running(self) -> int:
        return len(list(self.records.iterdir()))


def direct_calls(runtime: Runtime, names: list[str], parallelism: int) -> Callable[[], None]:
    """The ideal: the runtime calls alone, ``parallelism`` at a time."""

    def start(name: str) -> None:
        argv = [runtime.path, "start", name, "--memory", "512MiB", "--cpus", "1"]
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True)

    def run() -> None:
        with ThreadPoolExecutor(parallelism) as pool:
            list(pool.map(start, names))

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 starts, 2 rounds (CI)")
    parser.add_argument("--runtime", choices=("stub", "fake"), default="stub")
    parser.add_argument("--starts", type=int, help=f"sprites to start (default {TARGET_STARTS})")
    parser.add_argument("--rounds", type=int, help="rounds at parallelism 10 (default 7; quick 2)")
    args = parser.parse_args()
    starts = args.starts or (20 if args.quick else TARGET_STARTS)
    rounds = args.rounds or (2 if args.quick else 7)
    curve = (5, TARGET_PARALLELISM) if args.quick else (1, 5, TARGET_PARALLELISM, 25)
    precompile()
    sprites = sprites_command()
    names = [f"worker-{i}" for i in range(1, starts + 1)]

    with tempfile.TemporaryDirectory(prefix="sprites-apply-") as tmp:
        root = Path(tmp)
        make = FakeRuntime if args.runtime == "fake" else StubRuntime
        runtime = make(root / "runtime", DELAY)
        project = root / "project"
        (project / ".wreckit").mkdir(parents=True)
        (project / ".wreckit" / "config.json").write_text(
            json.dumps({"agent": {"kind": "sprite", "wispPath": runtime.path, "maxVMs": 1000}})
        )
        (project / "sprites.yaml").write_text(
            "version: 1\nproject: bench\nsprites:\n"
            f"  worker: {{replicas: {starts}, memory: 512MiB, cpus: 1}}\n"
        )
        state_dir = root / "state"
        env = clean_env(SPRITES_STATE_DIR=str(state_dir), XDG_STATE_HOME=str(root / "xdg"))

        def all_started(completed: subprocess.CompletedProcess[bytes]) -> None:
            if runtime.running() != starts:
                raise SystemExit(f"apply left {runtime.running()} of {starts} sprites running")

        tasks: dict[str, Callable[[], None]] = {"help": runner([*sprites, "--help"], env=env)}
        for parallelism in curve:
            tasks[f"ideal-{parallelism}"] = direct_calls(runtime, names, parallelism)
            tasks[f"apply-{parallelism}"] = runner(
                [*sprites, "apply", "--auto-approve", "--parallelism", str(parallelism)],
                cwd=project,
                env=env,
                check=all_started,
            )

        def fresh(label: str) -> None:
            runtime.reset()
            shutil.rmtree(state_dir, ignore_errors=True)

        target = {
            k: v for k, v in tasks.items() if k == "help" or k.endswith(f"-{TARGET_PARALLELISM}")
        }
        for label, task in target.items():  # warm the page cache and check; not timed
            fresh(label)
            task()
        samples = Samples()
        others = {k: v for k, v in tasks.items() if k == "help" or k not in target}
        interleave(others, 1 if args.quick else 2, before=fresh, samples=samples)
        interleave(target, rounds, before=fresh, samples=samples)

    cold = samples.best("help")
    print(
        f"{starts} starts, each {DELAY * 1000:.0f} ms in the {args.runtime} runtime; "
        f"best of {rounds} rounds at parallelism {TARGET_PARALLELISM} "
        f"({1 if args.quick else 2} elsewhere), interleaved; median in brackets"
    )
    print(f"cold start (sprites --help): {samples.ms('help')}")
    print("parallelism  direct calls   ideal (+cold start)   sprites apply        ratio")
    for parallelism in curve:
        calls, apply = samples.best(f"ideal-{parallelism}"), samples.best(f"apply-{parallelism}")
        print(
            f"{parallelism:>11}  {calls * 1000:9.0f} ms  {(calls + cold) * 1000:12.0f} ms"
            f"  {apply * 1000:9.0f} ms ({samples.median(f'apply-{parallelism}') * 1000:.0f})"
            f"  {apply / (calls + cold):8.2f}x"
        )
    ideal = samples.best(f"ideal-{TARGET_PARALLELISM}") + cold
    apply = samples.best(f"apply-{TARGET_PARALLELISM}")
    applies = starts == TARGET_STARTS
    return verdict(
        [
            Check(
                f"sprites apply, {starts} starts at parallelism {TARGET_PARALLELISM}, vs ideal",
                f"{apply * 1000:.0f} / {ideal * 1000:.0f} ms",
                apply / ideal,
                TARGET,
                None if applies else f"is set for {TARGET_STARTS} starts",
            )
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
