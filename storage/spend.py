"""Spend summaries: the ledger grouped by a dimension over a time window.

Answers from the per-day aggregates for every whole UTC day in the window and
from the raw rows only for the partial days at its edges, so it is exact
without scanning the ledger. Grouping by a run's name or metadata joins the
runs in SQL (no list of run ids, however many runs the window holds), and on
SQLite every sum is taken as two partial sums that cannot overflow its 64-bit
``SUM()``, whatever the number of runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import SQL, fn

from storage.base import unit_of_work
from storage.clock import as_utc, day_of, next_day, previous_day, start_of_day, to_text
from storage.db import is_sqlite
from storage.errors import InvalidArgument
from storage.models import LedgerDailyRow, LedgerRow, RunRow
from storage.records import METADATA_KEY, UsageGroup, UsageSummary, from_nano
from storage.runs import RunStore

BASIC_DIMENSIONS = ("provider", "model", "day", "name")
NONE_KEY = "(none)"
_HALF = 2**32  # SQLite sums are split at 32 bits: SUM(x / 2**32) and SUM(x & (2**32 - 1))


def validate_by(by: str) -> str | None:
    """Check a grouping dimension; return the metadata key for ``metadata.KEY``."""
    if by in BASIC_DIMENSIONS:
        return None
    if by.startswith("metadata."):
        key = by[len("metadata."):]
        if METADATA_KEY.match(key):
            return key
        raise InvalidArgument(f"invalid metadata key {key!r}: it must match [A-Za-z0-9_-]+")
    raise InvalidArgument(
        f"invalid grouping {by!r}: use provider, model, day, name or metadata.KEY"
    )


@dataclass
class _Window:
    """A [since, until) window cut into whole days and partial-day edges."""

    first_day: str | None  # first whole day (None = unbounded below)
    last_day: str | None  # last whole day (None = unbounded above)
    has_days: bool
    edges: list[tuple[str, str]]  # [start, end) text ranges read from raw rows


def _cut(since: datetime | None, until: datetime | None) -> _Window:
    if since is not None and until is not None and since >= until:
        return _Window(None, None, False, [])
    edges: list[tuple[datetime, datetime]] = []
    first_day = last_day = None
    if since is not None:
        if since == start_of_day(since):
            first_day = day_of(since)
        else:
            first_day = next_day(day_of(since))
            midnight = start_of_day(since) + timedelta(days=1)
            edges.append((since, midnight if until is None else min(midnight, until)))
    if until is not None:
        # Whole days end before until's day; the part of that day before until is an edge.
        last_day = previous_day(day_of(until))
        start = start_of_day(until)
        if until != start and (since is None or start >= since):
            edges.append((start, until))
    has_days = first_day is None or last_day is None or first_day <= last_day
    return _Window(first_day, last_day, has_days, [(to_text(a), to_text(b)) for a, b in edges])


class SpendStore(RunStore):
    """Spend summaries of the Store."""

    @unit_of_work
    def summarize_ledger(self, by: str = "model", since: datetime | None = None,
                         until: datetime | None = None) -> UsageSummary:
        """Spend grouped by ``by`` over ``[since, until)`` (None = unbounded).

        ``by`` is provider, model, day (UTC date of the call), name (the run's
        name) or ``metadata.KEY`` (the run's metadata; a missing key groups as
        ``(none)``). Groups are ordered by dollars descending, then key.
        """
        meta_key = validate_by(by)
        since = as_utc(since) if since else None
        until = as_utc(until) if until else None
        window = _cut(since, until)
        dim = by if meta_key is None else "metadata"
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        if window.has_days:
            self._add_daily(sums, dim, window.first_day, window.last_day)
        for start, end in window.edges:
            self._add_raw(sums, dim, start, end)
        if meta_key is not None:
            sums = _regroup_by_metadata(sums, meta_key)
        groups = [UsageGroup(key=k, calls=s[0], prompt_tokens=s[1], completion_tokens=s[2],
                             dollars=from_nano(s[3])) for k, s in sums.items()]
        nano = {k: s[3] for k, s in sums.items()}
        groups.sort(key=lambda g: (-nano[g.key], g.key))
        total = UsageGroup(key="total", calls=sum(g.calls for g in groups),
                           prompt_tokens=sum(g.prompt_tokens for g in groups),
                           completion_tokens=sum(g.completion_tokens for g in groups),
                           dollars=from_nano(sum(nano.values())))
        unpriced = sum(s[4] for s in sums.values())
        return UsageSummary(by=by, since=since, until=until, groups=groups, total=total,
                            unpriced_calls=unpriced)

    def _sums(self, *columns) -> list:
        """SUM of each column; on SQLite two partial sums each (see :data:`_HALF`)."""
        if not is_sqlite(self.db):
            return [fn.SUM(c) for c in columns]
        out = []
        for c in columns:
            out += [fn.SUM(c / _HALF), fn.SUM(c.bin_and(_HALF - 1))]
        return out

    def _fold(self, values: list) -> list[int]:
        """The sums :meth:`_sums` selected, as one exact integer each."""
        if not is_sqlite(self.db):
            return [int(v or 0) for v in values]
        return [int(hi or 0) * _HALF + int(lo or 0) for hi, lo in zip(values[::2], values[1::2],
                                                                      strict=True)]

    def _add(self, sums, query) -> None:
        for k, calls, *values in query.tuples():
            if isinstance(k, dict):  # a run's metadata, decoded by its field: key it as text
                k = json.dumps(k, sort_keys=True)
            target = sums[k]
            for i, v in enumerate([int(calls or 0), *self._fold(values)]):
                target[i] += v

    def _add_daily(self, sums, dim: str, first: str | None, last: str | None) -> None:
        d = LedgerDailyRow
        column = {"provider": d.provider, "model": d.model, "day": d.day, "name": RunRow.name,
                  "metadata": RunRow.metadata}[dim]
        query = (d.select(column.alias("k"), fn.SUM(d.calls),
                          *self._sums(d.prompt_tokens, d.completion_tokens, d.dollars_nano,
                                      d.unpriced_calls))
                 .group_by(column))
        if dim in ("name", "metadata"):
            query = query.join(RunRow, on=(d.run == RunRow.id))
        if first is not None:
            query = query.where(d.day >= first)
        if last is not None:
            query = query.where(d.day <= last)
        self._add(sums, query)

    def _add_raw(self, sums, dim: str, start: str, end: str) -> None:
        r = LedgerRow
        column = {"provider": r.provider, "model": r.model,
                  # Literal bounds: bound parameters would make PostgreSQL see the SELECT's
                  # and the GROUP BY's SUBSTR as different expressions (and refuse the query).
                  # No coercion: the day is text, not a timestamp for TimestampField to parse.
                  "day": fn.SUBSTR(r.created_at, SQL("1"), SQL("10")).coerce(False),
                  "name": RunRow.name, "metadata": RunRow.metadata}[dim]
        unpriced = SQL("CASE WHEN priced THEN 0 ELSE 1 END")
        query = (r.select(column.alias("k"), fn.COUNT(r.id),
                          *self._sums(r.prompt_tokens, r.completion_tokens, r.dollars_nano,
                                      unpriced))
                 .where((r.created_at >= start) & (r.created_at < end))
                 .group_by(column))
        if dim in ("name", "metadata"):
            query = query.join(RunRow, on=(r.run == RunRow.id))
        self._add(sums, query)


def _regroup_by_metadata(sums, meta_key: str) -> dict[str, list[int]]:
    """Groups keyed by a run's metadata JSON text → groups keyed by one metadata value."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for text, s in sums.items():
        key = _metadata_value(text, meta_key)
        target = out[key]
        for i, v in enumerate(s):
            target[i] += v
    return out


def _metadata_value(text: str | None, key: str) -> str:
    try:
        value = (json.loads(text) if text else {}).get(key, NONE_KEY)
    except (ValueError, AttributeError):
        return NONE_KEY
    return value if isinstance(value, str) else NONE_KEY
