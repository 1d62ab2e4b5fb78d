"""Sizes, CPUs, durations and names: what users write, and how it prints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.models import units

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * MiB),
        ("1GiB", GiB),
        ("2GiB", 2 * GiB),
        ("64KiB", 64 * KiB),
        ("1TiB", TiB),
        ("1G", GiB),
        ("512M", 512 * MiB),
        ("4K", 4 * KiB),
        ("1048576", MiB),
        ("1048576B", MiB),
        (" 1GiB ", GiB),
        ("1 GiB", GiB),
        (536870912, 512 * MiB),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("512XB", "expected a size such as 512MiB or 2GiB"),
        ("-1GiB", "expected a size such as 512MiB or 2GiB"),
        ("1.5GiB", "expected a size such as 512MiB or 2GiB"),
        ("GiB", "expected a size such as 512MiB or 2GiB"),
        ("", "expected a size such as 512MiB or 2GiB"),
        ("1gib", "expected a size such as 512MiB or 2GiB"),
        ("0", "must be greater than zero"),
        ("0GiB", "must be greater than zero"),
        (0, "must be greater than zero"),
        (-5, "must be greater than zero"),
        (True, "expected a size"),
        (1.5, "expected a size"),
        (None, "expected a size"),
        ("2048TiB", "must be at most 1PiB"),
    ],
)
def test_parse_size_rejects(value: object, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        units.parse_size(value)
    assert f"invalid size {value!r}" in str(caught.value)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (512 * MiB, "512MiB"),
        (GiB, "1GiB"),
        (1536 * MiB, "1536MiB"),
        (4 * GiB, "4GiB"),
        (KiB, "1KiB"),
        (1000, "1000B"),
        (1, "1B"),
        (MiB + KiB, "1025KiB"),
        (2 * TiB, "2TiB"),
    ],
)
def test_format_size_uses_the_largest_exact_iec_unit(size: int, text: str) -> None:
    assert units.format_size(size) == text


@given(st.integers(min_value=1, max_value=units.MAX_SIZE))
def test_sizes_round_trip(size: int) -> None:
    assert units.parse_size(units.format_size(size)) == size


@pytest.mark.parametrize(("value", "cpus"), [(1, 1), (2, 2), ("2", 2), (" 4 ", 4), ("1024", 1024)])
def test_parse_cpus(value: object, cpus: int) -> None:
    assert units.parse_cpus(value) == cpus


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, "must be at least 1"),
        ("0", "must be at least 1"),
        (-1, "must be at least 1"),
        ("-1", "expected a positive integer"),
        ("1.5", "expected a positive integer"),
        (1.5, "expected a positive integer"),
        ("two", "expected a positive integer"),
        ("²", "expected a positive integer"),
        (True, "expected a positive integer"),
        (None, "expected a positive integer"),
        (1025, "must be at most 1024"),
    ],
)
def test_parse_cpus_rejects(value: object, why: str) -> None:
    with pytest.raises(ValueError, match=f"invalid cpus {value!r}".replace(".", r"\.")) as caught:
        units.parse_cpus(value)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (0, 0.0),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1d", 86400.0),
        ("2.5s", 2.5),
        ("15", 15.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert units.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", " ", "abc", "10x", "1h30", "-1s", "s", "10 s", True, None, -1]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        units.parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "0.2s"),
        (0.0, "0s"),
        (1.0, "1s"),
        (12.34, "12.3s"),
        (90, "1m30s"),
        (120, "2m"),
        (3600, "1h"),
        (3660, "1h1m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize("name", ["a", "0", "agent-1", "worker-10", "a" * 63, "9-lives", "a--b"])
def test_valid_names(name: str) -> None:
    assert units.is_valid_name(name)
    assert units.name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "-a", "Agent", "a_b", "a.b", "a b", "a/b", "ä", "a\n", "--memory", "a" * 64, None, 1],
)
def test_invalid_names(name: object) -> None:
    assert not units.is_valid_name(name)
    problem = units.name_problem(name)
    assert problem is not None and problem.startswith("invalid name")


def test_a_long_name_problem_says_the_limit() -> None:
    problem = units.name_problem("a" * 64)
    assert problem is not None and "at most 63 characters" in problem
    problem = units.name_problem("Bad")
    assert problem == (
        "invalid name 'Bad': use 1-63 lowercase letters, digits and '-', "
        "starting with a letter or digit"
    )
