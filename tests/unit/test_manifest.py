"""Manifest loading: the shipped example, and an error with file:line:col that
names the field for every way a manifest can be wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import ManifestError
from reconciler.manifest import load_manifest, parse_manifest

MiB, GiB = 1 << 20, 1 << 30
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sprites.yaml"
HEAD = "version: 1\nproject: demo\n"


def load(text: str | bytes, default_memory: int = 512 * MiB, default_cpus: int = 1) -> object:
    raw = text.encode() if isinstance(text, str) else text
    return parse_manifest(
        raw, "sprites.yaml", default_memory=default_memory, default_cpus=default_cpus
    )


def error_of(text: str | bytes) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load(text)
    return caught.value


def test_the_shipped_example_loads_as_documented() -> None:
    loaded = load_manifest(EXAMPLE, default_memory=256 * MiB, default_cpus=4)
    assert loaded.project == "demo"
    assert {name: (s.memory, s.cpus) for name, s in loaded.desired.items()} == {
        "agent-1": (GiB, 2),
        "agent-2": (512 * MiB, 1),
        "worker-1": (512 * MiB, 1),
        "worker-2": (512 * MiB, 1),
        "worker-3": (512 * MiB, 1),
    }
    assert list(loaded.desired) == ["agent-1", "agent-2", "worker-1", "worker-2", "worker-3"]
    assert loaded.desired["worker-2"].template == "worker"
    limits = loaded.manifest.limits
    assert limits is not None
    assert (limits.max_vms, limits.memory, limits.cpus) == (5, 4 * GiB, 8)
    assert len(loaded.digest) == 64


def test_defaults_fall_back_to_the_config() -> None:
    loaded = load(
        HEAD + "sprites:\n  a: {}\n  b: {cpus: '3'}\n", default_memory=GiB, default_cpus=2
    )
    assert {n: (s.memory, s.cpus) for n, s in loaded.desired.items()} == {  # type: ignore[attr-defined]
        "a": (GiB, 2),
        "b": (GiB, 3),
    }


def test_manifest_defaults_beat_the_config() -> None:
    loaded = load(HEAD + "defaults: {memory: 2G, cpus: 2}\nsprites:\n  a: {}\n")
    assert loaded.desired["a"].spec == {"memory": 2 * GiB, "cpus": 2}  # type: ignore[attr-defined]


def test_command_and_env_are_part_of_the_spec() -> None:
    loaded = load(HEAD + "sprites:\n  a:\n    command: [sleep, '60']\n    env: {B: '2', A: '1'}\n")
    assert loaded.desired["a"].spec == {  # type: ignore[attr-defined]
        "memory": 512 * MiB,
        "cpus": 1,
        "command": ["sleep", "60"],
        "env": {"A": "1", "B": "2"},
    }


def test_the_digest_follows_the_bytes() -> None:
    a = load(HEAD + "sprites: {a: {}}\n")
    b = load(HEAD + "sprites: {a: {}}  # a comment\n")
    assert a.digest != b.digest  # type: ignore[attr-defined]
    assert a.digest == load(HEAD + "sprites: {a: {}}\n").digest  # type: ignore[attr-defined]


# Each case: the manifest text, where the error is, the field it names (None
# when the file has no field yet), and words the message must contain.
ERRORS = {
    "unknown top-level field": (
        HEAD + "sprites: {}\nextra: 1\n",
        "4:1",
        "extra",
        "unknown field; expected one of version",
    ),
    "unknown sprite field": (
        HEAD + "sprites:\n  a:\n    memroy: 1GiB\n",
        "5:5",
        "sprites.a.memroy",
        "unknown field; expected one of memory, cpus, replicas",
    ),
    "unknown defaults field": (
        HEAD + "defaults:\n  ram: 1GiB\nsprites: {}\n",
        "4:3",
        "defaults.ram",
        "expected one of memory, cpus",
    ),
    "unknown limits field": (
        HEAD + "limits:\n  vms: 3\nsprites: {}\n",
        "4:3",
        "limits.vms",
        "expected one of maxVMs, memory, cpus",
    ),
    "size with a bad unit": (
        HEAD + "sprites:\n  a: {memory: 512XB}\n",
        "4:15",
        "sprites.a.memory",
        "invalid size '512XB': expected a size such as 512MiB",
    ),
    "negative size": (
        HEAD + "sprites:\n  a:\n    memory: -1GiB\n",
        "5:13",
        "sprites.a.memory",
        "invalid size '-1GiB'",
    ),
    "zero size": (
        HEAD + "sprites:\n  a:\n    memory: 0\n",
        "5:13",
        "sprites.a.memory",
        "must be greater than zero",
    ),
    "size below a sprite's minimum": (
        HEAD + "sprites:\n  a:\n    memory: 1KiB\n",
        "5:13",
        "sprites.a.memory",
        "at least 1MiB",
    ),
    "bad limits size": (
        HEAD + "limits:\n  memory: 4XB\nsprites: {}\n",
        "4:11",
        "limits.memory",
        "invalid size",
    ),
    "zero replicas": (
        HEAD + "sprites:\n  w:\n    replicas: 0\n",
        "5:15",
        "sprites.w.replicas",
        "must be at least 1, got 0",
    ),
    "replicas as a string": (
        HEAD + "sprites:\n  w:\n    replicas: '3'\n",
        "5:15",
        "sprites.w.replicas",
        "expected a whole number",
    ),
    "fractional cpus": (
        HEAD + "sprites:\n  w:\n    cpus: 1.5\n",
        "5:11",
        "sprites.w.cpus",
        "expected a positive integer",
    ),
    "zero maxVMs": (
        HEAD + "limits:\n  maxVMs: 0\nsprites: {}\n",
        "4:11",
        "limits.maxVMs",
        "at least 1",
    ),
    "wrong version": (HEAD.replace("1", "2") + "sprites: {}\n", "1:10", "version", "expected 1"),
    "version as a string": ("version: '1'\nproject: demo\n", "1:10", "version", "expected 1"),
    "missing project": ("version: 1\nsprites: {}\n", "1:1", "project", "missing required field"),
    "bad project name": ("version: 1\nproject: Demo\n", "2:10", "project", "invalid name 'Demo'"),
    "bad sprite name": (
        HEAD + "sprites:\n  Agent_1: {}\n",
        "4:3",
        "sprites.Agent_1",
        "invalid name 'Agent_1'",
    ),
    "sprites as a list": (HEAD + "sprites:\n  - a\n", "4:3", "sprites", "expected a mapping"),
    "a sprite as a scalar": (HEAD + "sprites:\n  a: 3\n", "4:6", "sprites.a", "expected a mapping"),
    "bad environment variable": (
        HEAD + "sprites:\n  a:\n    env: {1X: y}\n",
        "5:10",
        "sprites.a.env",
        "invalid environment variable name '1X'",
    ),
    "duplicate sprite": (
        HEAD + "sprites:\n  a: {}\n  a: {}\n",
        "5:3",
        "sprites.a",
        "duplicate key 'a'",
    ),
    "duplicate top-level key": (
        HEAD + "version: 1\nsprites: {}\n",
        "3:1",
        "version",
        "duplicate key 'version'",
    ),
    "duplicate nested key": (
        HEAD + "sprites:\n  a:\n    cpus: 1\n    cpus: 2\n",
        "6:5",
        "sprites.a.cpus",
        "duplicate key 'cpus'",
    ),
    "anchor and alias": (
        HEAD + "defaults: &d {memory: 1GiB}\nsprites:\n  a: *d\n",
        "3:11",
        "defaults",
        "anchors and aliases are not allowed",
    ),
    "anchor alone": (
        HEAD + "sprites:\n  a: &x {cpus: 1}\n",
        "4:6",
        "sprites.a",
        "anchors and aliases are not allowed",
    ),
    "merge key": (
        HEAD + "sprites:\n  a: {<<: {memory: 1GiB}}\n",
        "4:7",
        "sprites.a",
        "merge keys (<<) are not allowed",
    ),
    "python object tag": (
        HEAD + "sprites:\n  a: !!python/object:os.system {}\n",
        "4:6",
        "sprites.a",
        "python/object:os.system' is not allowed",
    ),
    "python name tag": (
        "version: 1\nproject: !!python/name:os.system demo\n",
        "2:10",
        "project",
        "is not allowed",
    ),
    "custom tag": (
        HEAD + "sprites:\n  a:\n    memory: !size 1GiB\n",
        "5:13",
        "sprites.a.memory",
        "the tag '!size' is not allowed",
    ),
    "replica name collision": (
        HEAD + "sprites:\n  w-1: {}\n  w: {replicas: 2}\n",
        "5:6",
        "sprites.w",
        "the sprite name 'w-1' is already used by sprites.w-1",
    ),
    "replica name too long": (
        HEAD + "sprites:\n  " + "a" * 62 + ": {replicas: 10}\n",
        "4:67",
        "sprites." + "a" * 62 + ".replicas",
        "longer than 63 characters",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_name_file_line_column_and_field(case: str) -> None:
    text, where, field, words = ERRORS[case]
    error = error_of(text)
    assert error.user_message.startswith(f"sprites.yaml:{where}: {field}: "), error.user_message
    assert error.field == field
    assert words in error.user_message
    assert str(error.position) == f"sprites.yaml:{where}"


SYNTAX = {
    "empty file": (b"", "1:1", "the manifest is empty"),
    "only comments": (b"# nothing here\n", "1:1", "the manifest is empty"),
    "a list at the root": (b"- a\n- b\n", "1:1", "expected a mapping with version"),
    "a scalar at the root": (b"hello\n", "1:1", "expected a mapping with version"),
    "a tab for indentation": (
        HEAD.encode() + b"sprites:\n\ta: {}\n",
        "4:1",
        "indent YAML with spaces, not tabs",
    ),
    "broken flow mapping": (HEAD.encode() + b"sprites: {a: [}\n", "3:15", "invalid YAML"),
    "invalid UTF-8": (b"version: 1\nproject: d\xffemo\n", "2:11", "not valid UTF-8"),
    "a NUL byte": (b"version: 1\x00\n", "1:11", "NUL byte"),
    "two documents": (HEAD.encode() + b"---\nversion: 1\n", "3:1", "invalid YAML"),
}


@pytest.mark.parametrize("case", list(SYNTAX), ids=list(SYNTAX))
def test_unreadable_files_are_located_too(case: str) -> None:
    raw, where, words = SYNTAX[case]
    error = error_of(raw)
    assert error.user_message.startswith(f"sprites.yaml:{where}: "), error.user_message
    assert words in error.user_message
    assert error.render().startswith("❌ sprites.yaml:")


def test_several_problems_report_the_first_and_count_the_rest() -> None:
    error = error_of(HEAD + "sprites:\n  a: {memory: 1XB, cpus: 0}\n")
    assert error.user_message.startswith("sprites.yaml:4:15: sprites.a.memory: invalid size")
    assert error.hint == "(and 1 more problem in this file)"


def test_a_billion_laughs_is_refused_before_it_expands() -> None:
    lol = HEAD + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lol += f"{i}: &{i} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    error = error_of(lol)
    assert "anchors and aliases are not allowed" in error.user_message
    assert error.user_message.startswith("sprites.yaml:3:4: a: ")


def test_anchor_like_text_inside_strings_is_fine() -> None:
    loaded = load(HEAD + "sprites:\n  a:\n    command: [sh, -c, 'ls * && echo &x']\n")
    assert loaded.desired["a"].command == ("sh", "-c", "ls * && echo &x")  # type: ignore[attr-defined]


def test_a_missing_manifest_says_how_to_give_one(
    tmp_path: Path, manifest_file: Callable[..., Path]
) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "nope.yaml", default_memory=MiB, default_cpus=1)
    assert caught.value.user_message == f"{tmp_path / 'nope.yaml'}: manifest not found"
    assert caught.value.hint is not None and "-f" in caught.value.hint
    with pytest.raises(ManifestError, match="is a directory"):
        load_manifest(tmp_path, default_memory=MiB, default_cpus=1)
    path = manifest_file(HEAD + "sprites:\n  a: {memory: 1XB}\n", name="bad.yaml")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, default_memory=MiB, default_cpus=1)
    assert caught.value.user_message.startswith(f"{path}:4:15: sprites.a.memory: ")
