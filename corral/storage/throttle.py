"""Per-disk I/O limits: what the user asks (`--iops 100 --write-bps 1M`) as QEMU throttle-group ``limits`` fields.

Each extra disk has its own throttle group (QEMU's ``throttle-group`` object, with a ``throttle`` filter node
above the disk's qcow2 node). Limits are stored only when set; QEMU gets all six fields at runtime, 0 meaning
unlimited, so that a removed limit really goes away.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.errors import InvalidInput
from corral.vm.sizes import format_size, parse_size

#: CLI/API name -> QEMU throttle-group limits field. Totals and read/write limits of the same kind exclude each
#: other (QEMU refuses both at once).
FIELDS = {
    "iops": "iops-total", "read_iops": "iops-read", "write_iops": "iops-write",
    "bps": "bps-total", "read_bps": "bps-read", "write_bps": "bps-write",
}  # fmt: skip
MAX_LIMIT = 10**15  # QEMU's THROTTLE_VALUE_MAX


def parse_value(key: str, value: str | int) -> int:
    """A limit from the user: bytes per second accept sizes (``1M``), operations per second a plain number."""
    try:
        n = parse_size(value) if key.endswith("bps") else int(value)
    except ValueError as exc:
        raise InvalidInput(f"--{key.replace('_', '-')}: {exc}") from None
    if not 0 <= n <= MAX_LIMIT:
        raise InvalidInput(f"--{key.replace('_', '-')} must be between 0 (no limit) and {MAX_LIMIT}")
    return n


def merge(current: Mapping[str, int], changes: Mapping[str, int | None]) -> dict[str, int]:
    """``current`` (QEMU fields) with ``changes`` (CLI names; 0 removes a limit, None leaves it) applied, checked."""
    out = dict(current)
    for key, value in changes.items():
        if key not in FIELDS:
            raise InvalidInput(f"unknown I/O limit '{key}' (known: {', '.join(FIELDS)})")
        if value is None:
            continue
        if value:
            out[FIELDS[key]] = value
        else:
            out.pop(FIELDS[key], None)
    check(out)
    return out


def check(limits: Mapping[str, int]) -> None:
    for kind in ("iops", "bps"):
        if f"{kind}-total" in limits and ({f"{kind}-read", f"{kind}-write"} & set(limits)):
            raise InvalidInput(f"a total {kind} limit and a read or write {kind} limit cannot be combined: "
                               f"set either --{kind} or --read-{kind}/--write-{kind} (0 removes one)")


def for_qemu(limits: Mapping[str, int]) -> dict[str, int]:
    """Every field, 0 where no limit is set: what qom-set gets so that removed limits are cleared."""
    return {f: int(limits.get(f, 0)) for f in FIELDS.values()}


def describe(limits: Mapping[str, int]) -> str:
    """`write_bps=1M iops=100`, or `-` when unlimited."""
    names = {v: k for k, v in FIELDS.items()}
    parts = []
    for f, v in sorted(limits.items()):
        shown = format_size(v) if f.startswith("bps") else str(v)
        parts.append(f"{names.get(f, f)}={shown}")
    return " ".join(parts) or "-"

