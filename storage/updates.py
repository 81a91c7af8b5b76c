"""Webhook updates already taken (webhook mode, :mod:`bot.telegram.webhook`).

Telegram redelivers a webhook update until a listener answers 2xx, and with
several instances behind a load balancer a redelivery may reach another one.
:meth:`UpdateStore.claim_update` is the once-only gate: one INSERT that a
unique index makes conflict on a duplicate (``ON CONFLICT DO NOTHING`` on
SQLite and PostgreSQL), so exactly one caller, in any process, sees True.
"""

from __future__ import annotations

from datetime import datetime

from storage.base import StoreBase, unit_of_work
from storage.models import TelegramUpdateRow


class UpdateStore(StoreBase):
    """Seen-update operations of the Store."""

    @unit_of_work
    def claim_update(self, bot_id: int, update_id: int, now: datetime | None = None) -> bool:
        """Record ``update_id`` as taken; False if some instance took it already."""
        now = now or self.clock()
        query = (TelegramUpdateRow
                 .insert(bot_id=bot_id, update_id=update_id, seen_at=now)
                 .on_conflict_ignore())
        with self.write():
            cursor = self.db.execute(query)
        return cursor.rowcount == 1

    @unit_of_work
    def prune_updates(self, before: datetime) -> int:
        """Forget updates taken before ``before``; the number of rows deleted."""
        with self.write():
            return (TelegramUpdateRow.delete()
                    .where(TelegramUpdateRow.seen_at < before).execute())
