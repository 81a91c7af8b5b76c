"""Spend summaries at scale: 100,000 runs in the window (no IN-list of run ids), and sums
past SQLite's 64-bit SUM() (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime

from peewee import AutoField

from storage.clock import to_text
from storage.models import LedgerDailyRow, LedgerRow, RunRow
from storage.records import NewLedgerEntry, RunUpsert

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RUNS = 100_000


def _insert(db, model, rows: list[dict]) -> None:
    """Bulk insert with one prepared statement (peewee's insert_many is far slower here);
    fields left out take their defaults."""
    fields = [f for f in model._meta.sorted_fields if not isinstance(f, AutoField)]
    names = ", ".join(f'"{f.column_name}"' for f in fields)
    marks = ", ".join([db.param] * len(fields))

    def value(f, row):
        if f.name in row:
            return f.db_value(row[f.name])
        default = f.default() if callable(f.default) else f.default
        return f.db_value(default)

    sql = f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks})'
    db.cursor().executemany(sql, [tuple(value(f, row) for f in fields) for row in rows])


def test_spend_by_name_and_metadata_with_100000_runs(store):
    day, now = to_text(T0)[:10], to_text(T0)
    edge = to_text(T0.replace(day=2, hour=6))
    store.db.connect(reuse_if_open=True)
    with store.db.atomic():
        _insert(store.db, RunRow, [{"id": f"r{i}", "name": f"team-{i % 7}",
                          "metadata": {"team": f"t{i % 3}"} if i % 10 else {},
                          "created_at": now, "updated_at": now} for i in range(RUNS)])
        _insert(store.db, LedgerDailyRow, [{"day": day, "run": f"r{i}", "provider": "openai",
                                  "model": "gpt-4o", "calls": 1, "prompt_tokens": 2,
                                  "completion_tokens": 1, "dollars_nano": 1000}
                                 for i in range(RUNS)])
        # A partial day at the window's end is read from the raw rows: one per run too.
        _insert(store.db, LedgerRow, [{"run": f"r{i}", "provider": "openai", "model": "gpt-4o",
                             "prompt_tokens": 1, "dollars_nano": 10, "created_at": edge}
                            for i in range(RUNS)])
    until = T0.replace(day=2, hour=12)
    by_name = store.summarize_ledger("name", T0, until)
    assert {g.key: g.calls for g in by_name.groups} == {
        f"team-{k}": 2 * len(range(k, RUNS, 7)) for k in range(7)}
    assert by_name.total.calls == 2 * RUNS
    assert by_name.total.dollars == RUNS * 1010 / 1e9
    by_team = store.summarize_ledger("metadata.team", T0, until)
    expected = {"(none)": 2 * RUNS // 10}
    for i in range(RUNS):
        if i % 10:
            key = f"t{i % 3}"
            expected[key] = expected.get(key, 0) + 2
    assert {g.key: g.calls for g in by_team.groups} == expected
    assert by_team.total.prompt_tokens == 3 * RUNS


def test_sums_past_64_bits_stay_exact(store):
    """Ten runs at $999M each: $9.99B is 9.99e18 nano-dollars, past 2**63 ≈ 9.22e18,
    where SQLite's SUM() raises "integer overflow"."""
    for r in range(10):
        store.upsert_run(RunUpsert(id=f"big{r}", name="big"), now=T0)
        for _ in range(3):
            store.append_ledger([NewLedgerEntry(run_id=f"big{r}", model="m", provider="p",
                                                prompt_tokens=10**12 // 3, dollars=1e6,
                                                created_at=T0) for _ in range(333)])
    expected_dollars = 10 * 999 * 1e6
    for by in ("model", "provider", "day", "name"):
        summary = store.summarize_ledger(by)
        assert summary.total.dollars == expected_dollars, by
        assert summary.total.calls == 9990, by
        assert summary.total.prompt_tokens == 9990 * (10**12 // 3), by
    partial = store.summarize_ledger("model", T0.replace(hour=0, minute=0, second=0),
                                     T0.replace(hour=12))
    assert partial.total.dollars == expected_dollars
