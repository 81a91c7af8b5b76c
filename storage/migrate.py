"""Forward-only migrations from the ``migrations`` package, with downgrade protection.

Uses ``playhouse.migrations`` (history table ``schema_migration``). Before
anything is written, the history is compared with the scripts this code
ships: a database that has applied a migration we do not know was written by
a newer Tapgate and is refused with :class:`SchemaTooNew`.

Concurrent starts: on PostgreSQL the whole check-and-apply runs in one
transaction holding a transaction-scoped advisory lock; on SQLite in one
``BEGIN IMMEDIATE`` transaction (the database's write lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from peewee import Database
from playhouse.migrations import Migration, Runner

import migrations as migrations_package
from storage.db import is_postgres, write_transaction
from storage.errors import SchemaTooNew

MIGRATIONS_DIR = str(Path(migrations_package.__file__).parent)
# An arbitrary constant: "tapgate" in ASCII, to keep clear of other apps' locks.
ADVISORY_LOCK_KEY = 0x746170676174


@dataclass(frozen=True)
class MigrationStatus:
    """One migration: known to this code (``path``) and/or applied (``applied``)."""

    index: int
    name: str
    known: bool
    applied: datetime | None


def _runner(db: Database) -> Runner:
    return Runner(db, MIGRATIONS_DIR)


def status(db: Database) -> list[MigrationStatus]:
    """Every migration known or applied, in order (reads only)."""
    with db.connection_context():
        rows = _runner(db).status()
    return [_as_status(m) for m in rows]


def _as_status(m: Migration) -> MigrationStatus:
    return MigrationStatus(m.idx, m.name, m.path is not None, m.applied)


def check_not_newer(rows: list[Migration] | list[MigrationStatus]) -> None:
    """Raise :class:`SchemaTooNew` if any applied migration is unknown to this code."""
    statuses = [r if isinstance(r, MigrationStatus) else _as_status(r) for r in rows]
    unknown = [s for s in statuses if not s.known]
    if unknown:
        binary = max((s.index for s in statuses if s.known), default=0)
        on_disk = max(s.index for s in statuses if s.applied is not None)
        raise SchemaTooNew(on_disk, binary, [s.name for s in unknown])


def migrate(db: Database) -> list[str]:
    """Apply pending migrations in one transaction; return the names applied."""
    with db.connection_context(), write_transaction(db):
        if is_postgres(db):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        runner = _runner(db)
        check_not_newer(runner.status())
        return runner.up()


def current_version(db: Database) -> int:
    """The highest applied migration number (0 for an empty database)."""
    return max((s.index for s in status(db) if s.applied is not None), default=0)
