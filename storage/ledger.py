"""The cost ledger: append-only rows plus per-day aggregates kept in the same transaction.

``summarize_ledger`` answers from the aggregates for every whole UTC day in
the window and from the raw rows only for the partial days at its edges, so
it is exact without scanning the ledger.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import peewee
from peewee import fn
from pydantic import TypeAdapter

from storage.base import columns, grouped, unit_of_work
from storage.clock import (
    from_text,
    to_text,
)
from storage.db import is_sqlite
from storage.errors import BudgetExceeded, LimitExceeded
from storage.models import LedgerDailyRow, LedgerRow, RunRow
from storage.records import (
    MAX_RUN_DOLLARS,
    MAX_RUN_TOKENS,
    NANO,
    LedgerEntry,
    LedgerTotals,
    NewLedgerEntry,
    Run,
    from_nano,
    to_nano,
)
from storage.runs import AlertRule, Guard, RunStore, decode_run, run_record

_ENTRIES = TypeAdapter(list[LedgerEntry])
LEDGER_COLUMNS = ('"run_id"', '"step_index"', '"provider"', '"model"', '"prompt_tokens"',
                  '"completion_tokens"', '"cached_tokens"', '"dollars_nano"', '"priced"',
                  '"price_version"', '"response_id"', '"created_at"')


@dataclass
class LedgerAppend:
    """What an append wrote: the entries, and each touched run as it now stands."""

    entries: list[LedgerEntry]
    runs: dict[str, Run] = field(default_factory=dict)
    halted: list[Run] = field(default_factory=list)


def ledger_record(row: LedgerRow) -> LedgerEntry:
    return LedgerEntry(
        id=row.id,
        run_id=row.run_id,
        step_index=row.step_index,
        provider=row.provider,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        dollars=from_nano(row.dollars_nano),
        priced=row.priced,
        price_version=row.price_version,
        response_id=row.response_id,
        created_at=row.created_at,
    )


def _check_caps(row, added: list[int]) -> None:
    """Refuse usage that would take a run's counters past their caps (nothing is written)."""
    prompt, completion, nano = added
    for name, before, more, cap in (
            ("prompt_tokens", row.usage_prompt_tokens, prompt, MAX_RUN_TOKENS),
            ("completion_tokens", row.usage_completion_tokens, completion, MAX_RUN_TOKENS),
            ("dollars", row.usage_dollars_nano, nano, MAX_RUN_DOLLARS * NANO)):
        if before + more > cap:
            shown = f"${cap / NANO:,.0f}" if name == "dollars" else f"{cap:,} tokens"
            raise LimitExceeded(name, f"run {row.id}'s usage would pass the cap of {shown} "
                                      "per run")


