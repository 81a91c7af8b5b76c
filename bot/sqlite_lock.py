"""SQLite is single-instance: an exclusive ``flock`` on ``<db>.lock`` while ``tapgate run`` lives.

Two bots on one SQLite file would both poll Telegram (409 Conflict) and both pay the
outbox; several instances need PostgreSQL (:mod:`bot.cluster`). ``tapgate doctor``
and ``tapgate status`` read the lock file to say which pid serves the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from storage.errors import TapgateError


class AlreadyServing(TapgateError):
    """Another ``tapgate run`` holds the SQLite database's lock file."""

    code = "already_serving"


def lock_path(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".lock")


def holder(db_file: Path) -> int | None:
    """The pid of the ``tapgate run`` serving this SQLite file, or None (nobody, or unknown)."""
    path = lock_path(db_file)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class SqliteLock:
    """An exclusive ``flock`` on ``<db>.lock``, held for the life of the process.

    SQLite is single-instance: two bots on one file would both poll Telegram (409
    Conflict) and both pay the outbox. The lock dies with the process, whatever kills it.
    """

    def __init__(self, db_file: Path):
        self.path = lock_path(db_file)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {text}" if text.isdigit() else "another process"
            raise AlreadyServing(
                f"another tapgate run ({who}) is serving the SQLite database "
                f"{self.path.with_suffix('')}; SQLite is single-instance: use PostgreSQL "
                "(TAPGATE_DATABASE_URL=postgresql://...) to run several") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
