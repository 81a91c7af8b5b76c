"""The Telegram copies of approvals: which are owed, and recording what each shows.

Each copy (``approval_message``) is ``owed`` from every transition of its approval
(same transaction, see :func:`storage.approvals.mark_copies_owed`) until it is
recorded showing the current status; the partial index ``approval_message_owed``
makes finding them cost what is owed only.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from storage.approvals import _CHUNK, _decode_approval, approval_record
from storage.base import StoreBase, decoder, unit_of_work
from storage.clock import to_text
from storage.db import is_postgres
from storage.models import ApprovalMessageRow, ApprovalRow
from storage.quorum import votes, with_votes
from storage.records import Approval, MessageRef, display_key


def _message_record(row: ApprovalMessageRow) -> MessageRef:
    return MessageRef(
        id=row.id,
        approval_id=row.approval_id,
        chat_id=row.chat_id,
        message_id=row.message_id,
        shown=row.shown,
        updated_at=row.updated_at,
        digest_id=row.digest_id,
    )


_decode_message = decoder(ApprovalMessageRow)
_MESSAGE_WIDTH = len(ApprovalMessageRow._meta.sorted_fields)
# Which owed copies go first: still-pending requests (newest first), then edits of
# posted copies, then requests decided before their copy was ever posted (a backlog
# the notifier may fold into one digest), so a backlog never delays live requests.
_OWED_ORDER = ('CASE WHEN a."status" = \'pending\' THEN 0 WHEN m."message_id" IS NOT NULL '
               'THEN 1 ELSE 2 END, CASE WHEN a."status" = \'pending\' THEN -m."id" '
               'ELSE m."id" END')


def shown_key(store: StoreBase, status: str, required: int, escalated_at: object,
              approval_id: str) -> str:
    """Inside a unit of work: the display key (:func:`storage.records.display_key`) of a
    request from its row's status, required approvals and escalation (votes counted
    only while a request needing several approvers is pending)."""
    counted = len(votes(store, approval_id)) if status == "pending" and required > 1 else None
    return display_key(status, counted, escalated_at is not None)


class UnpostedOutcome(NamedTuple):
    """A copy never posted whose request is already decided (what a digest lists)."""

    ref_id: int
    approval_id: str
    kind: str
    status: str


class CopyStore(StoreBase):
    """Operations on the Telegram copies (the outbox the notifier pays)."""

    @unit_of_work
    def approval_messages(self, approval_id: str) -> list[MessageRef]:
        query = (ApprovalMessageRow.select()
                 .where(ApprovalMessageRow.approval == approval_id)
                 .order_by(ApprovalMessageRow.id))
        return [_message_record(r) for r in query]

    @unit_of_work
    def find_message(self, chat_id: int, message_id: int) -> MessageRef | None:
        row = ApprovalMessageRow.get_or_none(
            (ApprovalMessageRow.chat_id == chat_id) & (ApprovalMessageRow.message_id == message_id)
        )
        return _message_record(row) if row else None

    def _copy_status(self, ref_id: int) -> str | None:
        """Inside a write: what the copy's approval should display as committed now
        (:attr:`storage.records.Approval.shown_as`). On PostgreSQL FOR SHARE waits for a
        transition or vote in flight and holds the approval until we commit (it then marks
        the copy owed after us); SQLite's writers are serial."""
        row = self.db.execute_sql(self.statement("approval_message.status", lambda: (
            'SELECT a."status", a."required_approvals", a."escalated_at", a."id" '
            'FROM "approval_message" AS m JOIN "approval" AS a ON a."id" = '
            f'm."approval_id" WHERE m."id" = {self.db.param}'
            + (" FOR SHARE OF a" if is_postgres(self.db) else ""))), (ref_id,)).fetchone()
        return None if row is None else shown_key(self, *row)

    def _owed_sql(self, by_chat: bool) -> str:
        p = self.db.param
        cols = ", ".join([f'm."{f.column_name}"' for f in ApprovalMessageRow._meta.sorted_fields]
                         + [f'a."{f.column_name}"' for f in ApprovalRow._meta.sorted_fields])
        chat = f' AND m."chat_id" = {p}' if by_chat else ""
        # ``WHERE m."owed"`` is the partial index's own predicate: that is what lets both
        # backends answer from approval_message_owed instead of scanning the history.
        return (f'SELECT {cols} FROM "approval_message" AS m JOIN "approval" AS a '
                f'ON a."id" = m."approval_id" WHERE m."owed"{chat} '
                f'ORDER BY {_OWED_ORDER} LIMIT {p}')

    @unit_of_work
    def record_message(self, ref_id: int, shown: str, message_id: int | None = None,
                       now: datetime | None = None) -> bool:
        """Record that a copy was posted (``message_id``) or now shows ``shown``.

        The copy stops being owed only if ``shown`` is its approval's status as
        committed now (a compare-and-set under a lock on the approval): a decision
        that lands between the send and this record leaves it owed, so its edit
        follows. Returns True when the copy is settled (no longer owed).
        """
        p = self.db.param
        with self.write():
            status = self._copy_status(ref_id)
            if status is None:
                return False
            self.db.execute_sql(self.statement("approval_message.record", lambda: (
                f'UPDATE "approval_message" SET "shown" = {p}, "updated_at" = {p}, "owed" = {p}, '
                f'"message_id" = COALESCE({p}, "message_id") WHERE "id" = {p}')),
                (shown, to_text(now or self.clock()), status != shown, message_id, ref_id))
        return status == shown

    @unit_of_work
    def give_up_message(self, ref_id: int, status: str, now: datetime | None = None) -> bool:
        """Stop owing a copy Telegram refuses for good, unless its approval has moved on
        from ``status`` meanwhile (the new status gets a new attempt). True if given up."""
        with self.write():
            if self._copy_status(ref_id) != status:
                return False
            (ApprovalMessageRow.update(owed=False, updated_at=now or self.clock())
             .where(ApprovalMessageRow.id == ref_id).execute())
        return True

    @unit_of_work
    def messages_owed(self, chat_id: int | None = None, limit: int = 200
                      ) -> list[tuple[MessageRef, Approval]]:
        """Copies whose display lags their approval (never posted, or showing an old status),
        read through the partial index: copies of still-pending requests, newest first;
        then edits of posted copies; then decided requests never posted (oldest first)."""
        key = "approval_message.owed_in_chat" if chat_id is not None else "approval_message.owed"
        sql = self.statement(key, lambda: self._owed_sql(chat_id is not None))
        params = (chat_id, limit) if chat_id is not None else (limit,)
        owed = []
        for row in self.db.execute_sql(sql, params).fetchall():
            message = _decode_message(row[:_MESSAGE_WIDTH])
            approval = approval_record(_decode_approval(row[_MESSAGE_WIDTH:]))
            owed.append((_message_record(message), with_votes(self, approval)))
        return owed

    @unit_of_work
    def unposted_outcomes(self, chat_id: int) -> list[UnpostedOutcome]:
        """Owed copies in ``chat_id`` never posted whose request is decided, newest first."""
        p = self.db.param
        sql = self.statement("approval_message.unposted", lambda: (
            'SELECT m."id", a."id", a."kind", a."status" FROM "approval_message" AS m '
            'JOIN "approval" AS a ON a."id" = m."approval_id" '
            f'WHERE m."owed" AND m."chat_id" = {p} AND m."message_id" IS NULL '
            'AND m."digest_id" IS NULL '  # a digest shows its own outcomes
            'AND a."status" <> \'pending\' ORDER BY m."id" DESC'))
        return [UnpostedOutcome(*row) for row in self.db.execute_sql(sql, (chat_id,)).fetchall()]

    @unit_of_work
    def settle_unposted(self, ref_ids: list[int], now: datetime | None = None) -> int:
        """Settle never-posted copies of decided requests (a digest listed them) as showing
        their outcome without a message of their own; returns how many. A decided status
        never changes again, so no decision can slip in between."""
        p, now, settled = self.db.param, to_text(now or self.clock()), 0
        with self.write():
            for chunk in (ref_ids[i:i + _CHUNK] for i in range(0, len(ref_ids), _CHUNK)):
                settled += self.db.execute_sql(
                    f'UPDATE "approval_message" SET "owed" = FALSE, "updated_at" = {p}, "shown" = '
                    '(SELECT a."status" FROM "approval" AS a '
                    'WHERE a."id" = "approval_message"."approval_id") WHERE '
                    f'"id" IN ({", ".join([p] * len(chunk))}) AND "owed" AND "message_id" IS NULL '
                    'AND "digest_id" IS NULL '
                    'AND "approval_id" IN (SELECT "id" FROM "approval" WHERE "status" <> '
                    '\'pending\')', (now, *chunk)).rowcount
        return settled
