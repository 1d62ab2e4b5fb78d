"""Planner at scale: N desired x N observed sprites, planned by the pure planner.

Half the sprites are unchanged, a quarter have a changed spec, and a quarter
are added or removed. Prints the time at N (default 10,000) next to the
1,000-sprite case and their ratio; the planner must stay linear.

Targets: N=10,000 planned in <= 0.1 s; time(10,000) <= 12 x time(1,000).
Exit status 1 when a target is missed. ``--quick`` runs a smaller check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from reconciler import planner
from reconciler.models.manifest import Budget, DesiredSprite
from reconciler.models.observed import Inventory, ObservedSprite
from reconciler.models.state import OwnedRecord

MiB = 1 << 20


def scenario(n: int) -> tuple[dict[str, DesiredSprite], Inventory, dict[str, OwnedRecord]]:
    desired: dict[str, DesiredSprite] = {}
    observed: list[ObservedSprite] = []
    records: dict[str, OwnedRecord] = {}
    for i in range(n):
        name = f"sprite-{i}"
        kind = i % 4
        memory = 512 * MiB
        if kind in (0, 1):  # unchanged
            desired[name] = DesiredSprite.make(name, memory, 1)
            spec = desired[name].spec
        elif kind == 2:  # changed spec
            desired[name] = DesiredSprite.make(name, 2 * memory, 2)
            spec = DesiredSprite.make(name, memory, 1).spec
        else:  # removed from the manifest, and a new one added instead
            spec = DesiredSprite.make(name, memory, 1).spec
            new = f"new-{i}"
            desired[new] = DesiredSprite.make(new, memory, 1)
        observed.append(ObservedSprite(id=f"id-{i}", name=name, state="running", pid=1000 + i))
        records[name] = OwnedRecord(name=name, status="running", spec=spec, id=f"id-{i}")
    return desired, Inventory(sprites=tuple(observed)), records


def once(n: int, data: tuple[dict[str, DesiredSprite], Inventory, dict[str, OwnedRecord]]) -> float:
    desired, inventory, records = data
    began = time.perf_counter()
    result = planner.plan(desired, inventory, records, Budget(), project="bench")
    elapsed = time.perf_counter() - began
    counts = result.counts()
    assert counts["replace"] == n // 4 and counts["kill"] == n // 4 and counts["start"] == n // 4
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    args = parser.parse_args()
    large = 2_000 if args.quick else 10_000
    small = large // 10
    repeat = 3 if args.quick else 7
    small_data, large_data = scenario(small), scenario(large)
    once(small, small_data)  # warm up imports and caches
    smalls, larges = [], []
    for _ in range(repeat):  # interleaved, so machine noise hits both sizes alike
        smalls.append(once(small, small_data))
        larges.append(once(large, large_data))
    # The minimum is the run least disturbed by other load on the machine.
    t_small, t_large = min(smalls), min(larges)
    ratio = t_large / t_small
    limit = 0.1 * large / 10_000
    ok = t_large <= limit and ratio <= 12
    print(
        f"planner {small:>6} sprites: {t_small * 1000:8.1f} ms (best of {repeat}; median {statistics.median(smalls) * 1000:.1f} ms)"
    )
    print(
        f"planner {large:>6} sprites: {t_large * 1000:8.1f} ms (target <= {limit * 1000:.0f} ms; median {statistics.median(larges) * 1000:.1f} ms)"
    )
    print(f"scaling x{large // small}: {ratio:5.2f}x time (target <= 12x)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
