"""Time windows as people type them: ``today``, ``7d``, ``30d``, dates and RFC 3339.

Every instant Tapgate accepts from outside (``/spend`` in Telegram, ``tapgate
spend --since/--until``, the socket API's times) passes :func:`bounded`: between
1970-01-01 and 9998-12-31 UTC. The storage does day arithmetic on these (the
day before, the day after, midnight of the next day), which must never leave
the range ``datetime`` can hold; a time outside it is the caller's error, said
plainly, never an overflow deep inside.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from storage.clock import start_of_day
from storage.errors import InvalidArgument

RELATIVE = re.compile(r"^(\d+)([hdw])$")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
RANGE_TEXT = "between 1970-01-01 and 9998-12-31"
ECHO_MAX = 40  # how much of a bad input an error quotes back


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= ECHO_MAX else text[: ECHO_MAX - 1] + "…")


def bounded(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive means UTC) if it lies between
    1970-01-01 and 9998-12-31; InvalidArgument otherwise."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC equivalent
        raise InvalidArgument(f"time out of range: use a time {RANGE_TEXT}") from None
    if not EARLIEST <= value <= LATEST:
        raise InvalidArgument(f"time {value.date().isoformat()} out of range: use a time {RANGE_TEXT}")
    return value


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """``today``, ``yesterday``, ``7d``/``12h``/``2w`` ago, ``YYYY-MM-DD`` (midnight UTC),
    or RFC 3339 (a time without a zone is UTC); always :func:`bounded`."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    if value == "today":
        return bounded(start_of_day(now))
    if value == "yesterday":
        return bounded(start_of_day(now) - timedelta(days=1))
    match = RELATIVE.match(value)
    if match:
        amount, unit = match.group(1), match.group(2)
        try:
            # Any count past 1970 fails below; the digit cap keeps int() and timedelta sane.
            if len(amount) > 9:
                raise OverflowError
            return bounded(now - timedelta(hours={"h": 1, "d": 24, "w": 168}[unit] * int(amount)))
        except (OverflowError, InvalidArgument):
            raise InvalidArgument(f"time {_shown(text)} is too far back: use a time "
                                  f"{RANGE_TEXT}") from None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid time {_shown(text)}: use RFC 3339, YYYY-MM-DD, today, or 7d / 30d"
        ) from None
    return bounded(parsed)


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
