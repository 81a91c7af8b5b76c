"""Approval requests and their Telegram messages.

Every status change is one compare-and-set
(``UPDATE ... WHERE id=? AND status='pending' AND expires_at > now RETURNING *``):
whoever races, exactly one caller gets the row back. A request past its
``expires_at`` counts as final for every transition, swept or not.

Each Telegram copy (``approval_message``) is ``owed`` from every transition of its
approval (same transaction) until it is recorded showing the current status; the
partial index ``approval_message_owed`` makes finding them cost what is owed only.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

import peewee

from storage.base import StoreBase, columns, decoder, grouped, translated_errors, unit_of_work
from storage.clock import from_text, to_text
from storage.db import is_postgres
from storage.errors import AlreadyFinal, Conflict, InvalidArgument, NotFound
from storage.models import ApprovalMessageRow, ApprovalRow
from storage.records import Approval, MessageRef, NewApproval

CALLBACK_RE = re.compile(r"^appr:([A-Za-z0-9_-]{1,40}):(approve|deny)$")
DECISIONS = {"approve": "approved", "deny": "denied"}


def new_approval_id() -> str:
    """Short, random, URL-safe: 11 characters, 64 bits of entropy."""
    return secrets.token_urlsafe(8)


def parse_callback_data(data: str) -> tuple[str, str]:
    """``appr:<id>:approve|deny`` → (id, "approved"|"denied"); InvalidArgument otherwise."""
    match = CALLBACK_RE.match(data or "")
    if not match:
        raise InvalidArgument(f"malformed callback data {data!r}")
    return match.group(1), DECISIONS[match.group(2)]


def _fingerprint(new: NewApproval) -> str:
    body = new.model_dump(include={"agent", "kind", "summary", "payload", "ttl_seconds",
                                   "run_id", "tool_call_id"})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def approval_record(row: ApprovalRow) -> Approval:
    return Approval(
        id=row.id,
        agent=row.agent,
        kind=row.kind,
        summary=row.summary,
        payload=row.payload,
        status=row.status,
        reason=row.reason,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        run_id=row.run_id,
        tool_call_id=row.tool_call_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        submitter_uid=row.submitter_uid,
    )


def _message_record(row: ApprovalMessageRow) -> MessageRef:
    return MessageRef(
        id=row.id,
        approval_id=row.approval_id,
        chat_id=row.chat_id,
        message_id=row.message_id,
        shown=row.shown,
        updated_at=row.updated_at,
    )


_decode_approval = decoder(ApprovalRow)
_decode_message = decoder(ApprovalMessageRow)
_MESSAGE_WIDTH = len(ApprovalMessageRow._meta.sorted_fields)
# Which owed copies go first: still-pending requests (newest first), then edits of
# posted copies, then requests decided before their copy was ever posted (a backlog
# the notifier may fold into one digest), so a backlog never delays live requests.
_OWED_ORDER = ('CASE WHEN a."status" = \'pending\' THEN 0 WHEN m."message_id" IS NOT NULL '
               'THEN 1 ELSE 2 END, CASE WHEN a."status" = \'pending\' THEN -m."id" '
               'ELSE m."id" END')
_CHUNK = 500  # ids per IN (...) list: far below every backend's parameter limit


class UnpostedOutcome(NamedTuple):
    """A copy never posted whose request is already decided (what a digest lists)."""

    ref_id: int
    approval_id: str
    kind: str
    status: str


def mark_copies_owed(approval_ids: list[str]) -> None:
    """Inside a transition's transaction: every copy of these approvals is owed again."""
    for start in range(0, len(approval_ids), _CHUNK):
        chunk = approval_ids[start:start + _CHUNK]
        ApprovalMessageRow.update(owed=True).where(ApprovalMessageRow.approval.in_(chunk)).execute()


_INSERT_COLUMNS = ("id", "agent", "kind", "summary", "payload", "status", "run_id",
                   "tool_call_id", "idempotency_key", "fingerprint", "callback_data", "adapter",
                   "created_at", "expires_at", "submitter_uid")


