"""Opening a database from a URL: the one place that knows the backends apart.

``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` opens SQLite in WAL mode
with a busy timeout and foreign keys on; ``postgresql://user:pass@host/db``
opens PostgreSQL through psycopg 3. Everything else about the backends is
shared peewee code.

It also knows what a driver's failure means for the caller (:func:`fault_of`:
busy, read-only, disk full, server unreachable) and keeps PostgreSQL
connections alive across server restarts (:class:`ReconnectingPostgresqlDatabase`).
"""

from __future__ import annotations

import logging
import select
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

import psycopg
from peewee import Database, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import parse

from storage.errors import InvalidArgument, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT = 5.0
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    # Waiting writers retry for up to BUSY_TIMEOUT instead of failing with "locked".
    "busy_timeout": int(BUSY_TIMEOUT * 1000),
    "foreign_keys": 1,
    # In WAL mode NORMAL is durable against process crashes (only an OS crash
    # or power cut can lose the last commits) and saves an fsync per commit.
    "synchronous": "normal",
}
# A server that black-holes packets must not hold an executor thread for minutes.
PG_CONNECT_TIMEOUT = 5


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

    def rollback(self):
        # SQLite rolls a transaction back by itself on some errors (disk full, I/O
        # error): peewee's ROLLBACK would then fail with "no transaction is active"
        # and that error would replace the one that says what went wrong.
        if not self.is_closed() and not self._state.conn.in_transaction:
            return
        super().rollback()


class ReconnectingPostgresqlDatabase(PostgresqlDatabase):
    """PostgreSQL whose per-thread connections are replaced when the server drops them.

    peewee keeps a connection per thread and reuses it as long as it thinks it
    is open, so after a server restart (or ``pg_terminate_backend``) every
    thread would fail forever. :meth:`run_unit` runs one unit of work so that
    it starts on a live connection, and retries it once on a new connection
    when the old one died under it before anything could have committed.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._unit = threading.local()
        super().__init__(*args, **kwargs)

    def run_unit(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` as one unit of work on a live connection (see the class doc).

        A unit called from inside another (or inside a transaction) just runs:
        the outermost one owns the connection and decides about retrying.
        """
        unit = self._unit
        if getattr(unit, "active", False) or self._state.transactions:
            return fn(*args)
        self.drop_if_dead()
        unit.active = True
        try:
            unit.risky = False
            try:
                return fn(*args)
            except Exception:
                if not self.drop_if_broken() or unit.risky:
                    raise
                log.warning("the PostgreSQL connection was lost before anything was "
                            "committed; running the unit again on a new connection")
            unit.risky = False
            return fn(*args)
        finally:
            unit.active = False

    def drop_if_dead(self) -> None:
        """Forget this thread's connection if the server has closed it.

        Cheap enough for every unit: an idle connection has nothing to read
        unless the server sent something on its own, and what a server sends an
        idle session is its farewell (the FATAL message of a shutdown or
        ``pg_terminate_backend``, then EOF). At worst a live one is replaced.
        """
        if self._state.closed:
            return
        conn = self._state.conn
        try:
            dead = conn.closed or bool(select.select([conn.fileno()], [], [], 0)[0])
        except (OSError, ValueError, psycopg.Error):
            dead = True
        if dead:
            log.info("the PostgreSQL server closed this connection; reconnecting")
            self._drop()

    def drop_if_broken(self) -> bool:
        """After a failure: forget this thread's connection if it is broken (True then)."""
        if self._state.closed or not self._state.conn.closed:
            return False
        self._drop()
        return True

    def _drop(self) -> None:
        conn = self._state.conn
        self.dispose()  # peewee forgets it (and any transaction it thought was open)
        try:
            conn.close()
        except Exception:  # already broken: closing can only confirm it
            log.debug("closing a broken connection failed", exc_info=True)

    # What could have committed: a COMMIT that reached the server, or a statement
    # run outside a transaction (autocommit) that may write. Those units are never
    # run twice; reads and transactions that died before COMMIT are.

    def rollback(self):
        # A connection that died took its transaction with it (the server rolled it
        # back); a ROLLBACK would only fail again and hide the error that says why.
        if not self._state.closed and self._state.conn.closed:
            return
        super().rollback()

    def commit(self):
        if not self._state.closed and not self._state.conn.closed:
            self._unit.risky = True
        return super().commit()

    def execute_sql(self, sql, params=None):
        if not self._state.transactions and not sql.startswith("SELECT"):
            self._unit.risky = True
        return super().execute_sql(sql, params)


