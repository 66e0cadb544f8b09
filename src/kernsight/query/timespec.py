"""since / until: a duration back from now (30s, 5m, 2h, 1d, 250ms) or an ISO-8601 time."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_time(value: str | None, now_ns: int | None = None) -> int | None:
    """-> ns since the epoch (UTC), or None for no bound. Raises ValueError saying why."""
    if value is None or value == "":
        return None
    now_ns = time.time_ns() if now_ns is None else now_ns
    m = _DUR.match(value)
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_NS[m.group(2)])
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"cannot read time {value!r}: use a duration back from now (30s, 5m, 2h, 1d) "
            "or an ISO-8601 timestamp (2026-11-24T09:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000
