"""The Store: every durable operation Tapgate has, behind one class.

Backends differ only in :mod:`storage.db`; the operations are grouped by
concern in :mod:`storage.approvals`, :mod:`storage.rules`, :mod:`storage.runs`,
:mod:`storage.checkpoints`, :mod:`storage.ledger`, :mod:`storage.facts` and
:mod:`storage.export`. See :class:`StoreBase` for
how asyncio callers use it (``await store.run(store.method, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from storage import migrate as migrations
from storage.alerts import AlertStore
from storage.approvals import ApprovalStore
from storage.checkpoints import CheckpointStore
from storage.clock import utcnow
from storage.copies import CopyStore
from storage.db import open_database
from storage.digests import DigestStore
from storage.escalation import EscalationStore
from storage.export import ExportStore
from storage.facts import FactStore
from storage.instances import InstanceStore
from storage.ledger import LedgerStore
from storage.routes import RouteStore
from storage.rules import RuleStore
from storage.spend import SpendStore
from storage.topics import TopicStore
from storage.updates import UpdateStore


class Store(ApprovalStore, CopyStore, RuleStore, LedgerStore, SpendStore, AlertStore,
            CheckpointStore, FactStore, ExportStore, EscalationStore, UpdateStore, InstanceStore,
            RouteStore, DigestStore, TopicStore):
    """Approvals, runs, steps, ledger, tool calls, checkpoints, facts and policies.

    Every method is one transaction and safe to call from many threads at
    once; every miss raises :class:`storage.errors.NotFound`.
    """

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], datetime] = utcnow,
                 workers: int = 4) -> Store:
        """Open the database at ``url`` (not migrated: call :meth:`migrate`)."""
        return cls(open_database(url), clock=clock, workers=workers)

    def migrate(self) -> list[str]:
        """Apply pending migrations (refusing a newer schema); return their names."""
        return migrations.migrate(self.db)

    def migration_status(self) -> list[migrations.MigrationStatus]:
        return migrations.status(self.db)

    def check_schema(self) -> None:
        """Refuse a database whose schema is newer than this code (reads only)."""
        migrations.check_not_newer(self.migration_status())
