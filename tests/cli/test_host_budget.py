"""maxVMs is host-wide: two projects applied at the same moment may not
together run more sprites than it allows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.cli.harness import Sprites


def _project(root: Path, name: str, count: int) -> Path:
    body = "".join(f"  {name}-{i}: {{}}\n" for i in range(1, count + 1))
    path = root / f"{name}.yaml"
    path.write_text(f"version: 1\nproject: {name}\nsprites:\n{body}")
    return path


def _sprites_command() -> list[str]:
    found = shutil.which("sprites")
    return [found] if found else [sys.executable, "-m", "reconciler.cli"]


def test_two_projects_applied_at_once_never_exceed_max_vms(sprites: Sprites) -> None:
    sprites.write_config({"maxVMs": 5})
    sprites.fake.script(delay={"start": 0.3})
    manifests = [_project(sprites.root, "alpha", 3), _project(sprites.root, "beta", 3)]
    env = dict(os.environ, SPRITES_STATE_DIR=str(sprites.state_dir))
    procs = [
        subprocess.Popen(
            [*_sprites_command(), "apply", "-f", str(path), "--auto-approve"],
            cwd=sprites.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in manifests
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)

    assert sprites.fake.peak()["running"] <= 5
    assert codes == [0, 1], results
    refused = next(err for (_, err), proc in zip(results, procs, strict=True) if proc.returncode == 1)
    assert "maxVMs exceeded" in refused
    assert "Traceback" not in refused
    assert len(sprites.running()) == 3
