"""Read a manifest file safely and validate it, with file:line:col in every error.

The YAML is composed into nodes by libyaml (C) where available, then turned
into plain data by a small walker that rejects what a manifest never needs
and an attacker might use: anchors and aliases (billion laughs), merge keys,
non-standard tags (``!!python/object``), duplicate keys. The node tree is kept
so that a validation error can be traced back to its position; positions
are looked up only when something is wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler.errors import ManifestError, Position
from reconciler.models.manifest import DesiredSprite, Manifest, desired_sprites

#: Manifests describe sprites, not data; 10,000 sprites fit in well under this.
MAX_MANIFEST_BYTES = 8 << 20
DEFAULT_MANIFEST = "sprites.yaml"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_constructor = yaml.constructor.SafeConstructor()

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _TIMESTAMP, _MERGE = (_TAG + t for t in ("map", "seq", "timestamp", "merge"))


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest, where it came from, and its digest."""

    path: Path
    manifest: Manifest
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
    try:
        anchors = _anchor_marks(text, shown)
        root = yaml.compose(text, Loader=_Loader)
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
    data = _Walker(shown, anchors).build(root)
    if not isinstance(data, dict):
        raise ManifestError(
            _node_position(shown, root),
            f"expected a mapping with version, project and sprites at the top, got a {_kind(root)}",
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, shown, root) from None
    try:
        desired = desired_sprites(
            manifest, default_memory=default_memory, default_cpus=default_cpus
        )
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        node = _find_node(root, tuple(field.split(".")[:2]))
        raise ManifestError(_node_position(shown, node), message, field=field) from None
    digest = hashlib.sha256(raw).hexdigest()
    return LoadedManifest(
        path=path or Path(shown), manifest=manifest, desired=desired, digest=digest
    )


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


#: Deeper than any manifest nests (five levels hold an env value). Composing
#: and walking recurse, so deeper input is refused on the event stream first:
#: a few thousand ``[`` would exhaust the walker, a few hundred thousand crash
#: the C composer.
MAX_DEPTH = 64


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


class _Walker:
    """Nodes to plain data, refusing anchors, aliases, merge keys, odd tags and
    duplicate keys. Each error names the field it was found in."""

    def __init__(self, shown: str, anchors: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.shown = shown
        self.anchors = anchors
        self.seen: set[int] = set()

    def fail(self, node: yaml.Node, message: str, path: tuple[str, ...] = ()) -> ManifestError:
        return ManifestError(
            _node_position(self.shown, node), message, field=".".join(path) or None
        )

    def build(self, node: yaml.Node, path: tuple[str, ...] = ()) -> Any:
        key = id(node)
        if key in self.seen or (
            self.anchors and (node.start_mark.line, node.start_mark.column) in self.anchors
        ):
            raise self.fail(node, _ANCHOR_MESSAGE, path)
        self.seen.add(key)
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR:
                return node.value
            if tag == _INT:
                return _constructor.construct_yaml_int(node)
            if tag == _BOOL:
                return _constructor.construct_yaml_bool(node)
            if tag == _NULL:
                return None
            if tag == _FLOAT:
                return _constructor.construct_yaml_float(node)
            if tag == _TIMESTAMP:
                return node.value
            raise self.fail(node, f"the tag {tag!r} is not allowed in a manifest", path)
        if isinstance(node, yaml.SequenceNode):
            if tag != _SEQ:
                raise self.fail(node, f"the tag {tag!r} is not allowed in a manifest", path)
            return [self.build(item, (*path, str(i))) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if tag != _MAP:
                raise self.fail(node, f"the tag {tag!r} is not allowed in a manifest", path)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    raise self.fail(
                        key_node, "YAML merge keys (<<) are not allowed in a manifest", path
                    )
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "mapping keys must be plain strings", path)
                name = self.build(key_node, path)
                if not isinstance(name, str):
                    name = str(key_node.value)
                if name in result:
                    raise self.fail(key_node, f"duplicate key {name!r}", (*path, name))
                result[name] = self.build(value_node, (*path, name))
            return result
        raise self.fail(node, "unsupported YAML node", path)


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


def _translate(exc: ValidationError, shown: str, root: yaml.Node) -> ManifestError:
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
