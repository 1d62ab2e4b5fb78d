"""The quick manifest validator agrees with the pydantic models.

:func:`quick_spec` lets ordinary manifests skip pydantic. It may leave any
manifest to the models (``None``), but a spec it does return must be exactly
the models' spec, and it must take the common shapes itself, or the start-up
saving it exists for is lost. Checked on hand-picked manifests covering every
field and on generated ones mixing valid and invalid values of every kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.models.desired import (
    LimitsSpec,
    ManifestSpec,
    MountSpec,
    TemplateSpec,
    desired_sprites,
    quick_spec,
)
from reconciler.models.manifest import Manifest

MiB = 1 << 20
GiB = 1 << 30
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def models_spec(data: Any) -> ManifestSpec | None:
    try:
        return Manifest.model_validate(data).spec()
    except ValidationError:
        return None


def top(sprites: Any, **extra: Any) -> dict[str, Any]:
    return {"version": 1, "project": "demo", "sprites": sprites, **extra}


SOUND = [
    top({}),
    {"version": 1, "project": "demo"},
    top({"a": {}}),
    top({"web": {"replicas": 3, "memory": "1GiB", "cpus": "2"}}),
    top({"w": {"memory": 268435456, "cpus": 4, "replicas": 1000}}),
    top({"a": {"command": ["sleep", "infinity"], "env": {"B": "2", "A": "1", "_x": ""}}}),
    top({"a": {"env": {}}}),
    top({"a": {"ttl": "1h30m"}, "b": {"ttl": 90}, "c": {"ttl": 2.5}}),
    top({"a": {"runtime": "microvm", "kernel": "/k/vmlinux", "initrd": "/k/initrd"}}),
    top({"a": {"runtime": "builtin"}, "b": {"runtime": None}}),
    top({"a": {"workdir": "/work/src", "user": "root"}, "b": {"user": 1000}, "c": {"user": "0:0"}}),
    top(
        {
            "a": {
                "mounts": [
                    {"source": "/srv/data", "target": "/data"},
                    {"source": "/srv/cache", "target": "/cache", "readOnly": False},
                ],
                "network": "host",
                "keep": True,
                "pids": 64,
            },
            "b": {"network": "none", "keep": False, "pids": 256, "mounts": []},
        }
    ),
    top({"a": {}}, defaults={"memory": "256MiB", "cpus": 2}),
    top({"a": {}}, defaults={}),
    top({"a": {}}, limits={"maxVMs": 5, "memory": "4GiB", "cpus": 8}),
    top({"a": {}}, limits={"memory": 1}),
    top({"a": {}}, limits=None),
    top({"a": {"memory": None, "cpus": None, "command": None, "env": None, "ttl": None}}),
]


@pytest.mark.parametrize("data", SOUND)
def test_sound_manifests_take_the_quick_path_with_the_models_result(data: dict[str, Any]) -> None:
    quick = quick_spec(data)
    assert quick is not None
    assert quick == models_spec(data)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_take_the_quick_path(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if not (isinstance(data, dict) and "sprites" in data and "project" in data):
        pytest.skip(f"{path.name} is not a manifest")
    quick = quick_spec(data)
    assert quick is not None
    assert quick == models_spec(data)


def test_the_spec_holds_what_the_manifest_says() -> None:
    spec = quick_spec(
        top(
            {
                "web": {
                    "replicas": 2,
                    "memory": "1GiB",
                    "env": {"B": "2", "A": "1"},
                    "mounts": [{"source": "/srv", "target": "/data"}],
                }
            },
            defaults={"cpus": "2"},
            limits={"maxVMs": 4},
        )
    )
    assert spec == ManifestSpec(
        project="demo",
        default_cpus=2,
        limits=LimitsSpec(max_vms=4),
        sprites={
            "web": TemplateSpec(
                memory=GiB,
                replicas=2,
                env=(("A", "1"), ("B", "2")),
                mounts=(MountSpec("/srv", "/data", True),),
            )
        },
    )
    desired = desired_sprites(spec, default_memory=512 * MiB, default_cpus=1)
    assert list(desired) == ["web-1", "web-2"]
    assert desired["web-1"].spec == {
        "memory": GiB,
        "cpus": 2,
        "env": {"A": "1", "B": "2"},
        "mounts": [{"source": "/srv", "target": "/data", "readOnly": True}],
    }


WRONG = [
    None,
    [],
    "demo",
    top({"a": {}}, extra=1),
    {"version": 2, "project": "demo", "sprites": {}},
    {"version": True, "project": "demo", "sprites": {}},
    {"version": "1", "project": "demo", "sprites": {}},
    {"project": "demo", "sprites": {}},
    {"version": 1, "sprites": {}},
    {"version": 1, "project": "Demo!", "sprites": {}},
    top(None),
    top({"a": None}),
    top({"a": {"memory": "lots"}}),
    top({"a": {"memory": "512KiB"}}),
    top({"a": {"memory": True}}),
    top({"a": {"cpus": 0}}),
    top({"a": {"cpus": 1.5}}),
    top({"a": {"replicas": 0}}),
    top({"a": {"replicas": 1001}}),
    top({"a": {"replicas": "2"}}),
    top({"a": {"replicas": True}}),
    top({"a": {"replicas": None}}),
    top({"a": {"command": []}}),
    top({"a": {"command": [""]}}),
    top({"a": {"command": ["sh", 1]}}),
    top({"a": {"command": "sleep 1"}}),
    top({"a": {"env": {"1X": "y"}}}),
    top({"a": {"env": {"X": 1}}}),
    top({"a": {"env": {"X": "a\x00b"}}}),
    top({"a": {"ttl": 0}}),
    top({"a": {"ttl": "soon"}}),
    top({"a": {"ttl": float("inf")}}),
    top({"a": {"ttl": float("nan")}}),
    top({"a": {"ttl": True}}),
    top({"a": {"runtime": "docker"}}),
    top({"a": {"runtime": "builtin", "kernel": "/k"}}),
    top({"a": {"kernel": "vmlinux"}}),
    top({"a": {"workdir": "relative"}}),
    top({"a": {"workdir": "/work/../etc"}}),
    top({"a": {"user": "alice"}}),
    top({"a": {"user": True}}),
    top({"a": {"user": -1}}),
    top({"a": {"mounts": [{"source": "/a", "target": "/etc"}]}}),
    top({"a": {"mounts": [{"source": "a", "target": "/data"}]}}),
    top({"a": {"mounts": [{"target": "/data"}]}}),
    top({"a": {"mounts": [{"source": "/a", "target": "/d"}, {"source": "/b", "target": "/d"}]}}),
    top({"a": {"mounts": [{"source": "/a", "target": "/d", "readOnly": "yes"}]}}),
    top({"a": {"mounts": [{"source": "/a", "target": "/d", "mode": "ro"}]}}),
    top({"a": {"network": "bridge"}}),
    top({"a": {"keep": "yes"}}),
    top({"a": {"pids": 0}}),
    top({"a": {"pids": 10**9}}),
    top({"a": {"colour": "red"}}),
    top({"a": {}}, defaults=None),
    top({"a": {}}, defaults={"memory": "1KiB"}),
    top({"a": {}}, defaults={"replicas": 2}),
    top({"a": {}}, limits={"maxVMs": 0}),
    top({"a": {}}, limits={"maxVMs": "5"}),
    top({"a": {}}, limits={"maxvms": 5}),
    top({"-bad": {}}),
    top({"a" * 64: {}}),
]


@pytest.mark.parametrize("data", WRONG)
def test_what_the_models_refuse_the_quick_path_leaves_to_them(data: Any) -> None:
    assert models_spec(data) is None
    assert quick_spec(data) is None


# -- generated ------------------------------------------------------------------

ANY_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
SIZES = st.one_of(
    st.sampled_from(["512MiB", "1GiB", "2G", "1M", "1023KiB", "1 GiB", "0", "1TiB", "-1MiB"]),
    st.integers(min_value=0, max_value=2**42),
    ANY_SCALAR,
)
CPUS = st.one_of(st.sampled_from(["1", "2", "0", "01", " 3", "x"]), st.integers(-2, 64), ANY_SCALAR)
DURATIONS = st.one_of(
    st.sampled_from(["30s", "10m", "1h30m", "0s", "1.5h", "250ms", "2d", "1x"]),
    st.floats(min_value=-10, max_value=1e6),
    ANY_SCALAR,
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/work",
            "/work/src",
            "/data",
            "/etc",
            "/",
            "rel",
            "/srv/x",
            "/tmp/a",
            "/work/../x",
            "/a\x00",
        ]
    ),
    ANY_SCALAR,
)
USERS = st.one_of(
    st.sampled_from(["root", "sprite", "nobody", "1000", "0:0", "1000:sprite", "alice", ""]),
    st.integers(-1, 70000),
    ANY_SCALAR,
)
MOUNT = st.dictionaries(
    st.sampled_from(["source", "target", "readOnly", "mode"]),
    st.one_of(PATHS, st.booleans()),
    max_size=4,
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "memory": SIZES,
    "cpus": CPUS,
    "replicas": st.one_of(st.integers(-1, 1002), ANY_SCALAR),
    "command": st.one_of(
        st.lists(st.one_of(st.text(max_size=5), ANY_SCALAR), max_size=3), ANY_SCALAR
    ),
    "env": st.one_of(
        st.dictionaries(
            st.sampled_from(["A", "_b", "PATH", "1X", "a-b", ""]),
            st.one_of(st.text(max_size=5), ANY_SCALAR),
            max_size=3,
        ),
        ANY_SCALAR,
    ),
    "ttl": DURATIONS,
    "runtime": st.one_of(st.sampled_from(["builtin", "microvm", "docker"]), ANY_SCALAR),
    "kernel": PATHS,
    "initrd": PATHS,
    "workdir": PATHS,
    "user": USERS,
    "mounts": st.one_of(st.lists(MOUNT, max_size=3), ANY_SCALAR),
    "network": st.one_of(st.sampled_from(["none", "host", "bridge"]), ANY_SCALAR),
    "keep": ANY_SCALAR,
    "pids": st.one_of(st.integers(-1, 40000), ANY_SCALAR),
    "colour": ANY_SCALAR,
}
TEMPLATE = st.one_of(
    st.fixed_dictionaries(
        {}, optional={key: value for key, value in FIELD_VALUES.items() if key != "colour"}
    ),
    st.fixed_dictionaries({}, optional=FIELD_VALUES),
    ANY_SCALAR,
)
NAMES = st.one_of(st.sampled_from(["a", "web", "agent-1", "x" * 63, "x" * 64, "A", "-a", ""]))
MANIFEST = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), ANY_SCALAR),
        "project": st.one_of(NAMES, ANY_SCALAR),
        "defaults": st.one_of(
            st.fixed_dictionaries({}, optional={"memory": SIZES, "cpus": CPUS, "x": ANY_SCALAR}),
            ANY_SCALAR,
        ),
        "limits": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "maxVMs": st.one_of(st.integers(-1, 10), ANY_SCALAR),
                    "memory": SIZES,
                    "cpus": CPUS,
                },
            ),
            ANY_SCALAR,
        ),
        "sprites": st.one_of(st.dictionaries(NAMES, TEMPLATE, max_size=3), ANY_SCALAR),
        "other": ANY_SCALAR,
    },
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MANIFEST)
def test_a_quick_spec_is_always_the_models_spec(data: dict[str, Any]) -> None:
    quick = quick_spec(data)
    if quick is not None:
        assert quick == models_spec(data)


@settings(max_examples=1000, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={key: value for key, value in FIELD_VALUES.items() if key != "colour"},
    )
)
def test_the_quick_path_takes_every_template_the_models_take(template: dict[str, Any]) -> None:
    """Whatever sprite entry the models accept, the quick path accepts too."""
    data = top({"a": template})
    expected = models_spec(data)
    if expected is not None:
        assert quick_spec(data) == expected
