"""Benchmark the Store's ledger: bulk load, spend summaries, single-entry appends.

Run with ``python bench/storage.py [--rows 1000000] [--runs 100] [--days 30]
[--postgres URL]``. SQLite always (a temp file); PostgreSQL too when ``--postgres``
names a server (a fresh database is created there and dropped at the end).

1. Loads ``--rows`` ledger rows (time-ordered, spread over ``--days`` days, random
   runs / providers / models) through ``Store.append_ledger`` in lists of 2,000.
2. Times ``summarize_ledger`` (answered from the per-day aggregates plus the raw
   rows of partial edge days) against a plain SQL GROUP BY over the raw rows,
   checks both give the same numbers, and prints the median of ``--reps`` runs.
3. Times ``--singles`` single-entry ``append_ledger([entry])`` calls against raw
   single-row INSERT + COMMIT into an equivalent table with the same settings.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where its files would shadow the
# standard library (bench/socket.py) and the storage package (this very file): drop it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import psycopg  # noqa: E402

from bench.scratch import scratch_database  # noqa: E402
from storage.clock import to_text  # noqa: E402
from storage.db import SQLITE_PRAGMAS, is_postgres  # noqa: E402
from storage.records import NewLedgerEntry, RunUpsert, from_nano  # noqa: E402
from storage.store import Store  # noqa: E402

START = datetime(2026, 9, 1, tzinfo=UTC)
BATCH = 2_000
MODELS = [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"),
    ("anthropic", "claude-sonnet-4-0"), ("anthropic", "claude-haiku-4-5"),
    ("google", "gemini-2.5-flash"), ("deepseek", "deepseek-chat"),
    ("mistral", "mistral-large-4"),
]
TEAMS = ["core", "ml", "infra", "data", "web"]
ENVS = ["prod", "staging", "dev"]

Results = list[tuple[str, str, str, str, str]]  # backend, what, store, raw, ratio


def batches(rows: int, runs: list[str], days: int, seed: int = 1) -> Iterator[list]:
    """Time-ordered ledger entries, ``BATCH`` per list."""
    rnd = random.Random(seed)
    span_us = days * 86_400 * 1_000_000
    step = span_us / rows
    batch = []
    for i in range(rows):
        provider, model = rnd.choice(MODELS)
        prompt = rnd.randrange(0, 20_000)
        at = START + timedelta(microseconds=int(i * step + rnd.random() * step))
        dollars = None if rnd.random() < 0.02 else round(prompt * rnd.random() * 1e-6, 9)
        batch.append(NewLedgerEntry(
            run_id=rnd.choice(runs), provider=provider, model=model, prompt_tokens=prompt,
            completion_tokens=rnd.randrange(0, 2_000), cached_tokens=0, dollars=dollars,
            created_at=at))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def median_seconds(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def speed(ratio: float) -> str:
    """``ratio`` = raw time / store time, said the readable way round."""
    return f"{ratio:,.1f}x faster" if ratio >= 1 else f"{1 / ratio:,.1f}x slower"


def raw_group_by(store: Store, by: str, since: datetime | None, until: datetime | None):
    """The plain SQL answer: {key: (calls, prompt, completion, nano)}."""
    p = store.db.param
    params: list = []
    join = ""
    if by == "model":
        key = "l.model"
    elif by == "day":
        key = "substr(l.created_at, 1, 10)"
    else:
        join = "JOIN run r ON r.id = l.run_id"
        meta = by.removeprefix("metadata.")
        if is_postgres(store.db):
            key = f"COALESCE(CAST(r.metadata AS json) ->> {p}, '(none)')"
            params.append(meta)
        else:
            key = f"COALESCE(json_extract(r.metadata, {p}), '(none)')"
            params.append(f"$.{meta}")
    where = []
    if since is not None:
        where.append(f"l.created_at >= {p}")
        params.append(to_text(since))
    if until is not None:
        where.append(f"l.created_at < {p}")
        params.append(to_text(until))
    sql = (f"SELECT {key}, count(*), sum(l.prompt_tokens), sum(l.completion_tokens), "
           f"sum(l.dollars_nano) FROM ledger_entry l {join} "
           + (f"WHERE {' AND '.join(where)} " if where else "") + "GROUP BY 1")
    store.db.connect(reuse_if_open=True)
    return {k: tuple(int(v) for v in rest)
            for k, *rest in store.db.execute_sql(sql, params).fetchall()}


def load(store: Store, args, backend: str, results: Results) -> None:
    runs = []
    for i in range(args.runs):
        run_id = f"run-{i:04d}"
        store.upsert_run(RunUpsert(id=run_id, name=f"agent-{i % 17}",
                                   metadata={"team": TEAMS[i % len(TEAMS)],
                                             "env": ENVS[i % len(ENVS)]}), now=START)
        runs.append(run_id)
    spent = 0.0
    loaded = 0
    for batch in batches(args.rows, runs, args.days):
        t = time.perf_counter()
        store.append_ledger(batch)
        spent += time.perf_counter() - t
        loaded += len(batch)
    rate = loaded / spent
    print(f"[{backend}] loaded {loaded:,} rows in {spent:.1f} s: {rate:,.0f} rows/s")
    results.append((backend, f"bulk load, lists of {BATCH:,} (rows/s)", f"{rate:,.0f}", "",
                    ""))


def summaries(store: Store, args, backend: str, results: Results) -> None:
    windows = {
        "all time": (None, None),
        "partial days": (START + timedelta(days=3, hours=7, minutes=13, seconds=5.5),
                         START + timedelta(days=args.days - 5, hours=16, minutes=2,
                                           microseconds=250_000)),
    }
    for by in ("model", "day", "metadata.team"):
        for label, (since, until) in windows.items():
            store_s, summary = median_seconds(
                lambda by=by, since=since, until=until: store.summarize_ledger(
                    by, since=since, until=until), args.reps)
            raw_s, expected = median_seconds(
                lambda by=by, since=since, until=until: raw_group_by(store, by, since, until),
                args.reps)
            got = {g.key: (g.calls, g.prompt_tokens, g.completion_tokens, g.dollars)
                   for g in summary.groups}
            want = {k: (c, p, cp, from_nano(n)) for k, (c, p, cp, n) in expected.items()}
            if got != want:
                raise SystemExit(f"[{backend}] MISMATCH for by={by} {label}:\n{got}\n{want}")
            calls = summary.total.calls
            print(f"[{backend}] summarize by {by:<13} {label:<12} {calls:>9,} calls: "
                  f"store {store_s * 1e3:8.2f} ms, raw GROUP BY {raw_s * 1e3:8.2f} ms "
                  f"(store {speed(raw_s / store_s)}) - same numbers")
            results.append((backend, f"summarize by {by}, {label} (ms)",
                            f"{store_s * 1e3:.2f}", f"{raw_s * 1e3:.2f}",
                            speed(raw_s / store_s)))


RAW_TABLE = """CREATE TABLE bench_raw_ledger (
    id {id}, run_id VARCHAR(200) NOT NULL, step_index INTEGER NOT NULL, provider TEXT NOT NULL,
    model TEXT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL, dollars_nano BIGINT NOT NULL, priced BOOLEAN NOT NULL,
    price_version TEXT, response_id TEXT, created_at VARCHAR(27) NOT NULL)"""
RAW_INSERT = ("INSERT INTO bench_raw_ledger (run_id, step_index, provider, model, prompt_tokens, "
              "completion_tokens, cached_tokens, dollars_nano, priced, price_version, "
              "response_id, created_at) VALUES ({marks})")


def raw_row(i: int) -> tuple:
    at = to_text(START + timedelta(days=1, microseconds=i * 137))
    return ("run-0000", 0, "openai", "gpt-4o", 1000 + i, 100, 0, 2_500_000, True, None,
            f"resp-{i}", at)


def raw_singles_sqlite(n: int, directory: str) -> float:
    conn = sqlite3.connect(str(Path(directory) / "raw.db"), isolation_level=None)
    for pragma, value in SQLITE_PRAGMAS.items():
        conn.execute(f"PRAGMA {pragma} = {value}")
    conn.execute(RAW_TABLE.format(id="INTEGER PRIMARY KEY"))
    sql = RAW_INSERT.format(marks=", ".join(["?"] * 12))
    t = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        conn.execute(sql, raw_row(i))
        conn.execute("COMMIT")
    spent = time.perf_counter() - t
    conn.close()
    return spent


def raw_singles_postgres(n: int, url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE.format(id="BIGSERIAL PRIMARY KEY"))
        sql = RAW_INSERT.format(marks=", ".join(["%s"] * 12))
        t = time.perf_counter()
        for i in range(n):
            conn.execute(sql, raw_row(i))  # autocommit: one INSERT + COMMIT each
        return time.perf_counter() - t


def singles(store: Store, args, backend: str, raw: Callable[[int], float],
            results: Results) -> None:
    n = args.singles
    entries = [NewLedgerEntry(run_id="run-0000", provider="openai", model="gpt-4o",
                              prompt_tokens=1000 + i, completion_tokens=100, dollars=0.0025,
                              response_id=f"resp-{i}",
                              created_at=START + timedelta(days=1, microseconds=i * 137))
               for i in range(n)]
    t = time.perf_counter()
    for e in entries:
        store.append_ledger([e])
    store_s = time.perf_counter() - t
    raw_s = raw(n)
    print(f"[{backend}] {n:,} single-entry appends: store {n / store_s:,.0f} rows/s, "
          f"raw INSERT+COMMIT {n / raw_s:,.0f} rows/s (store {speed(raw_s / store_s)})")
    results.append((backend, "single-entry append (rows/s)", f"{n / store_s:,.0f}",
                    f"{n / raw_s:,.0f}", speed(raw_s / store_s)))


def bench(store: Store, args, backend: str, raw: Callable[[int], float],
          results: Results) -> None:
    store.migrate()
    load(store, args, backend, results)
    summaries(store, args, backend, results)
    singles(store, args, backend, raw, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per timing (median)")
    parser.add_argument("--singles", type=int, default=5_000)
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL (a server URL; a fresh database is used)")
    args = parser.parse_args(argv)
    if args.days < 7:
        parser.error("--days must be at least 7 (the partial-day window spans days 3..days-5)")
    results: Results = []

    with tempfile.TemporaryDirectory(prefix="tapgate-bench-") as directory:
        store = Store.from_url(f"sqlite:///{Path(directory) / 'bench.db'}")
        try:
            bench(store, args, "sqlite", lambda n: raw_singles_sqlite(n, directory), results)
        finally:
            store.close()

    if args.postgres:
        with scratch_database(args.postgres) as url:
            store = Store.from_url(url)
            try:
                bench(store, args, "postgres", lambda n: raw_singles_postgres(n, url), results)
            finally:
                store.close()

    print()
    print(f"rows={args.rows:,} runs={args.runs} days={args.days} reps={args.reps} "
          f"singles={args.singles:,}")
    header = ("backend", "measure", "store", "raw SQL", "ratio")
    widths = [max(len(str(r[i])) for r in [header, *results]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *results]:
        print("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
