"""Byte sizes as people write them ("6GiB", "512M", "4.5 GB") and as people read them."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "b": 1,
          "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4,
          "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """'6GiB' -> 6442450944; plain numbers are bytes. Decimal units (GB) and binary units (GiB) both work."""
    if isinstance(text, int):
        return text
    m = _SIZE.fullmatch(str(text))
    unit = m[2].lower() if m else None
    if not m or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}: expected a number with an optional unit, e.g. 6GiB, 512MB, 4e9")
    value = float(m[1]) * _UNITS[unit]
    if value <= 0:
        raise UsageError(f"bad size {text!r}: must be positive")
    return int(value)


def human(nbytes: float) -> str:
    """1536 -> '1.50 KiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


def count(n: float) -> str:
    """20914757184 -> '20.91 B'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))
