"""Human sizes ("512M", "2G", "1.5GiB") to numbers, and back. Binary units throughout, as QEMU uses them."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, default_unit: str = "") -> int:
    """Bytes in ``text``; a bare number is in ``default_unit`` ("M" for memory). ValueError names the bad text."""
    if isinstance(text, int):
        return text * _UNITS[default_unit]
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size: use a number with K, M, G or T, e.g. 512M or 2G")
    unit = m.group(2).upper() or default_unit
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    """Shortest exact-enough binary form: 256M, 1.5G, 10G."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            v = n / _UNITS[unit]
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"
