"""Read a manifest file safely and validate it, with file:line:col in every error.

The YAML is composed into nodes by libyaml (C) where available, then turned
into plain data by a small walker that rejects what a manifest never needs
and an attacker might use: anchors and aliases (billion laughs), merge keys,
non-standard tags (``!!python/object``), duplicate keys, nesting deeper than
:data:`MAX_DEPTH`. The node tree is kept so that a validation error can be
traced back to its position; positions and field paths are looked up only
when something is wrong.

A 10,000-sprite manifest is a few hundred thousand nodes, so the common case
is kept lean: text without ``&`` or ``*`` cannot hold an anchor or an alias,
and is composed in one pass whose loader stops at the nesting limit (the
event stream is read for exact positions only when it trips, or when the
text could hold anchors); tags are resolved once per distinct scalar; the
collector is paused while the nodes are alive (:mod:`reconciler.bulk`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.bulk import collector_paused
from reconciler.digest import sha256_hex
from reconciler.errors import ManifestError, Position
from reconciler.models.desired import DesiredSprite, ManifestSpec, desired_sprites, quick_spec
from reconciler.record import record

#: Manifests describe sprites, not data; 10,000 sprites fit in well under this.
MAX_MANIFEST_BYTES = 8 << 20
DEFAULT_MANIFEST = "sprites.yaml"

_constructor = yaml.constructor.SafeConstructor()

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _TIMESTAMP, _MERGE = (_TAG + t for t in ("map", "seq", "timestamp", "merge"))

#: Deeper than any manifest nests (five levels hold an env value). Composing
#: and walking recurse, so deeper input is refused before either goes further:
#: a few thousand ``[`` would exhaust the walker, a few hundred thousand crash
#: the C composer.
MAX_DEPTH = 64

_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc]
    """The safe loader without the per-node work a manifest never needs.

    No path resolvers are registered on the safe loader, so a node's tag
    depends on its scalar alone: it is resolved once per distinct scalar,
    and only scalars whose first character some implicit resolver claims
    are matched against the resolvers' patterns at all."""

    _claimed = frozenset(_SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            if not implicit[0] or (value and value[0] not in self._claimed):
                return _STR
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None


class _TooDeep(Exception):
    """Composing reached :data:`MAX_DEPTH` + 1 nodes deep and stopped."""


class _GuardedLoader(_Loader):
    """Stops composing before the C composer's recursion can go deep.

    It counts nodes, not collections (the composer tells it no more), so a
    scalar under exactly :data:`MAX_DEPTH` collections trips it too; the
    event stream then decides."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooDeep

    def ascend_resolver(self) -> None:
        self._depth -= 1


@record(frozen=True)
class LoadedManifest:
    """A validated manifest, where it came from, and its digest."""

    path: Path
    manifest: ManifestSpec
    desired: dict[str, DesiredSprite]
    #: sha256 of the file's bytes; a saved plan is stale when it changes.
    digest: str

    @property
    def project(self) -> str:
        return self.manifest.project


def load_manifest(path: Path, *, default_memory: int, default_cpus: int) -> LoadedManifest:
    shown = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(
            Position(shown),
            "manifest not found",
            hint="Give the manifest with -f FILE (default: sprites.yaml in this directory).",
        ) from None
    except IsADirectoryError:
        raise ManifestError(Position(shown), "is a directory, not a manifest file") from None
    except OSError as exc:
        raise ManifestError(Position(shown), f"cannot read: {exc.strerror}") from None
    return parse_manifest(
        raw, shown, path=path, default_memory=default_memory, default_cpus=default_cpus
    )


def parse_manifest(
    raw: bytes,
    shown: str,
    *,
    path: Path | None = None,
    default_memory: int,
    default_cpus: int,
) -> LoadedManifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            Position(shown),
            f"file is too large for a manifest (over {MAX_MANIFEST_BYTES >> 20}MiB)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ManifestError(Position(shown, line, column), "not valid UTF-8 text") from None
    if "\x00" in text:
        offset = text.index("\x00")
        raise ManifestError(
            _offset_position(shown, text, offset), "binary data (NUL byte) in manifest"
        )
    with collector_paused():
        return _parse(raw, text, shown, path, default_memory, default_cpus)


def _parse(
    raw: bytes,
    text: str,
    shown: str,
    path: Path | None,
    default_memory: int,
    default_cpus: int,
) -> LoadedManifest:
    try:
        root, anchors = _compose(text, shown)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        position = Position(shown, mark.line + 1, mark.column + 1) if mark else Position(shown)
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            problem = "found a tab; indent YAML with spaces, not tabs"
        raise ManifestError(position, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(Position(shown), f"invalid YAML: {exc}") from None
    if root is None:
        raise ManifestError(
            Position(shown, 1, 1), "the manifest is empty; expected version, project and sprites"
        )
    data = _plain(root, shown, anchors)
    if not isinstance(data, dict):
        raise ManifestError(
            _node_position(shown, root),
            f"expected a mapping with version, project and sprites at the top, got a {_kind(root)}",
        )
    manifest = quick_spec(data) or _validate(data, shown, root)
    try:
        desired = desired_sprites(
            manifest, default_memory=default_memory, default_cpus=default_cpus
        )
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        node = _find_node(root, tuple(field.split(".")[:2]))
        raise ManifestError(_node_position(shown, node), message, field=field) from None
    digest = sha256_hex(raw)
    return LoadedManifest(
        path=path or Path(shown), manifest=manifest, desired=desired, digest=digest
    )


def _validate(data: dict[str, Any], shown: str, root: yaml.Node) -> ManifestSpec:
    """The models' verdict on a manifest the quick validator left to them."""
    from pydantic import ValidationError

    from reconciler.models.manifest import Manifest

    try:
        return Manifest.model_validate(data).spec()
    except ValidationError as exc:
        raise _translate(exc, shown, root) from None


def _offset_position(shown: str, text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    return Position(shown, line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def _node_position(shown: str, node: yaml.Node | None) -> Position:
    if node is None:
        return Position(shown)
    mark = node.start_mark
    return Position(shown, mark.line + 1, mark.column + 1)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "scalar"


_ANCHOR_MESSAGE = "YAML anchors and aliases are not allowed in a manifest"


def _compose(text: str, shown: str) -> tuple[yaml.Node | None, frozenset[tuple[int, int]] | None]:
    """The document's nodes, and where its anchors and aliases are (None when
    the text holds no ``&`` or ``*``, so it cannot have any)."""
    if "&" not in text and "*" not in text:
        try:
            return yaml.compose(text, Loader=_GuardedLoader), None
        except _TooDeep:
            pass  # the event stream says where, or that it is deep but allowed
    anchors = _anchor_marks(text, shown)
    return yaml.compose(text, Loader=_Loader), anchors


def _anchor_marks(text: str, shown: str) -> frozenset[tuple[int, int]]:
    """Where anchors and aliases are (0-based line, column), read from the
    event stream (nodes keep no anchor), which also bounds the nesting depth
    before anything recursive sees the document."""
    marks = set()
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        mark = event.start_mark
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                position = Position(shown, mark.line + 1, mark.column + 1) if mark else Position(shown)
                raise ManifestError(position, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if mark is not None and (
            isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None
        ):
            marks.add((mark.line, mark.column))
    return frozenset(marks)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n")
    if line < len(lines) and column < len(lines[line]):
        return lines[line][column]
    return ""


def _plain(root: yaml.Node, shown: str, anchors: frozenset[tuple[int, int]] | None) -> Any:
    """Nodes to plain data, refusing anchors, aliases, merge keys, odd tags and
    duplicate keys. Each error names the field it was found in. ``anchors``
    None says the text cannot hold any, and the checks for them are skipped."""
    seen: set[int] = set()
    scalar, sequence, mapping = yaml.ScalarNode, yaml.SequenceNode, yaml.MappingNode

    def fail(node: yaml.Node, message: str, key: str | None = None) -> ManifestError:
        path = _path_to(root, node)
        field = ".".join(path if key is None else (*path, key))
        return ManifestError(_node_position(shown, node), message, field=field or None)

    def build(node: Any) -> Any:
        if anchors is not None:
            if id(node) in seen or (node.start_mark.line, node.start_mark.column) in anchors:
                raise fail(node, _ANCHOR_MESSAGE)
            seen.add(id(node))
        kind = type(node)
        tag = node.tag
        if kind is scalar:
            if tag == _STR:
                return node.value
            if tag == _INT:
                value = node.value
                if value.isdigit() and (value[0] != "0" or len(value) == 1):
                    return int(value)
                return _constructor.construct_yaml_int(node)
            if tag == _BOOL:
                return _constructor.construct_yaml_bool(node)
            if tag == _NULL:
                return None
            if tag == _FLOAT:
                return _constructor.construct_yaml_float(node)
            if tag == _TIMESTAMP:
                return node.value
            raise fail(node, f"the tag {tag!r} is not allowed in a manifest")
        if kind is sequence:
            if tag != _SEQ:
                raise fail(node, f"the tag {tag!r} is not allowed in a manifest")
            return [build(item) for item in node.value]
        if kind is mapping:
            if tag != _MAP:
                raise fail(node, f"the tag {tag!r} is not allowed in a manifest")
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _STR and anchors is None and type(key_node) is scalar:
                    name = key_node.value
                else:
                    if key_node.tag == _MERGE:
                        raise fail(key_node, "YAML merge keys (<<) are not allowed in a manifest")
                    if type(key_node) is not scalar:
                        raise fail(key_node, "mapping keys must be plain strings")
                    name = build(key_node)
                    if not isinstance(name, str):
                        name = str(key_node.value)
                if name in result:
                    raise fail(key_node, f"duplicate key {name!r}", name)
                result[name] = build(value_node)
            return result
        raise fail(node, "unsupported YAML node")

    return build(root)


def _path_to(root: yaml.Node, target: yaml.Node) -> tuple[str, ...]:
    """The keys and indexes leading to ``target``'s first appearance in the
    document (a mapping key belongs to its mapping). Only errors need it."""
    pending: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while pending:
        node, path = pending.pop()
        if node is target:
            return path
        children: list[tuple[yaml.Node, tuple[str, ...]]] = []
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node is target:
                    return path
                children.append((value_node, (*path, str(getattr(key_node, "value", "?")))))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, (*path, str(i))) for i, item in enumerate(node.value)]
        pending.extend(reversed(children))
    return ()


def _find_node(root: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node:
    """The deepest node along ``loc`` (a pydantic error location)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node = value_node
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _find_key(root: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node | None:
    parent = _find_node(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _ in parent.value:
            if key_node.value == str(loc[-1]):
                found: yaml.Node = key_node
                return found
    return None


_MESSAGES = {
    "missing": "missing required field",
    "string_type": "expected a string (quote it if it looks like a number or a boolean)",
    "int_type": "expected a whole number",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "model_type": "expected a mapping",
    "bool_type": "expected true or false",
}


def _translate(exc: Any, shown: str, root: yaml.Node) -> ManifestError:
    """A pydantic ``ValidationError`` as one located error (the first in the file)."""
    errors = exc.errors(include_url=False)
    located: list[tuple[tuple[int, int], Position, str, str]] = []
    for error in errors:
        loc = tuple(error["loc"])
        kind = error["type"]
        key_error = bool(loc) and loc[-1] == "[key]"
        if key_error:
            loc = loc[:-1]
        message = _message(error, loc)
        if kind == "extra_forbidden" or key_error:
            node = _find_key(root, loc) or _find_node(root, loc)
        elif kind == "missing":
            node = _find_node(root, loc[:-1])
        else:
            node = _find_node(root, loc)
        position = _node_position(shown, node)
        field = ".".join(str(part) for part in loc) or None
        located.append(((position.line or 0, position.column or 0), position, field or "", message))
    located.sort(key=lambda item: item[0])
    _, position, field, message = located[0]
    hint = None
    if len(located) > 1:
        rest = len(located) - 1
        hint = f"(and {rest} more problem{'s' if rest > 1 else ''} in this file)"
    return ManifestError(position, message, field=field or None, hint=hint)


def _message(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown field; expected one of {', '.join(_allowed_fields(loc))}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"expected {expected}, got {error.get('input')!r}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        ctx = error.get("ctx", {})
        bound = next(iter(ctx.values()), "")
        word = {
            "greater_than_equal": "at least",
            "less_than_equal": "at most",
            "greater_than": "greater than",
            "less_than": "less than",
        }[kind]
        return f"must be {word} {bound}, got {error.get('input')!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind in _MESSAGES:
        got = error.get("input")
        suffix = f", got {got!r}" if kind != "missing" and not isinstance(got, (dict, list)) else ""
        return _MESSAGES[kind] + suffix
    return str(error["msg"])


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    from reconciler.models import manifest as models

    depth = len(loc)
    if depth <= 1:
        model: type[Any] = models.Manifest
    elif loc[0] == "sprites":
        model = models.SpriteTemplate
    elif loc[0] == "limits":
        model = models.Limits
    else:
        model = models.Resources
    return list(model.model_fields)
