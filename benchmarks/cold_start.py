"""Cold start: ``sprites --help`` and ``sprites list --json`` against a bare
Python that imports click, yaml and pydantic, measured in the same run.

``list --json`` runs against three runtimes with a small inventory:

- a stand-in wisp (a shell script printing a prepared JSON array), whose own
  cost is next to nothing, so the figure is sprites' own start-up;
- the built-in runtime (``--runtime builtin``), when it can run here;
- the test suite's fake wisp, which is itself a Python program: its own
  ``list --json`` call is timed alone and added to the baseline.

Target: each <= 1.0 x the baseline. Figures are best-of-N wall times over
interleaved rounds (medians beside them); the package is byte-compiled first,
as an install does. Exit status 1 when a target is missed.

    python benchmarks/cold_start.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import (
    BASELINE_IMPORTS,
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

INVENTORY = [
    {"id": f"sprite-{i:06x}", "name": f"agent-{i}", "state": "running", "pid": 4000 + i}
    for i in range(1, 4)
]


def fake_wisp(directory: Path) -> str | None:
    """The test suite's fake wisp with the same small inventory, if the
    checkout's tests are importable."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.helpers.fakewisp import FakeWisp
    except ImportError:
        return None
    fake = FakeWisp(directory)
    for sprite in INVENTORY:
        fake.add_sprite(str(sprite["name"]), pid=int(str(sprite["pid"])))
    return fake.path


def builtin_usable() -> str | None:
    """None when the built-in runtime can run here, else why not."""
    try:
        from reconciler.drivers.builtin import unavailable_reason
    except ImportError as exc:
        return str(exc)
    return unavailable_reason()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds, for CI smoke runs")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 30; quick 5)")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 30)
    precompile()
    sprites = sprites_command()

    with tempfile.TemporaryDirectory(prefix="sprites-cold-") as tmp:
        root = Path(tmp)
        stub = write_executable(
            root / "wisp",
            "#!/bin/sh\nprintf '%s\\n' '" + json.dumps(INVENTORY) + "'\n",
        )
        fake = fake_wisp(root / "fakewisp")
        env = clean_env(SPRITES_STATE_DIR=str(root / "state"), XDG_STATE_HOME=str(root / "xdg"))
        configs: dict[str, Path] = {}
        for label, wisp in (("stub", stub), ("fake", fake)):
            if wisp is None:
                continue
            project = root / label
            (project / ".wreckit").mkdir(parents=True)
            (project / ".wreckit" / "config.json").write_text(
                json.dumps({"agent": {"kind": "sprite", "wispPath": wisp}})
            )
            configs[label] = project
        tasks = {
            "baseline": runner([sys.executable, "-c", BASELINE_IMPORTS], env=env),
            "help": runner([*sprites, "--help"], env=env),
            "list-stub": runner([*sprites, "list", "--json"], cwd=configs["stub"], env=env),
        }
        why_not = builtin_usable()
        if why_not is None:
            tasks["list-builtin"] = runner(
                [*sprites, "--runtime", "builtin", "list", "--json"], cwd=configs["stub"], env=env
            )
        if fake is not None:
            tasks["list-fake"] = runner([*sprites, "list", "--json"], cwd=configs["fake"], env=env)
            tasks["fake-call"] = runner([fake, "list", "--json"], env=env)
        for task in tasks.values():  # warm the page cache; not timed
            task()
        samples: Samples = interleave(tasks, rounds)

    base = samples.best("baseline")
    print(f"rounds: {rounds}, interleaved; best of {rounds} wall times (median in brackets)")
    print(f"baseline  python -c '{BASELINE_IMPORTS}': {samples.ms('baseline')}")
    print(f"sprites --help: {samples.ms('help')}")
    print(f"sprites list --json, stand-in wisp: {samples.ms('list-stub')}")
    checks = [
        Check(
            "sprites --help vs baseline", f"{samples.ms('help')}", samples.best("help") / base, 1.0
        ),
        Check(
            "sprites list --json (stand-in wisp) vs baseline",
            f"{samples.best('list-stub') * 1000:.1f} / {base * 1000:.1f} ms",
            samples.best("list-stub") / base,
            1.0,
        ),
    ]
    if "list-builtin" in samples.times:
        print(f"sprites list --json, built-in runtime: {samples.ms('list-builtin')}")
        checks.append(
            Check(
                "sprites list --json (built-in runtime) vs baseline",
                f"{samples.best('list-builtin') * 1000:.1f} / {base * 1000:.1f} ms",
                samples.best("list-builtin") / base,
                1.0,
            )
        )
    else:
        print(f"built-in runtime not measured: {why_not}")
    if "list-fake" in samples.times:
        call = samples.best("fake-call")
        print(f"sprites list --json, fake wisp: {samples.ms('list-fake')}")
        print(f"the fake wisp's own list --json call: {samples.ms('fake-call')}")
        checks.append(
            Check(
                "sprites list --json (fake wisp) vs baseline + the fake's own call",
                f"{samples.best('list-fake') * 1000:.1f} / {(base + call) * 1000:.1f} ms",
                samples.best("list-fake") / (base + call),
                1.0,
            )
        )
    return verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
