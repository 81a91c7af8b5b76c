"""Escalation: a request still pending after its delay is posted to more chats, once.

``escalate_at`` is set at submit (the delay of the settings or the run's policy). The
sweep's compare-and-set (``escalated_at IS NULL``) makes escalation happen exactly
once whichever instance sweeps first; the same transaction adds the escalation
chats' copies and owes every existing copy its "escalated" edit.
"""

from __future__ import annotations

from datetime import datetime

import peewee

from storage.base import StoreBase, unit_of_work
from storage.clock import to_text
from storage.models import ApprovalRow


class EscalationStore(StoreBase):
    """Escalation operations of the Store."""

    @unit_of_work
    def escalate_due(self, chat_ids: list[int], now: datetime | None = None) -> list:
        """Mark every pending request whose ``escalate_at`` passed as escalated, add a copy
        of it in each of ``chat_ids`` and owe all its copies; return the requests."""
        from storage.approvals import approval_record, mark_copies_owed

        now = now or self.clock()
        with self.write():
            rows = list(
                ApprovalRow.update(escalated_at=now)
                .where((ApprovalRow.status == "pending") & ApprovalRow.escalated_at.is_null()
                       & ApprovalRow.escalate_at.is_null(False)
                       & (ApprovalRow.escalate_at <= now) & (ApprovalRow.expires_at > now))
                .returning(ApprovalRow).execute())
            if not rows:
                return []
            p = self.db.param
            sql = ('INSERT INTO "approval_message" ("approval_id", "chat_id", "updated_at", '
                   f'"owed") VALUES ({p}, {p}, {p}, TRUE) '
                   'ON CONFLICT ("approval_id", "chat_id") DO NOTHING')
            with peewee.__exception_wrapper__:
                self.db.cursor().executemany(sql, [
                    (row.id, chat, to_text(now)) for row in rows
                    for chat in dict.fromkeys(chat_ids)])
            mark_copies_owed([row.id for row in rows])
        return [approval_record(row) for row in rows]
