"""Time windows as people type them: ``today``, ``7d``, ``30d``, dates and RFC 3339."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from storage.clock import start_of_day
from storage.errors import InvalidArgument

RELATIVE = re.compile(r"^(\d+)([hdw])$")


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """``today``, ``yesterday``, ``7d``/``12h``/``2w`` ago, ``YYYY-MM-DD`` (midnight UTC),
    or RFC 3339 (a time without a zone is UTC)."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    if value == "today":
        return start_of_day(now)
    if value == "yesterday":
        return start_of_day(now) - timedelta(days=1)
    match = RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        hours = {"h": 1, "d": 24, "w": 168}[unit] * amount
        return now - timedelta(hours=hours)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid time {text!r}: use RFC 3339, YYYY-MM-DD, today, or 7d / 30d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def describe(since: datetime | None, until: datetime | None) -> str:
    """A short label for a window."""
    def fmt(value: datetime) -> str:
        if value == start_of_day(value):
            return value.strftime("%Y-%m-%d")
        return value.strftime("%Y-%m-%d %H:%M UTC")

    if since is None and until is None:
        return "all time"
    if until is None:
        return f"since {fmt(since)}"
    if since is None:
        return f"until {fmt(until)}"
    return f"{fmt(since)} → {fmt(until)}"
