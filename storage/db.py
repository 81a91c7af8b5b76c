"""Opening a database from a URL: the one place that knows the backends apart.

``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` opens SQLite in WAL mode
with a busy timeout and foreign keys on; ``postgresql://user:pass@host/db``
opens PostgreSQL through psycopg 3. Everything else about the backends is
shared peewee code.
"""

from __future__ import annotations

import sqlite3
import time
from urllib.parse import urlparse

from peewee import Database, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect, parse

from storage.errors import InvalidArgument

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    # Waiting writers retry for up to 5 s instead of failing with "locked".
    "busy_timeout": 5000,
    "foreign_keys": 1,
    # In WAL mode NORMAL is durable against process crashes (only an OS crash
    # or power cut can lose the last commits) and saves an fsync per commit.
    "synchronous": "normal",
}


class WalSqliteDatabase(SqliteDatabase):
    """SQLite whose connection setup survives other connections opening a new file at once.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers
    "database is locked" at once, without the busy timeout, when another
    connection holds a lock meanwhile (two processes starting on a fresh
    database). The pragmas are idempotent, so they are retried until the timeout.
    """

    def _set_pragmas(self, conn):
        deadline = time.monotonic() + self._timeout
        delay = 0.005
        while True:
            try:
                return super()._set_pragmas(conn)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)


def open_database(url: str) -> Database:
    """Open (lazily; peewee connects on first use per thread) the database at ``url``."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        if url.rstrip("/") in ("sqlite:", "sqlite:///:memory:") or ":memory:" in url:
            raise InvalidArgument(
                "an in-memory SQLite database cannot be shared between threads; use a file"
            )
        kwargs = parse(url)
        kwargs.update(pragmas=SQLITE_PRAGMAS, returning_clause=True, timeout=5)
        return WalSqliteDatabase(**kwargs)
    if scheme in ("postgresql", "postgres"):
        return connect(url)
    raise InvalidArgument(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://..."
    )


def is_postgres(db: Database) -> bool:
    return isinstance(db, PostgresqlDatabase)


def is_sqlite(db: Database) -> bool:
    return isinstance(db, SqliteDatabase)


def write_transaction(db: Database):
    """A transaction for a unit of work that writes.

    SQLite takes the write lock up front (``BEGIN IMMEDIATE``): a deferred
    transaction that reads then writes can fail with "database is locked"
    without waiting for the busy timeout when another writer got there first.
    """
    if is_sqlite(db):
        return db.atomic("IMMEDIATE")
    return db.atomic()
