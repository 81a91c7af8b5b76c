"""Approval requests and their Telegram messages.

Every status change is one compare-and-set
(``UPDATE ... WHERE id=? AND status='pending' AND expires_at > now RETURNING *``):
whoever races, exactly one caller gets the row back. A request past its
``expires_at`` counts as final for every transition, swept or not.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta

import peewee

from storage.base import StoreBase, columns, decoder, grouped, translated_errors, unit_of_work
from storage.clock import from_text, to_text
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
_INSERT_COLUMNS = ("id", "agent", "kind", "summary", "payload", "status", "run_id",
                   "tool_call_id", "idempotency_key", "fingerprint", "callback_data", "adapter",
                   "created_at", "expires_at")


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
        return (f'UPDATE "approval" SET "status" = {p}, "decided_by" = {p}, "decided_at" = {p}, '
                f'"reason" = {p} WHERE "id" = {p} AND "status" = \'pending\' '
                f'AND "expires_at" > {p} RETURNING {columns(ApprovalRow)}')

    def _approval_by_id_sql(self) -> str:
        return f'SELECT {columns(ApprovalRow)} FROM "approval" WHERE "id" = {self.db.param}'

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
                     f"appr:{approval_id}", "telegram", to_text(now), to_text(expires_at)))
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
                expires_at=expires_at)
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

    @unit_of_work
    def record_message(self, ref_id: int, shown: str, message_id: int | None = None,
                       now: datetime | None = None) -> None:
        """Record that a copy was posted (``message_id``) or now shows ``shown``."""
        values = {"shown": shown, "updated_at": now or self.clock()}
        if message_id is not None:
            values["message_id"] = message_id
        ApprovalMessageRow.update(values).where(ApprovalMessageRow.id == ref_id).execute()

    @unit_of_work
    def messages_owed(self, chat_id: int | None = None, limit: int = 200
                      ) -> list[tuple[MessageRef, Approval]]:
        """Copies whose display lags their approval: never posted, or showing an old status."""
        query = (ApprovalMessageRow.select(ApprovalMessageRow, ApprovalRow)
                 .join(ApprovalRow)
                 .where((ApprovalMessageRow.shown.is_null())
                        | (ApprovalMessageRow.shown != ApprovalRow.status))
                 .order_by(ApprovalMessageRow.id)
                 .limit(limit))
        if chat_id is not None:
            query = query.where(ApprovalMessageRow.chat_id == chat_id)
        return [(_message_record(r), approval_record(r.approval)) for r in query]
