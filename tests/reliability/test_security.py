"""Security: no shell anywhere, names validated before any argv, private
state created without a race, a safe and bounded YAML loader, and no symlink
followed at a state path."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reconciler
from reconciler import state as state_mod
from reconciler.drivers.base import StartRequest
from reconciler.drivers.wisp import WispDriver
from reconciler.engine import Engine
from reconciler.errors import InvalidNameError, ManifestError, RuntimeCallError, StateError
from reconciler.manifest import parse_manifest
from reconciler.models.desired import canonical_spec
from reconciler.models.state import OwnedRecord, ProjectState
from reconciler.state import StateStore
from tests.reliability.conftest import Project

PACKAGE = Path(reconciler.__file__).resolve().parent
MiB = 1 << 20

# -- no shell ---------------------------------------------------------------

FORBIDDEN_PY = {
    r"shell\s*=\s*True": "a shell",
    r"\bos\.system\s*\(": "a shell",
    r"\bos\.popen\s*\(": "a shell",
    r"\bsubprocess\.getoutput\s*\(": "a shell",
    r"\bsubprocess\.getstatusoutput\s*\(": "a shell",
    r"\bos\.exec[lv]p?e?\s*\(\s*['\"]/bin/sh": "a shell",
    r"\byaml\.(unsafe_|full_)?load\s*\(": "an unsafe YAML loader",
    r"\byaml\.(Unsafe|Full)?Loader\b": "an unsafe YAML loader",
    r"\bpickle\.loads?\s*\(": "unpickling",
    r"\beval\s*\(": "eval",
}
FORBIDDEN_C = {
    r"\bsystem\s*\(": "a shell",
    r"\bpopen\s*\(": "a shell",
}


def sources(*suffixes: str) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in suffixes and "__pycache__" not in path.parts:
            yield path


def test_the_package_never_uses_a_shell_or_an_unsafe_loader() -> None:
    found = []
    checked = 0
    for suffixes, patterns in (((".py",), FORBIDDEN_PY), ((".c", ".h"), FORBIDDEN_C)):
        for path in sources(*suffixes):
            checked += 1
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0] if path.suffix == ".py" else line
                for pattern, what in patterns.items():
                    if re.search(pattern, code):
                        found.append(f"{path.relative_to(PACKAGE)}:{number}: {what}: {line.strip()}")
    assert checked > 10
    assert found == []


def test_the_grep_would_catch_a_shell() -> None:
    assert re.search(next(iter(FORBIDDEN_PY)), "subprocess.run(cmd, shell = True)")
    assert re.search(r"\bos\.system\s*\(", "os.system ('ls')")


# -- names validated before any argv ----------------------------------------

HOSTILE = [
    "Agent",
    "has space",
    "a;rm -rf /",
    "$(touch pwned)",
    "`id`",
    "a|b",
    "a&&b",
    "../etc/passwd",
    "a/b",
    "a" * 64,
    "\u0430gent",  # Cyrillic a
    "agent\u200b",  # zero-width space
    "\uff41gent",  # fullwidth a
    "-rf",
    "--memory=1GiB",
    "-",
    "",
    "a\nb",
    "a\tb",
    "*",
    "~root",
]
HOSTILE_BYTES = ["a\x00b"]


@pytest.fixture
def wisp_driver(project: Project) -> WispDriver:
    return WispDriver(project.fake.path, timeout=10)


@pytest.mark.parametrize("name", HOSTILE + HOSTILE_BYTES, ids=repr)
def test_every_wisp_driver_entry_point_refuses_a_hostile_name(
    project: Project, wisp_driver: WispDriver, name: str
) -> None:
    calls: list[Any] = [
        lambda: wisp_driver.start(StartRequest(name=name, memory=512 * MiB, cpus=1)),
        lambda: wisp_driver.kill(name),
        lambda: wisp_driver.attach(name, interactive=False),
        lambda: wisp_driver.attach(name, interactive=True),
        lambda: wisp_driver.logs(name),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError):
            call()
    assert project.fake.calls() == []


@pytest.mark.parametrize("name", HOSTILE + HOSTILE_BYTES, ids=repr)
def test_every_engine_entry_point_refuses_a_hostile_name(project: Project, name: str) -> None:
    engine = Engine(config_path=project.config_path, state_dir=project.state_dir)
    calls: list[Any] = [
        lambda: engine.start(name),
        lambda: engine.kill(name),
        lambda: engine.attach(name, interactive=False),
        lambda: engine.logs(name),
        lambda: engine.force_unlock(name),
        lambda: engine.plan(project=name, destroy=True),
        lambda: engine.apply(project=name, destroy=True, approve=lambda plan: True),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError):
            call()
    assert project.fake.calls() == []
    assert not project.state_dir.exists() or not any(project.state_dir.rglob("*.lock"))


def builtin_driver_or_skip(state_dir: Path) -> Any:
    try:
        from reconciler.drivers import builtin
    except ImportError as exc:
        pytest.skip(f"the built-in runtime is not importable: {exc}")
    reason = builtin.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the built-in runtime cannot run here: {reason}")
    return builtin.make_driver(state_dir, timeout=30)


@pytest.mark.parametrize("name", HOSTILE + HOSTILE_BYTES, ids=repr)
def test_every_builtin_driver_entry_point_refuses_a_hostile_name(
    tmp_path: Path, name: str
) -> None:
    driver = builtin_driver_or_skip(tmp_path / "state")
    calls: list[Any] = [
        lambda: driver.start(StartRequest(name=name, memory=64 * MiB, cpus=1)),
        lambda: driver.kill(name),
        lambda: driver.attach(name, interactive=False),
        lambda: driver.logs(name),
    ]
    for call in calls:
        # Drivers word failures as ``Failed to <op> Sprite: <reason>``.
        with pytest.raises((InvalidNameError, RuntimeCallError), match="invalid name"):
            call()
    assert driver.list().sprites == ()
    created = [p.name for p in (tmp_path / "state").rglob("*")]
    assert not any(name and name in part for part in created), created


CLI_COMMANDS = [
    ("start",),
    ("kill",),
    ("attach",),
    ("logs",),
    ("force-unlock",),
    ("destroy", "--auto-approve", "-p"),
    ("start", "--json"),
    ("kill", "--json"),
]


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=" ".join)
def test_every_cli_command_refuses_hostile_names(project: Project, command: tuple[str, ...]) -> None:
    for name in HOSTILE:
        if command[0] == "destroy":
            argv = [*command, name]
        else:
            argv = [*command, "--", name]
        result = project.run(*argv)
        assert result.code == 1, (name, result.output)
        assert "invalid name" in result.output.lower(), (name, result.output)
        assert "Traceback" not in result.output
    assert project.fake.calls() == []
    assert not (project.root / "pwned").exists()
    leaked = [p for p in project.root.parent.rglob("*") if p.name in ("passwd", "pwned")]
    assert leaked == []


# -- private state, created without a race ----------------------------------


def modes(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): stat.S_IMODE(p.lstat().st_mode)
        for p in [directory, *directory.rglob("*")]
    }


def test_state_files_are_0600_and_dirs_0700_even_under_umask_0(project: Project) -> None:
    project.manifest({"a": {}, "b": {}})
    applied = project.run("apply", "--auto-approve", umask=0)
    assert applied.code == 0, applied.output
    saved = project.run("plan", "-out", str(project.root / "saved.plan"), umask=0)
    assert saved.code == 0
    found = modes(project.state_dir)
    assert {"projects", "projects/demo.json", "projects/demo.lock"} <= set(found)
    for path, mode in found.items():
        is_dir = (project.state_dir / path).is_dir()
        assert mode == (0o700 if is_dir else 0o600), (path, oct(mode))
    assert stat.S_IMODE((project.root / "saved.plan").stat().st_mode) == 0o600


def test_a_loose_state_directory_is_tightened(project: Project) -> None:
    (project.state_dir / "projects").mkdir(parents=True)
    project.state_dir.chmod(0o755)
    (project.state_dir / "projects").chmod(0o777)
    project.manifest({"a": {}})
    assert project.apply().code == 0
    assert stat.S_IMODE(project.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((project.state_dir / "projects").stat().st_mode) == 0o700


def test_state_files_are_created_private_and_exclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file the store creates is opened with its final mode (0600),
    O_NOFOLLOW, and for a state write O_EXCL: no moment when it is readable
    by others, no writing through a planted file or link."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(state_mod.os, "open", spy)
    store = StateStore(tmp_path / "state")
    with store.lock("demo", "apply"):
        store.save(ProjectState(project="demo"))
    created = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert created, opened
    for path, flags, mode in created:
        assert mode == 0o600, (path, oct(mode))
        assert flags & os.O_NOFOLLOW, path
        if path.endswith(".tmp"):
            assert flags & os.O_EXCL, path


def test_a_planted_temp_file_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    store = StateStore(tmp_path / "state")
    store.save(ProjectState(project="demo"))
    monkeypatch.setattr(state_mod, "_nonce", lambda: "guessed1")
    planted = store.projects_dir / f".demo.json.{os.getpid()}.guessed1.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        store.save(ProjectState(project="demo"))
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()


def test_builtin_console_sockets_are_0600(project: Project) -> None:
    driver = builtin_driver_or_skip(project.state_dir)
    del driver
    env = project.env()
    started = project.run("--runtime", "builtin", "start", "sec-console", env=env, umask=0)
    try:
        assert started.code == 0, started.output
        sockets = [p for p in project.state_dir.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
        assert sockets, "the built-in runtime made no console socket"
        for path in sockets:
            assert stat.S_IMODE(path.lstat().st_mode) == 0o600, path
            parent = path.parent
            assert stat.S_IMODE(parent.stat().st_mode) & 0o077 == 0, parent
    finally:
        project.run("--runtime", "builtin", "kill", "sec-console", env=env)


# -- the YAML loader --------------------------------------------------------


def parse(text: str | bytes) -> Any:
    raw = text.encode() if isinstance(text, str) else text
    return parse_manifest(raw, "m.yaml", default_memory=512 * MiB, default_cpus=1)


def test_yaml_tags_never_construct_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f'!!python/object/apply:os.system ["touch {marker}"]',
        f'!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
        "!!python/name:os.system",
        "!!python/module:os",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!!omap [a: 1]",
    ]
    for payload in payloads:
        with pytest.raises(ManifestError, match="is not allowed in a manifest"):
            parse(f"version: 1\nproject: demo\nsprites:\n  a: {payload}\n")
    assert not marker.exists()


def test_yaml_bombs_and_depth_are_refused_before_they_grow() -> None:
    laughs = "version: 1\nproject: demo\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9 if p else ['"lol"'] * 9) + "]\n"
        for c, p in zip("abcdefghijklm", [None, *"abcdefghijkl"], strict=True)
    )
    with pytest.raises(ManifestError, match="anchors and aliases"):
        parse(laughs)
    for deep in ("[" * 300_000 + "]" * 300_000, "{a: " * 100_000 + "1" + "}" * 100_000):
        with pytest.raises(ManifestError, match="nested more than"):
            parse("version: 1\nproject: demo\nsprites: " + deep + "\n")
    block = "version: 1\nproject: demo\nsprites:\n" + "".join(
        " " * (i + 2) + f"k{i}:\n" for i in range(500)
    )
    with pytest.raises(ManifestError, match="nested more than"):
        parse(block)


def test_the_loader_reads_a_bounded_amount() -> None:
    from reconciler.manifest import MAX_MANIFEST_BYTES, load_manifest

    # A file that never ends must not be read whole.
    zero = Path("/dev/zero")
    if not zero.exists():
        pytest.skip("/dev/zero is not available")
    with pytest.raises(ManifestError) as caught:
        load_manifest(zero, default_memory=512 * MiB, default_cpus=1)
    assert "too large" in str(caught.value) or "NUL" in str(caught.value)
    assert MAX_MANIFEST_BYTES <= 64 << 20


# -- symlinks at state paths ------------------------------------------------


def plant_owned_state(target: Path) -> None:
    """A believable state file that claims ``theirs``: if it were read, an
    apply of an empty manifest would kill someone else's sprite."""
    state = ProjectState(project="demo")
    state.records["theirs"] = OwnedRecord(
        name="theirs", status="running", spec=canonical_spec(512 * MiB, 1)
    )
    target.write_text(json.dumps(state.to_json()))


