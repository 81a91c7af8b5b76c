"""The storage seam's plumbing: the database, the clock, the executor, error wrapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import peewee
from peewee import Database

from storage.clock import utcnow
from storage.db import write_transaction
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
        raise StorageError(f"database error: {exc}", exc) from exc


def unit_of_work(method: Callable[..., T]) -> Callable[..., T]:
    """Mark a Store method as one unit of work: connected, errors translated."""

    @functools.wraps(method)
    def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> T:
        self.db.connect(reuse_if_open=True)
        with translated_errors():
            return method(self, *args, **kwargs)

    return wrapper


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
        self.clock = clock
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tapgate-db")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a Store method) on the Store's executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )

    def write(self):
        """The transaction of a unit of work that writes (IMMEDIATE on SQLite)."""
        return write_transaction(self.db)

    def close_thread_connection(self) -> None:
        """Close this thread's connection (for threads that used the Store directly)."""
        if not self.db.is_closed():
            self.db.close()

    def close(self) -> None:
        """Close every executor thread's connection and stop the executor."""
        threads = len(getattr(self._executor, "_threads", ()))
        if threads:
            # One close per worker thread: the barrier keeps each task on its own thread.
            barrier = threading.Barrier(threads)

            def close_one() -> None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=5)
                self.close_thread_connection()

            futures = [self._executor.submit(close_one) for _ in range(threads)]
            for future in futures:
                future.result()
        self._executor.shutdown(wait=True)
        self.close_thread_connection()
