"""Durations as people type them: ``90``, ``90s``, ``15m``, ``24h``, ``7d``.

Standard library only: the hooks parse ``--ttl`` with it before anything heavy loads.
"""

from __future__ import annotations

import re

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(value, int | float):
        return float(value)
    match = DURATION.match(str(value))
    if not match:
        raise ValueError(f"invalid duration {value!r} (use seconds or 90s, 15m, 24h, 7d)")
    return float(match.group(1)) * UNITS[match.group(2)]
