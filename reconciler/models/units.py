"""Parsing and printing of the small value types users write: sizes, CPUs,
durations and names. Pure functions; each raises ``ValueError`` with a
message that says what is expected."""

from __future__ import annotations

import math
import re

NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
_NAME_RE = re.compile(NAME_PATTERN)

_SIZE_RE = re.compile(r"(\d+)\s*(KiB|MiB|GiB|TiB|K|M|G|T|B)?")
_UNITS = {
    None: 1,
    "B": 1,
    "K": 1 << 10,
    "KiB": 1 << 10,
    "M": 1 << 20,
    "MiB": 1 << 20,
    "G": 1 << 30,
    "GiB": 1 << 30,
    "T": 1 << 40,
    "TiB": 1 << 40,
}
#: No sprite can sensibly ask for more than this; it keeps arithmetic bounded.
MAX_SIZE = 1 << 50
MAX_CPUS = 1024

SIZE_EXPECTED = "expected a size such as 512MiB or 2GiB (<int> then KiB, MiB or GiB)"


def parse_size(value: object) -> int:
    """Bytes from ``512MiB``, ``1G``, ``1048576`` or an int."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {SIZE_EXPECTED}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"invalid size {value!r}: {SIZE_EXPECTED}")
        number = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"invalid size {value!r}: {SIZE_EXPECTED}")
    if number <= 0:
        raise ValueError(f"invalid size {value!r}: must be greater than zero")
    if number > MAX_SIZE:
        raise ValueError(f"invalid size {value!r}: must be at most 1PiB")
    return number


def format_size(size: int) -> str:
    """The largest exact IEC unit: 536870912 -> ``512MiB``."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_cpus(value: object) -> int:
    """A positive CPU count from ``2`` or ``"2"``."""
    if isinstance(value, bool):
        raise ValueError(f'invalid cpus {value!r}: expected a positive integer such as 1 or "2"')
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
    else:
        raise ValueError(f'invalid cpus {value!r}: expected a positive integer such as 1 or "2"')
    if number < 1:
        raise ValueError(f"invalid cpus {value!r}: must be at least 1")
    if number > MAX_CPUS:
        raise ValueError(f"invalid cpus {value!r}: must be at most {MAX_CPUS}")
    return number


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_FACTORS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXPECTED = "expected a duration such as 0, 10s, 2m or 1h"


def parse_duration(value: object) -> float:
    """Seconds from ``0``, ``10s``, ``2m``, ``1h30m`` or a number."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {DURATION_EXPECTED}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        seconds = 0.0
        pos = 0
        while pos < len(text):
            match = _DURATION_RE.match(text, pos)
            if match is None or match.end() == pos:
                raise ValueError(f"invalid duration {value!r}: {DURATION_EXPECTED}")
            if match.group(2) is None and (pos > 0 or match.end() != len(text)):
                raise ValueError(f"invalid duration {value!r}: {DURATION_EXPECTED}")
            seconds += float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
            pos = match.end()
    else:
        raise ValueError(f"invalid duration {value!r}: {DURATION_EXPECTED}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: {DURATION_EXPECTED}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid sprite/project name, or None."""
    if is_valid_name(name):
        return None
    shown = repr(name)
    if isinstance(name, str) and len(name) > 63:
        return f"invalid name {shown[:40]}...: at most 63 characters"
    return (
        f"invalid name {shown}: use 1-63 lowercase letters, digits and '-', "
        "starting with a letter or digit"
    )
