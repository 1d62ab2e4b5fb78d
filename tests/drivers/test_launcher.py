"""The compiled launcher: built once into the user's cache directory where a
C compiler is installed, refused when what is there is not a private file of
ours, and doing what setpriv does for a runtime call (see test_process.py
for the parent-death behaviour itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drivers import launcher, process

needs_compiler = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
)
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory, and the module's memo forgotten around the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    launcher.forget()
    yield tmp_path / "cache" / "sprites" / "bin"
    launcher.forget()


@needs_compiler
@linux
def test_it_is_built_once_into_a_private_cache_directory(cache: Path) -> None:
    built = launcher.find()
    assert built is not None and Path(built).parent == cache
    assert Path(built) == launcher.binary_path()
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert os.stat(built).st_mode & 0o777 == 0o700
    assert [p.name for p in cache.iterdir()] == [Path(built).name]  # no build leftovers
    first = os.stat(built).st_mtime_ns
    launcher.forget()
    assert launcher.find() == built and os.stat(built).st_mtime_ns == first


@needs_compiler
@linux
def test_it_runs_the_command_and_reports_what_it_cannot_run(cache: Path) -> None:
    built = launcher.find()
    assert built is not None
    ran = subprocess.run([built, "sh", "-c", "echo $0 $1", "a", "b"], capture_output=True)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"a b\n", b"")
    missing = subprocess.run([built, "/nonexistent/wisp", "start"], capture_output=True)
    assert missing.returncode == 127 and missing.stdout == b""
    assert missing.stderr == (
        b"sprites-launch: failed to execute /nonexistent/wisp: No such file or directory\n"
    )
    assert process._launcher_failed(missing.stderr)
    bare = subprocess.run([built], capture_output=True)
    assert bare.returncode == 127 and process._launcher_failed(bare.stderr)


@linux
@pytest.mark.parametrize("planted", ["symlink", "writable", "directory"])
def test_what_is_not_a_private_file_of_ours_is_not_run(cache: Path, planted: str) -> None:
    path = launcher.binary_path()
    path.parent.mkdir(parents=True)
    if planted == "symlink":
        path.symlink_to("/bin/true")
    elif planted == "writable":
        path.write_bytes(Path("/bin/true").read_bytes())
        path.chmod(0o777)
    else:
        path.mkdir()
    assert launcher.find() is None
    assert path.is_symlink() == (planted == "symlink")  # left as it was


@linux
def test_without_a_compiler_there_is_none(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert launcher.find() is None
    assert not cache.exists()


@needs_compiler
@linux
def test_a_source_that_does_not_build_leaves_nothing(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "launch.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(launcher, "SOURCE", broken)
    assert launcher.find() is None
    assert list(cache.iterdir()) == []
