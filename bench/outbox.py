"""Benchmark finding the owed Telegram copies in a long message history.

Run with ``python bench/outbox.py [--requests 300000] [--reps 20] [--postgres URL]``.
SQLite always (a temp file); PostgreSQL too when ``--postgres`` names a server (a
fresh database is created there and dropped at the end).

1. Fills ``--requests`` decided approvals with one copy per chat (two chats), all
   paid (``owed`` false, showing the outcome), in plain SQL; then adds a few owed
   copies through the Store: three pending requests and two decided before they
   were posted. ANALYZE.
2. Times ``Store.messages_owed(chat)`` (the partial index on owed copies) against
   the query it replaced (a join filtered on ``shown IS NULL OR shown != status``),
   checks both find the same copies, and prints the median of ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where its files would shadow the
# standard library and the storage package: drop it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench.scratch import scratch_database  # noqa: E402
from storage.approvals import approval_record  # noqa: E402
from storage.clock import to_text  # noqa: E402
from storage.copies import _message_record  # noqa: E402
from storage.db import is_postgres  # noqa: E402
from storage.models import ApprovalMessageRow, ApprovalRow  # noqa: E402
from storage.records import NewApproval  # noqa: E402
from storage.store import Store  # noqa: E402

CHATS = (1001, -100777)
START = datetime(2026, 9, 1, tzinfo=UTC)


def series(store: Store, n: int) -> str:
    """A row source ``n(i)`` of 0..n-1 on either backend (prefix for INSERT ... SELECT)."""
    if is_postgres(store.db):
        return f"SELECT i FROM generate_series(0, {n - 1}) AS i"
    return f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n - 1}) " \
           "SELECT i FROM s"


def fill(store: Store, requests: int) -> float:
    """``requests`` decided approvals, each with one paid copy per chat; returns seconds."""
    at = to_text(START)
    started = time.perf_counter()
    cat = "||"
    with store.db.atomic():
        store.db.execute_sql(
            'INSERT INTO "approval" ("id", "agent", "kind", "summary", "payload", "status", '
            '"decided_by", "decided_at", "callback_data", "adapter", "created_at", "expires_at") '
            f"SELECT 'old' {cat} i, 'builder', 'shell', 'rm -rf build/' {cat} i, "
            f"'{{\"cmd\": \"rm -rf build/' {cat} i {cat} '\"}}', 'approved', "
            f"'telegram:1001 (@alice)', '{at}', 'appr:old' {cat} i, 'telegram', '{at}', '{at}' "
            f"FROM ({series(store, requests)}) AS n")
        for chat in CHATS:
            store.db.execute_sql(
                'INSERT INTO "approval_message" ("approval_id", "chat_id", "message_id", "shown", '
                f'"updated_at", "owed") SELECT \'old\' {cat} i, {chat}, i + 1, \'approved\', '
                f"'{at}', FALSE FROM ({series(store, requests)}) AS n")
    for table in ("approval", "approval_message"):
        store.db.execute_sql(f'ANALYZE "{table}"')
    return time.perf_counter() - started


def add_owed(store: Store) -> None:
    """Three pending requests (owed sends) and two decided before they were posted."""
    now = START + timedelta(days=1)
    for i in range(5):
        approval, _ = store.create_approval(NewApproval(
            agent="builder", kind="shell", summary=f"new {i}", ttl_seconds=3600,
            chat_ids=list(CHATS)), now=now + timedelta(seconds=i))
        if i < 2:
            store.resolve_approval(approval.id, "denied", "cli", now=now + timedelta(minutes=1))


def old_query(chat_id: int, limit: int = 200) -> list:
    """The lookup before ``owed``: every copy joined with its approval, filtered."""
    query = (ApprovalMessageRow.select(ApprovalMessageRow, ApprovalRow)
             .join(ApprovalRow)
             .where((ApprovalMessageRow.shown.is_null())
                    | (ApprovalMessageRow.shown != ApprovalRow.status))
             .where(ApprovalMessageRow.chat_id == chat_id)
             .order_by(ApprovalMessageRow.id)
             .limit(limit))
    return [(_message_record(r), approval_record(r.approval)) for r in query]


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench(store: Store, backend: str, args, results: list) -> None:
    store.migrate()
    seconds = fill(store, args.requests)
    add_owed(store)
    print(f"{backend}: filled {args.requests:,} decided requests "
          f"({args.requests * len(CHATS):,} paid copies) in {seconds:.1f} s", flush=True)
    for chat in CHATS:
        new = sorted((ref.id, a.id) for ref, a in store.messages_owed(chat))
        old = sorted((ref.id, a.id) for ref, a in old_query(chat))
        assert new == old and len(new) == 5, (new, old)
    chat = CHATS[0]
    owed = median_ms(lambda: store.messages_owed(chat), args.reps)
    old = median_ms(lambda: old_query(chat), max(3, args.reps // 4))
    results.append((backend, f"{owed:.3f} ms", f"{old:.1f} ms", f"{old / owed:,.0f}x"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=20, help="repetitions per timing (median)")
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL (a server URL; a fresh database is used)")
    args = parser.parse_args(argv)
    results: list = []
    with tempfile.TemporaryDirectory(prefix="tapgate-bench-") as directory:
        store = Store.from_url(f"sqlite:///{Path(directory) / 'bench.db'}")
        try:
            bench(store, "sqlite", args, results)
        finally:
            store.close()
    if args.postgres:
        with scratch_database(args.postgres) as url:
            store = Store.from_url(url)
            try:
                bench(store, "postgres", args, results)
            finally:
                store.close()
    print()
    print(f"owed lookup for one chat: {args.requests:,} decided requests x {len(CHATS)} chats, "
          f"5 owed copies per chat; median of {args.reps} (old query: of {max(3, args.reps // 4)})")
    header = ("backend", "messages_owed", "old query", "speed-up")
    widths = [max(len(str(r[i])) for r in [header, *results]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *results]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
