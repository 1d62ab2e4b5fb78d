"""The sandbox settings of a sprite in the manifest (workdir, user, mounts,
network, keep, pids): what lands in the canonical spec, and an error at
file:line:col naming the field for every way they can be wrong."""

from __future__ import annotations

import pytest

from reconciler.errors import ManifestError
from reconciler.manifest import parse_manifest
from reconciler.models import sandbox
from reconciler.models.plan import Action, Change, Reason
from reconciler.views.plan import describe

MiB = 1 << 20
HEAD = "version: 1\nproject: demo\nsprites:\n"


def spec_of(body: str) -> dict[str, object]:
    loaded = parse_manifest(
        (HEAD + body).encode(), "sprites.yaml", default_memory=512 * MiB, default_cpus=1
    )
    spec: dict[str, object] = loaded.desired["a"].spec
    return spec


def error_of(body: str) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        spec_of(body)
    return caught.value


def test_settings_land_in_the_spec_when_set() -> None:
    spec = spec_of(
        "  a:\n"
        "    workdir: /work/app\n"
        "    user: root\n"
        "    network: host\n"
        "    keep: true\n"
        "    pids: 64\n"
        "    mounts:\n"
        "      - {source: /srv/data, target: /data}\n"
        "      - {source: /srv/out, target: /work/out, readOnly: false}\n"
    )
    assert spec == {
        "memory": 512 * MiB,
        "cpus": 1,
        "workdir": "/work/app",
        "user": "root",
        "network": "host",
        "keep": True,
        "pids": 64,
        "mounts": [
            {"source": "/srv/data", "target": "/data", "readOnly": True},
            {"source": "/srv/out", "target": "/work/out", "readOnly": False},
        ],
    }


def test_defaults_leave_the_spec_as_it_was() -> None:
    """A sprite recorded before these settings existed must not look changed
    when its manifest spells out their defaults."""
    plain = {"memory": 512 * MiB, "cpus": 1}
    assert spec_of("  a: {}\n") == plain
    assert spec_of("  a: {network: none, keep: false, pids: 512, mounts: []}\n") == plain


def test_a_numeric_user_is_kept_as_text() -> None:
    assert spec_of("  a: {user: 1000}\n")["user"] == "1000"
    assert spec_of("  a: {user: '2000:sprite'}\n")["user"] == "2000:sprite"


ERRORS = {
    "unknown user": ("  a:\n    user: alice\n", "5:11", "sprites.a.user", "unknown user 'alice'"),
    "uid out of range": ("  a:\n    user: 70000\n", "5:11", "sprites.a.user", "ids go up to 65535"),
    "relative workdir": (
        "  a:\n    workdir: work\n",
        "5:14",
        "sprites.a.workdir",
        "expected an absolute path",
    ),
    "unnormalized workdir": (
        "  a:\n    workdir: /work/../etc\n",
        "5:14",
        "sprites.a.workdir",
        "expected a normalized path",
    ),
    "unknown network": (
        "  a:\n    network: bridge\n",
        "5:14",
        "sprites.a.network",
        "'none' or 'host'",
    ),
    "keep not a boolean": (
        "  a:\n    keep: 'yes'\n",
        "5:11",
        "sprites.a.keep",
        "expected true or false",
    ),
    "pids zero": ("  a:\n    pids: 0\n", "5:11", "sprites.a.pids", "must be at least 1"),
    "relative mount source": (
        "  a:\n    mounts:\n      - {source: data, target: /data}\n",
        "6:18",
        "sprites.a.mounts.0.source",
        "expected an absolute path",
    ),
    "mount over /usr": (
        "  a:\n    mounts:\n      - {source: /srv, target: /usr/local}\n",
        "6:32",
        "sprites.a.mounts.0.target",
        "/usr/local is one of the sprite's own mounts",
    ),
    "mount over the root": (
        "  a:\n    mounts:\n      - {source: /srv, target: /}\n",
        "6:32",
        "sprites.a.mounts.0.target",
        "one of the sprite's own mounts",
    ),
    "unnormalized target": (
        "  a:\n    mounts:\n      - {source: /srv, target: /data/}\n",
        "6:32",
        "sprites.a.mounts.0.target",
        "expected a normalized path",
    ),
    "mount without target": (
        "  a:\n    mounts:\n      - {source: /srv}\n",
        "6:9",
        "sprites.a.mounts.0.target",
        "missing required field",
    ),
    "same target twice": (
        "  a:\n    mounts:\n      - {source: /a, target: /data}\n      - {source: /b, target: /data}\n",
        "6:7",
        "sprites.a.mounts",
        "mount target /data is given more than once",
    ),
    "readOnly not a boolean": (
        "  a:\n    mounts:\n      - {source: /a, target: /d, readOnly: 1}\n",
        "6:44",
        "sprites.a.mounts.0.readOnly",
        "expected true or false",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_name_file_line_column_and_field(case: str) -> None:
    body, where, field, words = ERRORS[case]
    error = error_of(body)
    assert error.user_message.startswith(f"sprites.yaml:{where}: {field}: "), error.user_message
    assert words in error.user_message


@pytest.mark.parametrize(
    ("target", "ok"),
    [
        ("/data", True),
        ("/work/project", True),
        ("/etc/ssl", True),
        ("/tmp/cache", True),
        ("/etc", False),
        ("/home", False),
        ("/proc/sys", False),
        ("/dev/shm", False),
        ("/lib64/x", False),
        ("//data", False),
        ("data", False),
    ],
)
def test_mount_targets(target: str, ok: bool) -> None:
    assert (sandbox.target_problem(target) is None) is ok


def test_users_inside_a_sprite() -> None:
    assert sandbox.parse_user("sprite") == (1000, 1000, "/home/sprite")
    assert sandbox.parse_user("root") == (0, 0, "/root")
    assert sandbox.parse_user(1000) == (1000, 1000, "/home/sprite")
    assert sandbox.parse_user("1234") == (1234, 1234, "/")
    assert sandbox.parse_user("1234:sprite") == (1234, 1000, "/")
    for bad in ("", "alice", "1000:staff", "-1", "1e3", True, None, "99999"):
        with pytest.raises(ValueError):
            sandbox.parse_user(bad)


def test_the_plan_says_when_a_sprite_shares_the_host_network() -> None:
    after = {"memory": 512 * MiB, "cpus": 1, "network": "host"}
    change = Change(address="a", action=Action.START, reason=Reason.MISSING, after=after)
    assert "network host" in describe(change)
    quiet = Change(
        address="a", action=Action.START, reason=Reason.MISSING, after={"memory": 1, "cpus": 1}
    )
    assert "network" not in describe(quiet)