class LedgerStore(RunStore):
    """Ledger operations of the Store."""

    @grouped
    @unit_of_work
    def append_ledger(self, entries: list[NewLedgerEntry], after_usage: Guard | None = None,
                      now: datetime | None = None, alerts: AlertRule | None = None
                      ) -> LedgerAppend:
        """Append entries all-or-nothing, update aggregates and run usage, then apply the guard.

        Any entry for a halted run refuses the whole list (:class:`BudgetExceeded`)
        and any unknown run refuses it (:class:`NotFound`); so does a list that
        would take a run's usage past its caps (:class:`LimitExceeded`). A list
        that crosses a budget is recorded whole (the money is spent) and then the
        run halts; the halted runs are in the result. Alerts that ``alerts`` says
        are due are recorded in the same transaction.
        """
        now = now or self.clock()
        result = LedgerAppend(entries=[])
        if not entries:
            return result
        rows = []
        daily: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
        usage: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        texts: dict[datetime, str] = {}
        for e in entries:
            at = e.created_at or now
            text = texts.get(at)
            if text is None:
                text = texts[at] = to_text(at)
            priced = e.priced and e.dollars is not None
            nano = to_nano(e.dollars) if e.dollars is not None else 0
            rows.append((e.run_id, e.step_index, e.provider, e.model, e.prompt_tokens,
                         e.completion_tokens, e.cached_tokens, nano, priced, e.price_version,
                         e.response_id, text))
            sums = daily[(text[:10], e.run_id, e.provider, e.model)]
            sums[0] += 1
            sums[1] += e.prompt_tokens
            sums[2] += e.completion_tokens
            sums[3] += e.cached_tokens
            sums[4] += nano
            sums[5] += 0 if priced else 1
            run_usage = usage[e.run_id]
            run_usage[0] += e.prompt_tokens
            run_usage[1] += e.completion_tokens
            run_usage[2] += nano
        # Hand-written SQL (rendered once per Store): lists of thousands of rows must
        # take milliseconds, and peewee's query building alone would take far longer.
        with self.write():
            # Lock the runs in one global order: lists naming the same runs in different
            # orders would otherwise deadlock on PostgreSQL's row locks.
            for run_id in sorted(usage):
                row = self._locked_run(run_id)
                if row.status == "halted":
                    raise BudgetExceeded(run_record(row))
                _check_caps(row, usage[run_id])
            ids = self._insert_ledger_rows(rows)
            upsert = self.statement("ledger_daily.upsert", self._daily_upsert_sql)
            # executemany: one prepared statement on SQLite, pipelined round trips
            # with psycopg 3 (a list spread over many days and runs has many keys).
            with peewee.__exception_wrapper__:
                self.db.cursor().executemany(upsert, [(day, run_id, provider, model, *s)
                                                      for (day, run_id, provider, model), s
                                                      in daily.items()])
            add_usage = self.statement("run.add_usage", self._add_usage_sql)
            for run_id, (prompt, completion, nano) in usage.items():
                updated = self.db.execute_sql(
                    add_usage, (prompt, completion, nano, to_text(now), run_id)).fetchall()
                run = run_record(decode_run(updated[0]))
                reason = after_usage(run, now) if after_usage else None
                if reason:
                    run = self._halt(run_id, reason, now)
                    result.halted.append(run)
                result.runs[run_id] = self._record_alerts(run, alerts, now)
        times = {text: from_text(text) for text in texts.values()}
        # One validator call for the list (~1.5 µs a record; model_construct costs ~8).
        result.entries = _ENTRIES.validate_python([
            {"id": i, "run_id": r[0], "step_index": r[1], "provider": r[2], "model": r[3],
             "prompt_tokens": r[4], "completion_tokens": r[5], "cached_tokens": r[6],
             "dollars": from_nano(r[7]), "priced": r[8], "price_version": r[9],
             "response_id": r[10], "created_at": times[r[11]]}
            for i, r in zip(ids, rows, strict=True)])
        return result

    def _insert_ledger_rows(self, rows: list[tuple]) -> list[int]:
        """Insert ledger rows (in :data:`LEDGER_COLUMNS` order); their ids, in order."""
        marks = "(" + ", ".join([self.db.param] * len(LEDGER_COLUMNS)) + ")"
        head = f'INSERT INTO "ledger_entry" ({", ".join(LEDGER_COLUMNS)}) VALUES '
        if is_sqlite(self.db):
            # One prepared statement for every row. Under the write lock nobody else
            # inserts, so the rowids are the consecutive ones ending at the last.
            with peewee.__exception_wrapper__:
                cursor = self.db.cursor()
                cursor.executemany(self.statement("ledger.insert", lambda: head + marks), rows)
                last = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
            return list(range(last - len(rows) + 1, last + 1))
        # psycopg 3: one parsed statement, rows pipelined, each row's id in order. (A
        # multi-row VALUES list costs more in psycopg's query parsing than in the server.)
        ids: list[int] = []
        with peewee.__exception_wrapper__:
            cursor = self.db.cursor()
            cursor.executemany(self.statement("ledger.insert.returning",
                                              lambda: head + marks + ' RETURNING "id"'),
                               rows, returning=True)
            while True:
                ids.extend(r[0] for r in cursor.fetchall())
                if not cursor.nextset():
                    break
        return ids

    def _daily_upsert_sql(self) -> str:
        sums = ("calls", "prompt_tokens", "completion_tokens", "cached_tokens", "dollars_nano",
                "unpriced_calls")
        keys = ("day", "run_id", "provider", "model")
        marks = ", ".join([self.db.param] * (len(keys) + len(sums)))
        update = ", ".join(f'"{c}" = "ledger_daily"."{c}" + EXCLUDED."{c}"' for c in sums)
        names = ", ".join(f'"{c}"' for c in keys + sums)
        target = ", ".join(f'"{c}"' for c in keys)
        return (f'INSERT INTO "ledger_daily" ({names}) VALUES ({marks}) '
                f"ON CONFLICT ({target}) DO UPDATE SET {update}")

    def _add_usage_sql(self) -> str:
        p = self.db.param
        return ('UPDATE "run" SET "usage_prompt_tokens" = "usage_prompt_tokens" + '
                f'{p}, "usage_completion_tokens" = "usage_completion_tokens" + {p}, '
                f'"usage_dollars_nano" = "usage_dollars_nano" + {p}, "updated_at" = {p} '
                f'WHERE "id" = {p} RETURNING {columns(RunRow)}')

    @unit_of_work
    def ledger_for_run(self, run_id: str) -> list[LedgerEntry]:
        """A run's ledger entries in id (append) order."""
        self._must_exist(run_id)
        query = LedgerRow.select().where(LedgerRow.run == run_id).order_by(LedgerRow.id)
        return [ledger_record(r) for r in query]

    def iter_ledger(self, run_id: str | None = None, batch: int = 5000):
        """Stream ledger entries in id order, ``batch`` rows per query (constant memory)."""
        last = 0
        while True:
            rows = self._ledger_page(run_id, last, batch)
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    @unit_of_work
    def _ledger_page(self, run_id: str | None, after_id: int, batch: int) -> list[LedgerEntry]:
        query = LedgerRow.select().where(LedgerRow.id > after_id)
        if run_id is not None:
            query = query.where(LedgerRow.run == run_id)
        return [ledger_record(r) for r in query.order_by(LedgerRow.id).limit(batch)]

    @unit_of_work
    def totals(self, run_id: str) -> LedgerTotals:
        """Count and sums of a run's ledger (zeros for an empty run), from the aggregates."""
        self._must_exist(run_id)
        d = LedgerDailyRow
        row = (d.select(fn.COALESCE(fn.SUM(d.calls), 0).alias("calls"),
                        fn.COALESCE(fn.SUM(d.prompt_tokens), 0).alias("prompt_tokens"),
                        fn.COALESCE(fn.SUM(d.completion_tokens), 0).alias("completion_tokens"),
                        fn.COALESCE(fn.SUM(d.cached_tokens), 0).alias("cached_tokens"),
                        fn.COALESCE(fn.SUM(d.dollars_nano), 0).alias("dollars_nano"),
                        fn.COALESCE(fn.SUM(d.unpriced_calls), 0).alias("unpriced_calls"))
               .where(d.run == run_id).dicts().get())
        return LedgerTotals(run_id=run_id, calls=int(row["calls"]),
                            prompt_tokens=int(row["prompt_tokens"]),
                            completion_tokens=int(row["completion_tokens"]),
                            cached_tokens=int(row["cached_tokens"]),
                            dollars=from_nano(int(row["dollars_nano"])),
                            unpriced_calls=int(row["unpriced_calls"]))
