"""The storage seam's plumbing: the database, the clock, the executor, error wrapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import peewee
from peewee import Database

from storage.clock import utcnow
from storage.db import (
    DatabaseFault,
    ReconnectingPostgresqlDatabase,
    fault_of,
    is_postgres,
    transaction_alive,
    write_transaction,
)
from storage.errors import Conflict, NotFound, StorageError, TapgateError
from storage.models import database

T = TypeVar("T")


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Wrap driver errors into Tapgate's hierarchy, keeping the original as ``orig``."""
    try:
        yield
    except TapgateError:
        raise
    except peewee.IntegrityError as exc:
        text = str(exc).lower()
        if "foreign key" in text:
            raise NotFound("a referenced record does not exist (foreign key)") from exc
        if "unique" in text or "duplicate key" in text:
            raise Conflict("a record with this key already exists") from exc
        raise StorageError(f"integrity error: {exc}", exc) from exc
    except peewee.PeeweeException as exc:
        fault = fault_of(exc)
        if fault is not None:  # busy, read-only, disk full, server gone: say which
            raise DatabaseFault(f"database error: {exc}", fault, exc) from exc
        raise StorageError(f"database error: {exc}", exc) from exc


def unit_of_work(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a Store method as one unit of work: connected, errors translated.

    On PostgreSQL the unit starts on a live connection and is run once more on
    a new one if the server dropped the old one before anything could have
    committed (see :class:`storage.db.ReconnectingPostgresqlDatabase`).
    """

    @functools.wraps(method)
    def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> T:
        if self._reconnects:
            return self.db.run_unit(_connected, self, method, args, kwargs)
        return _connected(self, method, args, kwargs)

    return wrapper


def _connected(store: StoreBase, method: Callable[..., T], args: tuple, kwargs: dict) -> T:
    # Connecting is inside: a server that refuses connections is a StorageError too.
    with translated_errors():
        store.db.connect(reuse_if_open=True)
        return method(store, *args, **kwargs)


def grouped(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a write unit of work whose calls through :meth:`StoreBase.run` may share
    one transaction with other such calls (group commit).

    Each call runs in its own savepoint, so an error undoes only that call's
    writes and reaches only its caller; every caller hears back after the
    shared commit. On SQLite a commit rewrites every page the transaction
    touched (a submission touches seven), so a busy socket API commits far
    more requests per second in groups.
    """
    method.grouped = True  # type: ignore[attr-defined]
    return method


GROUP_MAX = 64
NOTIFY_CHANNEL = "tapgate_approval"


class StoreBase:
    """Holds the database, the clock and the executor every async caller goes through.

    The Store's methods are synchronous (peewee is). From asyncio, call them
    through :meth:`run`, which runs each call on the Store's own thread pool:
    every thread keeps its own connection (peewee connections are per
    thread), each method is one transaction, and SQLite's WAL lets readers
    run beside the one writer. Plain threads may call the methods directly.
    """

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow, workers: int = 4):
        database.initialize(db)
        self.db = db
        self._reconnects = isinstance(db, ReconnectingPostgresqlDatabase)
        self.clock = clock
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tapgate-db")
        # Start every worker now, so close() knows exactly which threads hold connections.
        self._on_every_worker(lambda: None)
        self._statements: dict[str, str] = {}
        self._group_lock = threading.Lock()
        self._group_pending: list[tuple] = []
        self._group_busy = False
        self._in_group = threading.local()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a Store method) on the Store's executor.

        Methods marked :func:`grouped` queue up while a group is being written
        and are committed together (one drain at a time, on the executor).
        """
        loop = asyncio.get_running_loop()
        if getattr(fn, "grouped", False):
            future = loop.create_future()
            with self._group_lock:
                self._group_pending.append((fn, args, kwargs, loop, future))
                start = not self._group_busy
                self._group_busy = True
            if start:
                self._executor.submit(self._drain_groups)
            return await future
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )

    def _drain_groups(self) -> None:
        """Write queued grouped calls, up to GROUP_MAX per transaction, until none are left."""
        while True:
            with self._group_lock:
                batch = self._group_pending[:GROUP_MAX]
                del self._group_pending[:GROUP_MAX]
                if not batch:
                    self._group_busy = False
                    return
            outcomes = self._write_group(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for (_fn, _args, _kwargs, loop, future), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, items)

    def _write_group(self, batch: list[tuple]) -> list[tuple[bool, Any]]:
        try:
            if self._reconnects:  # like a unit of work: a live connection, one safe retry
                return self.db.run_unit(self._group_transaction, batch)
            return self._group_transaction(batch)
        except Exception as exc:  # the transaction itself failed: nothing was written
            return [(False, exc)] * len(batch)

    def _group_transaction(self, batch: list[tuple]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with translated_errors():
            self.db.connect(reuse_if_open=True)
        with translated_errors(), self.write():
            self._in_group.active = True
            try:
                for fn, args, kwargs, _loop, _future in batch:
                    # A unit's own write() is a savepoint here: an error inside it
                    # undoes that unit alone; what a unit keeps before raising (a
                    # halt) stands.
                    try:
                        outcomes.append((True, fn(*args, **kwargs)))
                    except Exception as exc:
                        if not transaction_alive(self.db):
                            # SQLite rolled the whole group back (disk full, I/O error)
                            # or the connection died: the earlier units' writes are gone
                            # too, and later ones would run outside any transaction.
                            raise
                        outcomes.append((False, exc))
            finally:
                self._in_group.active = False
        return outcomes

    def statement(self, key: str, render: Callable[[], str]) -> str:
        """SQL text rendered once per Store, for the hot paths.

        peewee spends ~200 µs building a query, several times what SQLite needs
        to run it; submitting, reading an approval and appending to the ledger
        reuse the text with new parameters (see :func:`columns`, :func:`decoder`).
        """
        sql = self._statements.get(key)
        if sql is None:
            sql = self._statements[key] = render()
        return sql

    def write(self):
        """The transaction of a unit of work that writes (IMMEDIATE on SQLite).

        Inside a group commit it is a plain SQL savepoint instead (peewee's costs
        several times more, and a group runs one per unit).
        """
        if getattr(self._in_group, "active", False):
            return _UnitSavepoint(self.db)
        return write_transaction(self.db)

    def announce_final(self, approval_ids: list[str]) -> None:
        """Inside a write transaction: on PostgreSQL, tell other processes (LISTEN
        ``tapgate_approval``) that these approvals became final. ``pg_notify`` is
        delivered at commit, so nobody hears of a decision that rolled back."""
        if approval_ids and is_postgres(self.db):
            self.db.execute_sql(f"SELECT pg_notify('{NOTIFY_CHANNEL}', id) FROM unnest(%s::text[]) AS id",
                                (list(approval_ids),))

    def close_thread_connection(self) -> None:
        """Close this thread's connection (for threads that used the Store directly)."""
        if not self.db.is_closed():
            self.db.close()

    def _on_every_worker(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once on each of the executor's threads (a barrier pins one per thread)."""
        barrier = threading.Barrier(self._workers)

        def pinned() -> None:
            barrier.wait(timeout=30)
            fn()

        for future in [self._executor.submit(pinned) for _ in range(self._workers)]:
            future.result()

    def close(self) -> None:
        """Close every executor thread's connection and stop the executor (idempotent)."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self._on_every_worker(self.close_thread_connection)
            self._executor.shutdown(wait=True)
        self.close_thread_connection()


class _UnitSavepoint:
    """One unit of work inside a group transaction: undone alone if it raises."""

    __slots__ = ("db",)

    def __init__(self, db: Database):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute_sql('SAVEPOINT "tapgate_unit"')

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if not transaction_alive(self.db):
                return  # the savepoint went with the transaction; let the error say why
            self.db.execute_sql('ROLLBACK TO SAVEPOINT "tapgate_unit"')
        self.db.execute_sql('RELEASE SAVEPOINT "tapgate_unit"')


def _deliver(items: list[tuple[asyncio.Future, tuple[bool, Any]]]) -> None:
    for future, (ok, value) in items:
        if future.done():  # the caller was cancelled; the write stands
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def columns(model: type[peewee.Model]) -> str:
    """The model's columns, quoted, in field order (what :func:`decoder` expects)."""
    return ", ".join(f'"{f.column_name}"' for f in model._meta.sorted_fields)


def decoder(model: type[peewee.Model]) -> Callable[[tuple], Any]:
    """Turn a raw row selected with :func:`columns` into an object with the model's
    attributes (foreign keys also as ``<name>_id``), converted by the fields."""
    plan = []
    for f in model._meta.sorted_fields:
        names = (f.name, f.object_id_name) if isinstance(f, peewee.ForeignKeyField) else (f.name,)
        plan.append((names, f.python_value))

    def decode(row: tuple) -> Any:
        obj = types.SimpleNamespace()
        for (names, convert), value in zip(plan, row, strict=True):
            value = None if value is None else convert(value)
            for name in names:
                setattr(obj, name, value)
        return obj

    return decode