def open_database(url: str) -> Database:
    """Open (lazily; peewee connects on first use per thread) the database at ``url``."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        if url.rstrip("/") in ("sqlite:", "sqlite:///:memory:") or ":memory:" in url:
            raise InvalidArgument(
                "an in-memory SQLite database cannot be shared between threads; use a file"
            )
        kwargs = parse(url)
        kwargs.update(pragmas=SQLITE_PRAGMAS, returning_clause=True, timeout=BUSY_TIMEOUT)
        return WalSqliteDatabase(**kwargs)
    if scheme in ("postgresql", "postgres"):
        kwargs = parse(url)
        kwargs.setdefault("connect_timeout", PG_CONNECT_TIMEOUT)
        return ReconnectingPostgresqlDatabase(**kwargs)
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


def transaction_alive(db: Database) -> bool:
    """Whether this thread's connection is still inside its transaction.

    False after SQLite rolled it back by itself (disk full, I/O error) or the
    PostgreSQL connection died: whatever the transaction wrote is gone.
    """
    if db.is_closed():
        return False
    conn = db.connection()
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    if conn.closed:
        return False
    status = conn.info.transaction_status
    return status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


# --- what a failure means for the caller ---------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """Why the database refused, in words a caller can act on."""

    cause: str  # "unavailable", "busy", "read_only", "disk_full", "io_error"
    message: str
    retry_after: int  # seconds worth waiting before trying again


UNAVAILABLE = Fault("unavailable", "the database is unavailable; try again", 2)
BUSY = Fault("busy", f"the database is locked by another writer (waited {BUSY_TIMEOUT:g} s); "
             "try again", 2)
READ_ONLY = Fault("read_only", "the database is read-only; nothing was written", 30)
DISK_FULL = Fault("disk_full", "the disk is full; nothing was written", 30)
IO_ERROR = Fault("io_error", "the database could not read or write its files (I/O error); "
                 "nothing was written", 10)

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_FAULTS = {5: BUSY, 6: BUSY, 8: READ_ONLY, 10: IO_ERROR, 13: DISK_FULL, 14: UNAVAILABLE}
_PG_FAULTS = {"53100": DISK_FULL, "25006": READ_ONLY, "55P03": BUSY, "40P01": BUSY,
              "40001": BUSY, "53300": UNAVAILABLE, "57P01": UNAVAILABLE, "57P02": UNAVAILABLE,
              "57P03": UNAVAILABLE}


def fault_of(exc: BaseException) -> Fault | None:
    """What a driver error (possibly wrapped by peewee, or chained) means, if known.

    The chain is followed because peewee wraps driver errors (the original is
    ``args[0]``) and a failed clean-up may be raised in the original's place.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlite3.Error):
            fault = _SQLITE_FAULTS.get(getattr(e, "sqlite_errorcode", -1) & 0xFF)
            if fault is not None:
                return fault
        elif isinstance(e, psycopg.Error):
            state = e.sqlstate
            if state in _PG_FAULTS:
                return _PG_FAULTS[state]
            if (state or "").startswith("08") or (
                    state is None and isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)):
                return UNAVAILABLE  # refused, lost, closed: the server is not there for us
        first = e.args[0] if e.args and isinstance(e.args[0], BaseException) else None
        todo.extend((first, e.__cause__, e.__context__))
    return None


class DatabaseFault(StorageError):
    """A :class:`StorageError` whose cause is known (``fault``): busy, read-only, ..."""

    def __init__(self, message: str, fault: Fault, orig: BaseException | None = None):
        self.fault = fault
        super().__init__(message, orig)
