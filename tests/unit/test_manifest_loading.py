"""The manifest loader's fast path: the same data, tags and errors as the
stock safe loader and the event-stream checks it skips when it can."""

from __future__ import annotations

import pytest
import yaml

from reconciler import manifest as loader
from reconciler.errors import ManifestError
from reconciler.manifest import MAX_DEPTH, parse_manifest

MiB = 1 << 20

SCALARS = [
    "",
    "~",
    "null",
    "Null",
    "NULL",
    "nUll",
    "yes",
    "No",
    "ON",
    "off",
    "true",
    "False",
    "y",
    "n",
    "0",
    "7",
    "-7",
    "+7",
    "017",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "1:30",
    "190:20:30",
    "1.5",
    "-1.5e3",
    "6.8523015e+5",
    "1_0.5",
    ".inf",
    "-.Inf",
    ".NaN",
    ".",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "<<",
    "=",
    "512MiB",
    "1GiB",
    "new-3",
    "sprite-1",
    "-",
    "+",
    "0.",
    "éte",
    "3600",
    "00",
    "09",
    "1e3",
]


def tags(node: yaml.Node) -> list[tuple[str, str, object]]:
    found = [
        (type(node).__name__, node.tag, node.value if isinstance(node, yaml.ScalarNode) else None)
    ]
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += tags(item)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found += tags(key) + tags(value)
    return found


def document() -> str:
    plain = "".join(f"  - {s}\n" for s in SCALARS if s not in ("", "-", "<<"))
    quoted = "".join(f"  - '{s}'\n" for s in SCALARS)
    keys = "".join(f"  {s or 'empty'}: {s or 'null'}\n" for s in SCALARS if s not in ("-", "<<"))
    return f"plain:\n{plain}quoted:\n{quoted}keys:\n{keys}flow: [{', '.join(SCALARS[5:20])}]\n"


def test_tags_are_resolved_as_the_safe_loader_does() -> None:
    text = document()
    stock = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    fast, anchors = loader._compose(text, "t.yaml")
    assert anchors is None
    assert fast is not None and tags(fast) == tags(stock)


def test_scalars_become_the_values_the_safe_loader_makes() -> None:
    # Timestamps stay text, "=" (a value tag) and "<<" (a merge key) are refused.
    text = "\n".join(
        f"k{i}: {s}"
        for i, s in enumerate(SCALARS)
        if s not in ("", "-", "<<", "=") and not s.startswith("2001")
    )
    fast, _ = loader._compose(text, "t.yaml")
    assert fast is not None
    data = loader._plain(fast, "t.yaml", None)
    expected = yaml.safe_load(text)
    assert data.keys() == expected.keys()
    for key, value in expected.items():
        if value != value:  # NaN
            assert data[key] != data[key]
        else:
            assert (data[key], type(data[key])) == (value, type(value)), key


def test_text_with_ampersands_but_no_anchors_loads_the_same() -> None:
    head = "version: 1\nproject: demo\nsprites:\n"
    plain = head + "  a: {command: [sh, -c, 'true; echo ok'], env: {X: '1'}}\n"
    shell = head + "  a: {command: [sh, -c, 'true && echo ok'], env: {X: '1'}}\n"
    first = parse_manifest(plain.encode(), "a.yaml", default_memory=MiB, default_cpus=1)
    second = parse_manifest(shell.encode(), "b.yaml", default_memory=MiB, default_cpus=1)
    assert first.desired["a"].env == second.desired["a"].env
    assert second.desired["a"].command == ("sh", "-c", "true && echo ok")


def nested(levels: int) -> str:
    return "version: 1\nproject: demo\nsprites: " + "[" * (levels - 1) + "x" + "]" * (levels - 1)


def test_nesting_up_to_the_limit_is_composed() -> None:
    # MAX_DEPTH collections with a scalar inside: the node-counting guard
    # trips, the event stream allows it, and the walker gets it whole.
    root, anchors = loader._compose(nested(MAX_DEPTH), "deep.yaml")
    assert anchors == frozenset()
    data = loader._plain(root, "deep.yaml", anchors) if root is not None else None
    assert isinstance(data, dict)
    value = data["sprites"]
    for _ in range(MAX_DEPTH - 2):
        value = value[0]
    assert value == ["x"]


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5000])
def test_deeper_nesting_is_refused_where_it_starts(levels: int) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(nested(levels).encode(), "deep.yaml", default_memory=MiB, default_cpus=1)
    message = caught.value.user_message
    assert message.startswith(f"deep.yaml:3:{10 + MAX_DEPTH - 1}: ")
    assert f"nested more than {MAX_DEPTH} levels deep" in message


@pytest.mark.parametrize(
    ("text", "where", "field"),
    [
        ("version: 1\nproject: demo\nsprites:\n  &k a: {}\n", "4:3", "sprites"),
        ("version: 1\nproject: &p demo\nsprites: {}\n", "2:10", "project"),
        ("version: 1\nproject: demo\nsprites: {a: &x {}, b: *x}\n", "3:14", "sprites.a"),
    ],
)
def test_anchors_anywhere_are_refused_with_their_field(text: str, where: str, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text.encode(), "sprites.yaml", default_memory=MiB, default_cpus=1)
    assert caught.value.user_message.startswith(f"sprites.yaml:{where}: {field}: ")
    assert "anchors and aliases are not allowed" in caught.value.user_message


def test_a_large_manifest_loads_every_sprite() -> None:
    body = "".join(
        f"  s-{i}: {{memory: {256 + i % 3}MiB, cpus: {1 + i % 2}, command: [run, '{i}']}}\n"
        for i in range(3000)
    )
    text = "version: 1\nproject: big\nsprites:\n" + body
    loaded = parse_manifest(text.encode(), "big.yaml", default_memory=MiB, default_cpus=1)
    assert len(loaded.desired) == 3000
    assert loaded.desired["s-2999"].memory == 258 * MiB
    assert loaded.desired["s-2999"].command == ("run", "2999")
