"""Parsing of sizes ("4MiB") and durations ("60s") used in the mount table."""

import re

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUM_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value) -> int:
    """Bytes from an int or a string like '512MiB', '2GB', '4096'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '512MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    m = _NUM_UNIT.match(str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size like '512MiB' or '2GB', got {value!r}")
    n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if n != int(n):  # '1.5B' was 1 byte
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(n)


def parse_duration(value) -> float:
    """Seconds from a number or a string like '60s', '5m', '500ms'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '60s', got {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite duration like '60s', got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    m = _NUM_UNIT.match(str(value))
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"expected a duration like '60s', '5m' or '500ms', got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
