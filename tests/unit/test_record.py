"""reconciler.record makes the classes ``dataclasses.dataclass`` would, for
the options it takes: each behaviour is checked against a dataclass of the
same definition."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import threading
from typing import Any, ClassVar

import pytest

from reconciler import record as rec


def both(frozen: bool, slots: bool) -> tuple[type, type]:
    """One definition, made by dataclasses and by record."""

    def define(decorate: Any, make_field: Any) -> type:
        @decorate(frozen=frozen, slots=slots)
        class Sprite:
            shared: ClassVar[int] = 7
            name: str
            memory: int = 512
            env: dict[str, str] = make_field(default_factory=dict)
            note: str = make_field(default="", compare=False, repr=False)

            def label(self) -> str:
                return f"{self.name}/{self.memory}"

        return Sprite

    return define(dataclasses.dataclass, dataclasses.field), define(rec.record, rec.field)


OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_instances_behave_as_the_dataclass_ones(frozen: bool, slots: bool) -> None:
    dc, made = both(frozen, slots)
    for args, kwargs in [
        (("a",), {}),
        (("a", 1), {"env": {"K": "v"}}),
        ((), {"name": "b", "note": "x"}),
    ]:
        expected, got = dc(*args, **kwargs), made(*args, **kwargs)
        assert repr(got).replace(made.__qualname__, "X") == repr(expected).replace(
            dc.__qualname__, "X"
        )
        assert [getattr(got, f.name) for f in dataclasses.fields(dc)] == [
            getattr(expected, f.name) for f in dataclasses.fields(dc)
        ]
        assert got == made(*args, **kwargs)
        assert got.label() == expected.label()
    assert made.__match_args__ == dc.__match_args__ == ("name", "memory", "env", "note")
    assert rec.fields(made) == tuple(f.name for f in dataclasses.fields(dc))
    assert made.shared == 7


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_equality_and_hashing_follow_compare(frozen: bool, slots: bool) -> None:
    dc, made = both(frozen, slots)
    assert made("a", note="x") == made("a", note="y")  # note is compare=False
    assert made("a") != made("b") and made("a") != made("a", 1)
    assert made("a").__eq__(dc("a")) is NotImplemented
    # Unhashable either way: not frozen, or frozen with a dict field.
    assert (made.__hash__ is None) == (dc.__hash__ is None) == (not frozen)
    for cls in (dc, made):
        with pytest.raises(TypeError, match="unhashable"):
            hash(cls("a"))


def test_frozen_hashes_equal_values_alike() -> None:
    @rec.record(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 0

    assert hash(Point(1, 2)) == hash(Point(1, 2)) and {Point(1), Point(1)} == {Point(1)}


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_assignment_and_slots(frozen: bool, slots: bool) -> None:
    dc, made = both(frozen, slots)
    got = made("a")
    if frozen:
        with pytest.raises(rec.FrozenInstanceError):
            got.name = "b"
        with pytest.raises(AttributeError):
            del got.memory
    else:
        got.name = "b"
        assert got.name == "b"
    assert hasattr(got, "__dict__") == hasattr(dc("a"), "__dict__") == (not slots)


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_defaults_are_made_for_each_instance(frozen: bool, slots: bool) -> None:
    _, made = both(frozen, slots)
    one, two = made("a"), made("b")
    one.env["K"] = "v"
    assert two.env == {} and one.env == {"K": "v"}


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_wrong_arguments_are_type_errors(frozen: bool, slots: bool) -> None:
    dc, made = both(frozen, slots)
    for args, kwargs in [((), {}), (("a",), {"colour": 1}), (("a", 1, {}, "", "extra"), {})]:
        with pytest.raises(TypeError):
            dc(*args, **kwargs)
        with pytest.raises(TypeError):
            made(*args, **kwargs)


@pytest.mark.parametrize(("frozen", "slots"), OPTIONS)
def test_replace_pickle_and_copy(frozen: bool, slots: bool) -> None:
    _, made = both(frozen, slots)
    original = made("a", 1, {"K": "v"}, "n")
    changed = rec.replace(original, memory=2)
    assert (changed.memory, changed.name, changed.env, original.memory) == (2, "a", {"K": "v"}, 1)
    with pytest.raises(TypeError, match="no field 'colour'"):
        rec.replace(original, colour=1)
    for clone in (copy.copy(original), copy.deepcopy(original)):
        assert clone == original and clone.note == "n"
    assert copy.deepcopy(original).env is not original.env


def test_records_pickle_when_defined_at_module_level() -> None:
    from reconciler.models.state import OwnedRecord

    record = OwnedRecord(name="a", status="running", spec={"cpus": 1}, restarts=2)
    assert pickle.loads(pickle.dumps(record)) == record


def test_explicit_methods_are_kept() -> None:
    @rec.record(frozen=True)
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __hash__(self) -> int:
            return 42

    assert repr(Named("a")) == "<a>" and hash(Named("a")) == 42


def test_what_it_does_not_do_it_refuses() -> None:
    with pytest.raises(TypeError, match="follows a default"):

        @rec.record
        class Order:
            a: int = 1
            b: int

    with pytest.raises(TypeError, match="__post_init__"):

        @rec.record
        class Post:
            a: int

            def __post_init__(self) -> None:
                pass

    @rec.record
    class Base:
        a: int

    with pytest.raises(TypeError, match="inherit"):

        @rec.record
        class Child(Base):
            b: int

    with pytest.raises(ValueError):
        rec.field(default=1, default_factory=list)


def test_the_first_instances_made_at_once_are_all_whole() -> None:
    """``__init__`` is compiled when the first instance is made; threads
    making the first ones at the same time all get complete instances."""

    @rec.record(frozen=True, slots=True)
    class Pair:
        a: int
        b: list[int] = rec.field(default_factory=list)

    barrier = threading.Barrier(8)
    made: list[Pair] = []

    def make(i: int) -> None:
        barrier.wait()
        made.append(Pair(i))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.a for p in made) == list(range(8)) and all(p.b == [] for p in made)


def test_defining_a_class_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real_exec = exec

    def watching(source: Any, *args: Any) -> None:
        compiled.append(str(source))
        real_exec(source, *args)

    monkeypatch.setattr(rec, "exec", watching, raising=False)

    @rec.record(frozen=True, slots=True)
    class Lazy:
        a: int

    assert compiled == []
    assert Lazy(1).a == 1 and len(compiled) == 1
    assert Lazy(2).a == 2 and len(compiled) == 1


def test_class_variables_are_not_fields_without_postponed_annotations() -> None:
    namespace: dict[str, Any] = {}
    source = (
        "from typing import ClassVar\n"
        "from reconciler.record import record\n"
        "@record(frozen=True, slots=True)\n"
        "class Counted:\n"
        "    limit: ClassVar[int] = 3\n"
        "    plain: ClassVar = 'x'\n"
        "    name: str\n"
    )
    # Compiled without this module's ``from __future__ import annotations``.
    exec(compile(source, "<no-future>", "exec", dont_inherit=True), namespace)
    counted = namespace["Counted"]
    assert rec.fields(counted) == ("name",)
    assert counted("a").name == "a" and counted.limit == 3 and counted.plain == "x"
