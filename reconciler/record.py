"""Data classes that cost next to nothing to define.

``dataclasses.dataclass`` writes and compiles Python source for each method
of each class while its module is imported: about 0.5 ms for a frozen,
slotted class, 15 ms for the thirty an apply imports, a quarter of what the
command's whole start-up costs beyond the interpreter's. :func:`record`
makes the same kind of class (fields from annotations, defaults,
``field(default_factory=..., compare=False, repr=False)``, ``frozen``,
``slots``, ``__match_args__``) with shared methods for equality, hashing,
repr and pickling, and compiles one method, ``__init__``, when the first
instance is made: a class a command never instantiates costs it nothing.

Type checkers see dataclasses (PEP 681's ``dataclass_transform``). What it
does not do, it refuses when the class is made: inheriting fields,
``__post_init__``, keyword-only or ``init=False`` fields, ordering.
:func:`replace` and :func:`fields` stand in for their ``dataclasses`` namesakes.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        """Only type checkers read it (``typing`` has it from Python 3.11)."""
        return lambda function: function


__all__ = [
    "FrozenInstanceError",
    "field",
    "field_specs",
    "fields",
    "is_frozen",
    "is_record",
    "record",
    "replace",
]

T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    __slots__ = ("default", "default_factory", "compare", "repr")

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        compare: bool,
        repr: bool,  # noqa: A002
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    compare: bool = True,
    repr: bool = True,  # noqa: A002
) -> Any:
    """A field's default (or a factory for one), and whether it counts in
    equality, hashing and repr, as ``dataclasses.field`` says it."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("a field cannot have both a default and a default_factory")
    return Field(default, default_factory, compare, repr)


class _Spec:
    """What :func:`record` learnt of a class, kept on it as ``__record__``."""

    __slots__ = ("names", "fields", "frozen", "values", "compared")

    def __init__(self, fields: dict[str, Field], frozen: bool) -> None:
        self.names = tuple(fields)
        self.fields = fields
        self.frozen = frozen
        self.values = _getter(self.names)
        self.compared = _getter(tuple(n for n, f in fields.items() if f.compare))


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


@overload
@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(
    *, frozen: bool = False, slots: bool = False, eq: bool = True
) -> Callable[[type[T]], type[T]]: ...


def record(
    cls: type[T] | None = None,
    /,
    *,
    frozen: bool = False,
    slots: bool = False,
    eq: bool = True,
) -> type[T] | Callable[[type[T]], type[T]]:
    """Make ``cls`` a data class, as ``@dataclass`` with the same options would."""

    def make(cls: type[T]) -> type[T]:
        return _make(cls, frozen=frozen, slots=slots, eq=eq)

    return make if cls is None else make(cls)


def _make(cls: type[T], *, frozen: bool, slots: bool, eq: bool) -> type[T]:
    namespace = dict(cls.__dict__)
    if any(is_record(base) for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__qualname__}: a record cannot inherit fields")
    if "__post_init__" in namespace:
        raise TypeError(f"{cls.__qualname__}: records have no __post_init__")
    fields: dict[str, Field] = {}
    defaulted = False
    for name, annotation in namespace.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        value = namespace.pop(name, MISSING)
        one = value if isinstance(value, Field) else Field(value, MISSING, True, True)
        if one.default is not MISSING or one.default_factory is not MISSING:
            defaulted = True
        elif defaulted:
            raise TypeError(f"{cls.__qualname__}: non-default field {name!r} follows a default")
        fields[name] = one
    spec = _Spec(fields, frozen)
    # The hash a class body gave explicitly (not the None that defining
    # __eq__ implies) is kept, as dataclasses keep it.
    explicit_hash = namespace.get("__hash__", MISSING) is not None and "__hash__" in namespace
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    if slots:
        namespace["__slots__"] = spec.names
    namespace["__record__"] = spec
    namespace["__match_args__"] = spec.names
    namespace.setdefault("__init__", _first_init)
    namespace.setdefault("__repr__", _repr)
    namespace["__reduce__"] = _reduce
    if eq:
        namespace.setdefault("__eq__", _eq)
        if not explicit_hash:
            namespace["__hash__"] = _hash if frozen else None
    if frozen:
        namespace["__setattr__"] = _frozen_setattr
        namespace["__delattr__"] = _frozen_delattr
    metaclass: Any = type(cls)
    made: type[T] = metaclass(cls.__name__, cls.__bases__, namespace)
    return made


def _is_class_var(annotation: Any) -> bool:
    """Whether an annotation (a string, with postponed evaluation) is ClassVar."""
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _first_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """Compile the class's own ``__init__``, put it in place and run it."""
    cls = type(self)
    owner = next(c for c in cls.__mro__ if is_record(c))
    init = _compile_init(owner.__dict__["__record__"])
    init.__qualname__ = f"{owner.__qualname__}.__init__"
    owner.__init__ = init  # type: ignore[misc]
    init(self, *args, **kwargs)


def _compile_init(spec: _Spec) -> Callable[..., None]:
    scope: dict[str, Any] = {"_set": object.__setattr__, "_MISSING": MISSING}
    params: list[str] = []
    lines: list[str] = []
    for name, f in spec.fields.items():
        value = name
        if f.default is not MISSING:
            scope[f"_default_{name}"] = f.default
            params.append(f"{name}=_default_{name}")
        elif f.default_factory is not MISSING:
            scope[f"_factory_{name}"] = f.default_factory
            params.append(f"{name}=_MISSING")
            value = f"_factory_{name}() if {name} is _MISSING else {name}"
        else:
            params.append(name)
        lines.append(
            f"    _set(self, {name!r}, {value})" if spec.frozen else f"    self.{name} = {value}"
        )
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(lines) or "    pass") + "\n"
    namespace: dict[str, Any] = {}
    exec(source, scope, namespace)  # noqa: S102  (source built from field names only)
    init: Callable[..., None] = namespace["__init__"]
    return init


def _spec(obj: Any) -> _Spec:
    spec: _Spec = type(obj).__record__
    return spec


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        compared = _spec(self).compared
        return compared(self) == compared(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(_spec(self).compared(self))


def _repr(self: Any) -> str:
    spec = _spec(self)
    shown = ", ".join(f"{n}={getattr(self, n)!r}" for n, f in spec.fields.items() if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _reduce(self: Any) -> tuple[type, tuple[Any, ...]]:
    return type(self), _spec(self).values(self)


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def is_record(kind: Any) -> bool:
    """Whether ``kind`` is a class :func:`record` made (not a subclass of one)."""
    return isinstance(kind, type) and "__record__" in kind.__dict__


def field_specs(kind: type) -> dict[str, Field]:
    """A record class's fields, in order, with their defaults and options."""
    spec: _Spec = kind.__dict__["__record__"]
    return dict(spec.fields)


def is_frozen(kind: type) -> bool:
    """Whether a record class's instances refuse assignment."""
    spec: _Spec = kind.__dict__["__record__"]
    return spec.frozen


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    spec: _Spec = obj.__record__
    return spec.names


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes``, as ``dataclasses.replace``."""
    spec = _spec(obj)
    values = dict(zip(spec.names, spec.values(obj), strict=True))
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)
