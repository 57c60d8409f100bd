"""Reading the event log: `--since` as a duration ago (``90s``, ``10m``, ``2h``, ``1d``), an ISO time or a Unix time."""

from __future__ import annotations

import re
from datetime import datetime

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """The Unix time ``text`` names; ValueError with what is accepted. An ISO time without a zone is local."""
    t = text.strip()
    if m := DURATION_RE.match(t):
        return now - float(m[1]) * UNITS[m[2]]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: use a duration ago (30s, 10m, 2h, 1d), an ISO time "
                         "(2026-05-01T12:00) or a Unix time") from None
