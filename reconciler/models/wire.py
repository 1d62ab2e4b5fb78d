"""pydantic (de)serialisation of records (:mod:`reconciler.record`).

pydantic knows stdlib dataclasses, not records. For a record class this
makes the dataclass of the same fields (nested record types replaced by
theirs), converts instances to and from it, and lets pydantic do the rest,
so a plan's JSON is what pydantic makes of the equivalent dataclasses. Only
commands that write or read a plan as JSON import it (and pydantic).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any

from pydantic import TypeAdapter

from reconciler.record import MISSING, field_specs, fields, is_frozen, is_record


def dump(value: Any) -> Any:
    """``value`` (a record) as JSON-ready data."""
    return _adapter(type(value)).dump_python(_to_mirror(value), mode="json")


def load(kind: type[Any], data: Any) -> Any:
    """A ``kind`` record validated from ``data``; raises pydantic's ValidationError."""
    return _from_mirror(_adapter(kind).validate_python(data))


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(kind: type) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(_mirror(kind))
    return adapter


_MIRRORS: dict[type, type] = {}
_ORIGINALS: dict[type, type] = {}


def _mirror(kind: type) -> type:
    """The stdlib dataclass with ``kind``'s fields, defaults and options."""
    made = _MIRRORS.get(kind)
    if made is not None:
        return made
    hints = typing.get_type_hints(kind, vars(sys.modules[kind.__module__]))
    specs: list[tuple[str, Any, Any]] = []
    for name, one in field_specs(kind).items():
        if one.default is not MISSING:
            default = dataclasses.field(default=one.default)
        elif one.default_factory is not MISSING:
            default = dataclasses.field(default_factory=one.default_factory)
        else:
            default = dataclasses.field()
        specs.append((name, _substitute(hints[name]), default))
    made = dataclasses.make_dataclass(kind.__name__, specs, frozen=is_frozen(kind))
    made.__module__ = __name__
    _MIRRORS[kind] = made
    _ORIGINALS[made] = kind
    return made


def _substitute(hint: Any) -> Any:
    """``hint`` with each record class in it replaced by its mirror."""
    if is_record(hint):
        return _mirror(hint)
    args = typing.get_args(hint)
    if not args:
        return hint
    new = tuple(_substitute(arg) for arg in args)
    if new == args:
        return hint
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        return typing.Union[new]  # noqa: UP007  (built from a tuple of types)
    return origin[new] if len(new) > 1 else origin[new[0]]


def _to_mirror(value: Any) -> Any:
    if is_record(type(value)):
        mirror = _mirror(type(value))
        return mirror(**{name: _to_mirror(getattr(value, name)) for name in fields(value)})
    if isinstance(value, tuple):
        return tuple(_to_mirror(item) for item in value)
    return value


def _from_mirror(value: Any) -> Any:
    original = _ORIGINALS.get(type(value))
    if original is not None:
        fields = dataclasses.fields(value)
        return original(**{f.name: _from_mirror(getattr(value, f.name)) for f in fields})
    if isinstance(value, tuple):
        return tuple(_from_mirror(item) for item in value)
    return value