class ApprovalStore(StoreBase):
    """Approval operations of the Store."""

    def _insert_approval_sql(self) -> str:
        names = ", ".join(f'"{c}"' for c in _INSERT_COLUMNS)
        marks = ", ".join([self.db.param] * len(_INSERT_COLUMNS))
        return f'INSERT INTO "approval" ({names}) VALUES ({marks})'

    def _insert_message_sql(self) -> str:
        p = self.db.param
        return (f'INSERT INTO "approval_message" ("approval_id", "chat_id", "updated_at", '
                f'"owed") VALUES ({p}, {p}, {p}, {p})')

    def _transition_sql(self) -> str:
        p = self.db.param
        cas = (f'UPDATE "approval" SET "status" = {p}, "decided_by" = {p}, "decided_at" = {p}, '
               f'"reason" = {p} WHERE "id" = {p} AND "status" = \'pending\' '
               f'AND "expires_at" > {p} RETURNING {columns(ApprovalRow)}')
        if not is_postgres(self.db):
            return cas
        # PostgreSQL owes the copies in the same statement: one round trip per decision.
        # No "AND NOT owed": the statement's snapshot may predate a record that committed
        # while the CAS waited for its lock; only a recheck of the latest row is right.
        return (f'WITH won AS ({cas}), owe AS (UPDATE "approval_message" SET "owed" = TRUE '
                'WHERE "approval_id" IN (SELECT "id" FROM won)) '
                f'SELECT {columns(ApprovalRow)} FROM won')

    def _approval_by_id_sql(self) -> str:
        return f'SELECT {columns(ApprovalRow)} FROM "approval" WHERE "id" = {self.db.param}'

    def _owe_copies_sql(self) -> str:
        return f'UPDATE "approval_message" SET "owed" = TRUE WHERE "approval_id" = {self.db.param}'

    @grouped
    @unit_of_work
    def create_approval(self, new: NewApproval, now: datetime | None = None
                        ) -> tuple[Approval, bool]:
        """Persist a pending request and one owed message per chat, in one transaction.

        Returns ``(approval, created)``. With an ``idempotency_key`` already
        used for the same request, returns the existing one and ``False``;
        used for a different request, raises :class:`Conflict`.
        """
        now = from_text(to_text(now or self.clock()))  # as stored: UTC, microseconds
        fingerprint = _fingerprint(new)
        approval_id = new_approval_id()
        expires_at = from_text(to_text(now + timedelta(seconds=new.ttl_seconds)))
        payload = ApprovalRow.payload.db_value(new.payload)
        try:
            with translated_errors(), self.write():
                # Hand-written SQL (rendered once): this is the submit hot path.
                self.db.execute_sql(
                    self.statement("approval.insert", self._insert_approval_sql),
                    (approval_id, new.agent, new.kind, new.summary, payload, "pending",
                     new.run_id, new.tool_call_id, new.idempotency_key, fingerprint,
                     f"appr:{approval_id}", "telegram", to_text(now), to_text(expires_at),
                     new.submitter_uid))
                if new.chat_ids:
                    sql = self.statement("approval_message.insert", self._insert_message_sql)
                    with peewee.__exception_wrapper__:
                        self.db.cursor().executemany(sql, [
                            (approval_id, chat, to_text(now), True)
                            for chat in dict.fromkeys(new.chat_ids)])
            approval = Approval(
                id=approval_id, agent=new.agent, kind=new.kind, summary=new.summary,
                payload=ApprovalRow.payload.python_value(payload), status="pending",
                run_id=new.run_id, tool_call_id=new.tool_call_id, created_at=now,
                expires_at=expires_at, submitter_uid=new.submitter_uid)
        except Conflict:
            if new.idempotency_key is None:
                raise
            existing = ApprovalRow.get_or_none(ApprovalRow.idempotency_key == new.idempotency_key)
            if existing is None:
                raise
            if existing.fingerprint != fingerprint:
                raise Conflict(
                    f"idempotency key {new.idempotency_key!r} was used for a different request "
                    f"({existing.id})"
                ) from None
            return approval_record(existing), False
        return approval, True

    @unit_of_work
    def get_approval(self, approval_id: str) -> Approval:
        row = self.db.execute_sql(self.statement("approval.by_id", self._approval_by_id_sql),
                                  (approval_id,)).fetchone()
        if row is None:
            raise NotFound(f"approval {approval_id} not found")
        return approval_record(_decode_approval(row))

    def get_approval_by_callback(self, data: str) -> tuple[Approval, str]:
        """The approval a button's data names, and the status the button asks for."""
        approval_id, wanted = parse_callback_data(data)
        return self.get_approval(approval_id), wanted

    @unit_of_work
    def list_approvals(self, status: str | None = None, limit: int | None = None,
                       oldest_first: bool = False) -> list[Approval]:
        """Approvals with ``status`` (None = all), newest first unless ``oldest_first``."""
        query = ApprovalRow.select()
        if status:
            query = query.where(ApprovalRow.status == status)
        if oldest_first:
            query = query.order_by(ApprovalRow.created_at.asc(), ApprovalRow.id.asc())
        else:
            query = query.order_by(ApprovalRow.created_at.desc(), ApprovalRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return [approval_record(r) for r in query]

    @unit_of_work
    def count_approvals(self, status: str) -> int:
        return ApprovalRow.select().where(ApprovalRow.status == status).count()

    @unit_of_work
    def resolve_approval(self, approval_id: str, status: str, decided_by: str,
                         reason: str | None = None, now: datetime | None = None) -> Approval:
        """Decide a pending request (``approved``/``denied``) with one compare-and-set.

        Raises :class:`NotFound`, or :class:`AlreadyFinal` carrying the current
        state when the request is no longer pending (or past its expiry).
        """
        if status not in ("approved", "denied"):
            raise InvalidArgument(f"cannot resolve to {status!r}")
        return self._transition(approval_id, status, decided_by, reason, now)

    @unit_of_work
    def cancel_approval(self, approval_id: str, decided_by: str, reason: str | None = None,
                        now: datetime | None = None) -> Approval:
        """Withdraw a pending request (compare-and-set); AlreadyFinal if it is final."""
        return self._transition(approval_id, "cancelled", decided_by, reason, now)

    def _transition(self, approval_id: str, status: str, decided_by: str,
                    reason: str | None, now: datetime | None) -> Approval:
        now = now or self.clock()
        with self.write():
            # The compare-and-set, as SQL rendered once: a tap's decision is latency-bound
            # and peewee takes longer to build this statement than SQLite to run it.
            won = self.db.execute_sql(
                self.statement("approval.transition", self._transition_sql),
                (status, decided_by, to_text(now), reason, approval_id, to_text(now)),
            ).fetchone()
            if won is not None:
                # Same transaction: the notifier never sees a decision without its copies
                # owed (one UPDATE through the (approval_id, chat_id) index).
                if not is_postgres(self.db):
                    self.db.execute_sql(self.statement("approval_message.owe",
                                                       self._owe_copies_sql), (approval_id,))
                self.announce_final([approval_id])
                return approval_record(_decode_approval(won))
            # Lost: it is unknown, final, or due. A due request is expired here and
            # now, so every transition sees the same final state.
            expired = list(
                ApprovalRow.update(status="expired", decided_by="expiry",
                                   decided_at=ApprovalRow.expires_at)
                .where((ApprovalRow.id == approval_id) & (ApprovalRow.status == "pending"))
                .returning(ApprovalRow)
                .execute()
            )
            mark_copies_owed([r.id for r in expired])
            self.announce_final([r.id for r in expired])
            # Raise only after the block: an exception inside it would roll the expiry back.
            row = expired[0] if expired else ApprovalRow.get_or_none(ApprovalRow.id == approval_id)
        if row is None:
            raise NotFound(f"approval {approval_id} not found")
        raise AlreadyFinal(approval_record(row), expired_now=bool(expired))

    @unit_of_work
    def expire_due(self, now: datetime | None = None) -> list[Approval]:
        """Expire every pending request whose ``expires_at`` has passed; return them."""
        now = now or self.clock()
        with self.write():
            rows = (
                ApprovalRow.update(status="expired", decided_by="expiry",
                                   decided_at=ApprovalRow.expires_at)
                .where((ApprovalRow.status == "pending") & (ApprovalRow.expires_at <= now))
                .returning(ApprovalRow)
                .execute()
            )
            expired = [approval_record(r) for r in rows]
            mark_copies_owed([a.id for a in expired])
            self.announce_final([a.id for a in expired])
            return expired

    @unit_of_work
    def next_expiry(self) -> datetime | None:
        """The earliest ``expires_at`` among pending requests (None if none)."""
        row = (ApprovalRow.select(ApprovalRow.expires_at)
               .where(ApprovalRow.status == "pending")
               .order_by(ApprovalRow.expires_at.asc()).first())
        return row.expires_at if row else None

    # --- the Telegram copies ----------------------------------------------------

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
        """Inside a write: the status of the copy's approval as committed now. On PostgreSQL
        FOR SHARE waits for a transition in flight and holds the approval until we commit
        (a transition then marks the copy owed after us); SQLite's writers are serial."""
        row = self.db.execute_sql(self.statement("approval_message.status", lambda: (
            'SELECT a."status" FROM "approval_message" AS m JOIN "approval" AS a ON a."id" = '
            f'm."approval_id" WHERE m."id" = {self.db.param}'
            + (" FOR SHARE OF a" if is_postgres(self.db) else ""))), (ref_id,)).fetchone()
        return row[0] if row else None

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
            owed.append((_message_record(message),
                         approval_record(_decode_approval(row[_MESSAGE_WIDTH:]))))
        return owed

    @unit_of_work
    def unposted_outcomes(self, chat_id: int) -> list[UnpostedOutcome]:
        """Owed copies in ``chat_id`` never posted whose request is decided, newest first."""
        p = self.db.param
        sql = self.statement("approval_message.unposted", lambda: (
            'SELECT m."id", a."id", a."kind", a."status" FROM "approval_message" AS m '
            'JOIN "approval" AS a ON a."id" = m."approval_id" '
            f'WHERE m."owed" AND m."chat_id" = {p} AND m."message_id" IS NULL '
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
                    'AND "approval_id" IN (SELECT "id" FROM "approval" WHERE "status" <> '
                    '\'pending\')', (now, *chunk)).rowcount
        return settled
