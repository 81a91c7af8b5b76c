"""Spend and audit at scale: 1,000,000 ledger rows.

1. Loads N ledger rows (100 runs, 30 days) into a SQLite file (or reuses --db).
2. Times ``/spend``'s work — summarize_ledger from the aggregates plus the
   table rendering — against a raw SQL GROUP BY scan of the same rows.
3. Runs the audit export (JSON Lines to /dev/null) in a fresh process and
   reports its peak RSS (goal: under 150 MB) and rows/s.

    python -P bench/spend.py [--rows 1000000] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.telegram.render import spend_table  # noqa: E402
from storage.records import NewLedgerEntry, RunUpsert  # noqa: E402
from storage.store import Store  # noqa: E402

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"),
          ("google", "gemini-2.5-flash"), ("acme", "mystery-1")]


def load(url: str, rows: int) -> float:
    store = Store.from_url(url)
    store.migrate()
    rng = random.Random(7)
    for i in range(100):
        store.upsert_run(RunUpsert(id=f"run-{i}", name=f"agent-{i % 7}",
                                   metadata={"team": f"team-{i % 5}"}))
    start = datetime(2026, 10, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    batch = []
    for n in range(rows):
        provider, model = rng.choice(MODELS)
        priced = model != "mystery-1"
        batch.append(NewLedgerEntry(
            run_id=f"run-{n % 100}", provider=provider, model=model,
            prompt_tokens=rng.randint(10, 5000), completion_tokens=rng.randint(1, 800),
            dollars=rng.random() / 50 if priced else None, priced=priced,
            created_at=start + timedelta(seconds=rng.random() * 30 * 86400)))
        if len(batch) == 2000:
            store.append_ledger(batch)
            batch = []
    if batch:
        store.append_ledger(batch)
    elapsed = time.perf_counter() - t0
    store.close()
    return rows / elapsed


def time_spend(url: str, reps: int = 5) -> list[tuple[str, float, float]]:
    store = Store.from_url(url)
    out = []
    raw = {
        "model": 'SELECT model, count(*), sum(prompt_tokens), sum(completion_tokens), '
                 'sum(dollars_nano) FROM ledger_entry GROUP BY model',
        "day": 'SELECT substr(created_at, 1, 10), count(*), sum(prompt_tokens), '
               'sum(completion_tokens), sum(dollars_nano) FROM ledger_entry GROUP BY 1',
    }
    for by in ("model", "day"):
        ours, scan = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            summary = store.summarize_ledger(by)
            spend_table(summary, "all time")
            ours.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            rows = store.db.execute_sql(raw[by]).fetchall()
            scan.append((time.perf_counter() - t0) * 1000)
        assert summary.total.calls == sum(r[1] for r in rows)
        out.append((f"/spend {by} (summary + table)", statistics.median(ours),
                    statistics.median(scan)))
    store.close()
    return out


def export_child(url: str) -> None:
    """Run in a fresh process: export everything to /dev/null, print count/time/RSS."""
    from bot.audit import export

    store = Store.from_url(url)
    t0 = time.perf_counter()
    with open("/dev/null", "w") as out:
        count = export(store, out)
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": count, "seconds": elapsed, "peak_rss_mb": rss_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", help="reuse (or create) this SQLite file")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(args.export_child)
        return
    tmp = tempfile.mkdtemp()
    path = Path(args.db) if args.db else Path(tmp) / "spend.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        rate = load(url, args.rows)
        print(f"loaded {args.rows:,} ledger rows at {rate:,.0f} rows/s")
    for name, ours, scan in time_spend(url):
        print(f"{name:<32} {ours:8.2f} ms   raw SQL scan {scan:8.2f} ms   "
              f"{scan / ours:5.1f}x faster")
    child = subprocess.run([sys.executable, "-P", __file__, "--export-child", url],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout)
    print(f"audit export: {result['rows']:,} rows in {result['seconds']:.1f} s "
          f"({result['rows'] / result['seconds']:,.0f} rows/s), "
          f"peak RSS {result['peak_rss_mb']:.1f} MB (goal < 150 MB)")


if __name__ == "__main__":
    main()
