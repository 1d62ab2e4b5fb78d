"""``sprites plan`` end to end on a 10,000-sprite manifest, against its floor.

The runtime is a stand-in wisp that prints a prepared JSON array of 10,000
running sprites for ``list --json``. The project's state owns all of them:
half are unchanged in the manifest, a quarter have a changed spec, a quarter
are gone from it and as many new ones added (2,500 each to start, replace
and kill: 7,500 plan lines).

The floor, measured in the same run: the runtime's own ``list --json`` call
plus a bare Python that imports click, yaml and pydantic and parses the
manifest with libyaml's C loader (``yaml.load(..., Loader=yaml.CSafeLoader)``).
Target: ``sprites plan`` <= 1.5 x the floor at 10,000 sprites (at other
sizes, ``--quick`` among them, the ratio is printed as information: the fixed
cost of importing pydantic and building the manifest's models weighs more on
a small manifest). Figures are best-of-N wall times over interleaved rounds
(medians beside them); the package is byte-compiled first, as an install
does. Exit status 1 when the target is missed. ``--profile`` prints where a
``sprites plan`` spends its time instead (cProfile, in a fresh interpreter).

    python benchmarks/plan_e2e.py [--quick] [--sprites N] [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import (
    BASELINE_IMPORTS,
    Check,
    clean_env,
    interleave,
    precompile,
    runner,
    sprites_command,
    verdict,
    write_executable,
)

from reconciler.manifest import parse_manifest
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.state import StateStore

MiB = 1 << 20
PROJECT = "bench"
TARGET = 1.5
TARGET_SPRITES = 10_000


def template(memory: str, cpus: int, index: int) -> str:
    env = ", env: {ROLE: worker}" if index % 8 == 0 else ""
    return f"{{memory: {memory}, cpus: {cpus}, command: [sleep, '3600']{env}}}"


def manifest_text(count: int, *, edited: bool) -> str:
    """The manifest; ``edited`` False is the one the running sprites came from."""
    lines = [
        "# sprites plan benchmark",
        "version: 1",
        f"project: {PROJECT}",
        "defaults: {memory: 512MiB, cpus: 1}",
        "sprites:",
    ]
    for i in range(count):
        kind = i % 4 if edited else 0
        if kind in (0, 1):
            lines.append(f"  sprite-{i}: {template('512MiB', 1, i)}")
        elif kind == 2:
            lines.append(f"  sprite-{i}: {template('1GiB', 2, i)}")
        else:
            lines.append(f"  new-{i}: {template('512MiB', 1, i)}")
    return "\n".join(lines) + "\n"


def fixture(root: Path, count: int) -> tuple[Path, Path, str, dict[str, str]]:
    """Project dir, manifest, stand-in wisp and environment for ``count`` sprites."""
    project = root / "project"
    (project / ".wreckit").mkdir(parents=True)
    manifest = project / "sprites.yaml"
    manifest.write_text(manifest_text(count, edited=True))
    before = parse_manifest(
        manifest_text(count, edited=False).encode(),
        "before.yaml",
        default_memory=512 * MiB,
        default_cpus=1,
    )
    listing = root / "list.json"
    listing.write_text(
        json.dumps(
            [
                {"id": f"id-{i:06x}", "name": f"sprite-{i}", "state": "running", "pid": 10000 + i}
                for i in range(count)
            ]
        )
        + "\n"
    )
    wisp = write_executable(root / "wisp", f"#!/bin/sh\nexec cat '{listing}'\n")
    (project / ".wreckit" / "config.json").write_text(
        json.dumps({"agent": {"kind": "sprite", "wispPath": wisp, "maxVMs": 10 * count}})
    )
    state_dir = root / "state"
    records = {
        name: OwnedRecord(
            name=name,
            status="running",
            spec=want.spec,
            id=f"id-{int(name.split('-')[1]):06x}",
            runtime="wisp",
            started_at=1_800_000_000.0,
        )
        for name, want in before.desired.items()
    }
    StateStore(state_dir).save(ProjectState(project=PROJECT, records=records))
    env = clean_env(SPRITES_STATE_DIR=str(state_dir), XDG_STATE_HOME=str(root / "xdg"))
    return project, manifest, wisp, env


def expect_plan(count: int) -> Callable[[subprocess.CompletedProcess[bytes]], None]:
    quarter = count // 4
    summary = f"Plan: {quarter} to start, {quarter} to replace, {quarter} to kill."

    def check(completed: subprocess.CompletedProcess[bytes]) -> None:
        lines = completed.stdout.decode().splitlines()
        if not lines or lines[-1] != summary:
            raise SystemExit(f"unexpected plan output: {lines[-3:]!r}, wanted {summary!r}")

    return check


def profile(project: Path, manifest: Path, env: dict[str, str]) -> int:
    """cProfile of one ``sprites plan`` in a fresh interpreter, imports included."""
    script = sprites_command()
    if script[0] == sys.executable:
        raise SystemExit("--profile needs the installed sprites script")
    argv = [sys.executable, "-m", "cProfile", "-s", "cumulative", script[0], "plan", "-f"]
    completed = subprocess.run(
        [*argv, str(manifest)], cwd=project, env=env, capture_output=True, text=True
    )
    lines = completed.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "function calls" in line), len(lines))
    print("\n".join(lines[start : start + 60]))
    return completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 sprites, 3 rounds (CI)")
    parser.add_argument("--sprites", type=int, help="sprites in the manifest (default 10,000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9; quick 3)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    args = parser.parse_args()
    count = args.sprites or (1_000 if args.quick else 10_000)
    count -= count % 4
    rounds = args.rounds or (3 if args.quick else 9)
    precompile()

    with tempfile.TemporaryDirectory(prefix="sprites-plan-") as tmp:
        project, manifest, wisp, env = fixture(Path(tmp), count)
        if args.profile:
            return profile(project, manifest, env)
        parse = (
            f"{BASELINE_IMPORTS}\n"
            f"with open({str(manifest)!r}, 'rb') as f:\n"
            "    yaml.load(f.read(), Loader=yaml.CSafeLoader)\n"
        )
        tasks = {
            "list-call": runner([wisp, "list", "--json"], env=env),
            "parse": runner([sys.executable, "-c", parse], env=env),
            "plan": runner(
                [*sprites_command(), "plan", "-f", str(manifest)],
                cwd=project,
                env=env,
                check=expect_plan(count),
            ),
        }
        for task in tasks.values():  # warm the page cache and check the output; not timed
            task()
        samples = interleave(tasks, rounds)

    floor = samples.best("list-call") + samples.best("parse")
    plan = samples.best("plan")
    print(f"sprites: {count} desired x {count} listed; rounds: {rounds}, interleaved")
    print(f"runtime's own list --json call: {samples.ms('list-call')}")
    print(f"python -c '{BASELINE_IMPORTS}' + CSafeLoader parse: {samples.ms('parse')}")
    print(f"floor (the two above, best of each): {floor * 1000:.1f} ms")
    print(f"sprites plan: {samples.ms('plan')}")
    return verdict(
        [
            Check(
                f"sprites plan ({count} sprites) vs floor",
                f"{plan * 1000:.1f} / {floor * 1000:.1f} ms",
                plan / floor,
                TARGET,
                None if count == TARGET_SPRITES else f"is set for {TARGET_SPRITES:,} sprites",
            )
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