@pytest.mark.parametrize("which", ["demo.json", "demo.lock"])
def test_a_symlink_at_a_state_path_is_neither_read_nor_written_through(
    project: Project, which: str
) -> None:
    project.fake.add_sprite("theirs")
    project.manifest({})
    target = project.root / "elsewhere.json"
    plant_owned_state(target)
    before = target.read_bytes()
    projects = project.state_dir / "projects"
    projects.mkdir(parents=True, mode=0o700)
    (projects / which).symlink_to(target)
    # plan reads the state but never takes the lock.
    commands = [("apply", "--auto-approve"), ("destroy", "--auto-approve")]
    if which == "demo.json":
        commands.append(("plan",))
    for argv in commands:
        result = project.run(*argv)
        assert result.code == 1, result.output
        assert "refusing to follow a symlink" in result.stderr, result.output
        assert "Traceback" not in result.output
    assert target.read_bytes() == before
    assert (projects / which).is_symlink()
    assert "theirs" in project.fake.names()
    assert all(call[0] not in ("start", "kill") for call in project.fake.calls())


def test_a_symlink_planted_as_the_state_dir_file_by_another_process_is_refused(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state")
    store.save(ProjectState(project="demo"))
    path = store.state_path("demo")
    target = tmp_path / "target.json"
    plant_owned_state(target)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(StateError, match="refusing to follow a symlink"):
        store.load("demo")
    before = target.read_bytes()
    # A save replaces the link itself (rename), never the file it points to.
    store.save(ProjectState(project="demo"))
    assert target.read_bytes() == before
    assert not path.is_symlink()


def test_force_unlock_never_follows_a_linked_lock(project: Project) -> None:
    target = project.root / "target"
    target.write_text("keep\n")
    projects = project.state_dir / "projects"
    projects.mkdir(parents=True, mode=0o700)
    (projects / "demo.lock").symlink_to(target)
    result = project.run("force-unlock", "demo")
    assert result.code == 1 and "refusing to follow a symlink" in result.stderr
    assert target.read_text() == "keep\n"


def test_subprocesses_get_no_shell_metacharacter_interpretation(project: Project) -> None:
    """End to end: a manifest cannot smuggle a command into a runtime call
    (names are refused), and env/command values reach no shell."""
    marker = project.root / "pwned"
    project.manifest(
        {"a": {"command": ["sh", "-c", f"touch {marker}"], "env": {"X": f"$(touch {marker})"}}}
    )
    result = project.apply()
    assert result.code == 0, result.output
    assert not marker.exists()
    argv = [c for c in project.fake.calls() if c[0] == "start"]
    assert argv == [["start", "a", "--memory", "512MiB", "--cpus", "1"]]
