"""Approval requests: submit, decide, expire.

Every status change is one compare-and-set
(``UPDATE ... WHERE id=? AND status='pending' AND expires_at > now RETURNING *``):
whoever races, exactly one caller gets the row back. A request past its
``expires_at`` counts as final for every transition, swept or not.

Each transition owes the request's Telegram copies in its own transaction; paying
them is :mod:`storage.copies`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import peewee

from storage import approvers
from storage.base import StoreBase, columns, decoder, grouped, translated_errors, unit_of_work
from storage.clock import from_text, to_text
from storage.db import is_postgres
from storage.errors import AlreadyFinal, Conflict, InvalidArgument, NotAnApprover, NotFound
from storage.models import ApprovalMessageRow, ApprovalRow
from storage.quorum import cast_vote, with_votes
from storage.records import Approval, NewApproval
from storage.rules import decided_by_rule, take_rule

CALLBACK_RE = re.compile(r"^appr:([A-Za-z0-9_-]{1,40}):(approve|deny)$")
ACTION_RE = re.compile(r"^appr:([A-Za-z0-9_-]{1,40}):(approve|deny|session|always|reason|edit)$")
DECISIONS = {"approve": "approved", "deny": "denied"}


def new_approval_id() -> str:
    """Short, random, URL-safe: 11 characters, about 64 bits of entropy.

    Never starts with ``-`` or ``_``: an id like ``-Xk2…`` reads as an option on a
    command line (``tapgate approve -Xk2…``) and as a formula in a spreadsheet, where
    the CSV export would have to quote it and the id would no longer match.
    """
    while True:
        token = secrets.token_urlsafe(8)
        if token[0].isalnum():
            return token


def parse_callback_data(data: str) -> tuple[str, str]:
    """``appr:<id>:approve|deny`` → (id, "approved"|"denied"); InvalidArgument otherwise."""
    match = CALLBACK_RE.match(data or "")
    if not match:
        raise InvalidArgument(f"malformed callback data {data!r}")
    return match.group(1), DECISIONS[match.group(2)]


def parse_action(data: str) -> tuple[str, str]:
    """``appr:<id>:<action>`` → (id, action) for every request button
    (approve, deny, session, always, reason, edit); InvalidArgument otherwise."""
    match = ACTION_RE.match(data or "")
    if not match:
        raise InvalidArgument(f"malformed callback data {data!r}")
    return match.group(1), match.group(2)


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
        accepts_edits=bool(row.accepts_edits),
        edited_payload=row.edited_payload,
        required_approvals=row.required_approvals,
        requested_by=row.requested_by,
        escalated_at=row.escalated_at,
        approvers=approvers.decode(row.approvers),
    )


_decode_approval = decoder(ApprovalRow)
_CHUNK = 500  # ids per IN (...) list: far below every backend's parameter limit


def mark_copies_owed(approval_ids: list[str]) -> None:
    """Inside a transition's transaction: every copy of these approvals is owed again."""
    for start in range(0, len(approval_ids), _CHUNK):
        chunk = approval_ids[start:start + _CHUNK]
        ApprovalMessageRow.update(owed=True).where(ApprovalMessageRow.approval.in_(chunk)).execute()


_INSERT_COLUMNS = ("id", "agent", "kind", "summary", "payload", "status", "run_id",
                   "tool_call_id", "idempotency_key", "fingerprint", "callback_data", "adapter",
                   "created_at", "expires_at", "submitter_uid", "accepts_edits", "decided_by",
                   "decided_at", "required_approvals", "requested_by", "escalate_at",
                   "approvers")


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

    def _transition_sql(self, single: bool = False) -> str:
        """The compare-and-set; ``single``: only a request one approval decides (one that
        needs several goes through :func:`storage.quorum.cast_vote`). A request with
        approvers takes only theirs until it escalates (:mod:`storage.approvers`)."""
        p = self.db.param
        cas = (f'UPDATE "approval" SET "status" = {p}, "decided_by" = {p}, "decided_at" = {p}, '
               f'"reason" = {p}, "edited_payload" = {p} WHERE "id" = {p} '
               'AND "status" = \'pending\' '
               + ('AND "required_approvals" <= 1 ' if single else '')
               + f'AND "expires_at" > {p} '
               f'AND ("approvers" IS NULL OR "escalated_at" IS NOT NULL OR "approvers" LIKE {p}) '
               f'RETURNING {columns(ApprovalRow)}')
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

        If a live rule covers it (:func:`storage.rules.take_rule`), the request is
        stored already approved by that rule, with no message, and the rule's use is
        counted — in the same transaction.

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
                # A rule is one person's standing decision: never enough for a request
                # that needs several approvers.
                rule = take_rule(self, new.agent, new.kind, new.summary, new.run_id,
                                 new.submitter_uid, new.approvers, now) \
                    if new.required_approvals <= 1 else None
                status, decided_by = ("approved", decided_by_rule(rule)) if rule else \
                    ("pending", None)
                # Hand-written SQL (rendered once): this is the submit hot path.
                self.db.execute_sql(
                    self.statement("approval.insert", self._insert_approval_sql),
                    (approval_id, new.agent, new.kind, new.summary, payload, status,
                     new.run_id, new.tool_call_id, new.idempotency_key, fingerprint,
                     f"appr:{approval_id}", "telegram", to_text(now), to_text(expires_at),
                     new.submitter_uid, new.accepts_edits, decided_by,
                     to_text(now) if rule else None, new.required_approvals,
                     new.requested_by, None if rule or new.escalate_after is None else
                     to_text(now + timedelta(seconds=new.escalate_after)),
                     approvers.encode(new.approvers)))
                if rule is not None:
                    self.announce_final([approval_id])
                elif new.chat_ids:
                    sql = self.statement("approval_message.insert", self._insert_message_sql)
                    with peewee.__exception_wrapper__:
                        self.db.cursor().executemany(sql, [
                            (approval_id, chat, to_text(now), True)
                            for chat in dict.fromkeys(new.chat_ids)])
            approval = Approval(
                id=approval_id, agent=new.agent, kind=new.kind, summary=new.summary,
                payload=ApprovalRow.payload.python_value(payload), status=status,
                decided_by=decided_by, decided_at=now if rule else None,
                run_id=new.run_id, tool_call_id=new.tool_call_id, created_at=now,
                expires_at=expires_at, submitter_uid=new.submitter_uid,
                accepts_edits=new.accepts_edits, required_approvals=new.required_approvals,
                requested_by=new.requested_by, approvers=new.approvers)
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
        return with_votes(self, approval_record(_decode_approval(row)))

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
                         reason: str | None = None, now: datetime | None = None,
                         edited_payload: Any = None) -> Approval:
        """Decide a pending request (``approved``/``denied``) with one compare-and-set;
        ``edited_payload`` (approvals only) is what the approver changed it to.

        Raises :class:`NotFound`, or :class:`AlreadyFinal` carrying the current
        state when the request is no longer pending (or past its expiry).
        """
        if status not in ("approved", "denied"):
            raise InvalidArgument(f"cannot resolve to {status!r}")
        if edited_payload is not None and status != "approved":
            raise InvalidArgument("only an approval carries an edited payload")
        return self._transition(approval_id, status, decided_by, reason, now, edited_payload)

    @unit_of_work
    def cancel_approval(self, approval_id: str, decided_by: str, reason: str | None = None,
                        now: datetime | None = None) -> Approval:
        """Withdraw a pending request (compare-and-set); AlreadyFinal if it is final."""
        return self._transition(approval_id, "cancelled", decided_by, reason, now)

    def _transition(self, approval_id: str, status: str, decided_by: str,
                    reason: str | None, now: datetime | None,
                    edited_payload: Any = None) -> Approval:
        now = now or self.clock()
        approving = status == "approved"
        with self.write():
            # The compare-and-set, as SQL rendered once: a tap's decision is latency-bound
            # and peewee takes longer to build this statement than SQLite to run it.
            won = self.db.execute_sql(
                self.statement("approval.approve" if approving else "approval.transition",
                               lambda: self._transition_sql(single=approving)),
                (status, decided_by, to_text(now), reason,
                 None if edited_payload is None else
                 ApprovalRow.edited_payload.db_value(edited_payload),
                 approval_id, to_text(now), approvers.like_pattern(decided_by)),
            ).fetchone()
            if won is not None:
                # Same transaction: the notifier never sees a decision without its copies
                # owed (one UPDATE through the (approval_id, chat_id) index).
                if not is_postgres(self.db):
                    self.db.execute_sql(self.statement("approval_message.owe",
                                                       self._owe_copies_sql), (approval_id,))
                self.announce_final([approval_id])
                return approval_record(_decode_approval(won))
            if approving:  # a pending request that needs several approvers: a vote
                voted = cast_vote(self, approval_id, decided_by, edited_payload, now)
                if voted is not None:
                    return voted
            # Lost: it is unknown, final, due, or not this decider's (its route's
            # approvers). A due request is expired here and now, so every transition
            # sees the same final state.
            expired = list(
                ApprovalRow.update(status="expired", decided_by="expiry",
                                   decided_at=ApprovalRow.expires_at)
                .where((ApprovalRow.id == approval_id) & (ApprovalRow.status == "pending")
                       & (ApprovalRow.expires_at <= now))
                .returning(ApprovalRow)
                .execute()
            )
            mark_copies_owed([r.id for r in expired])
            self.announce_final([r.id for r in expired])
            # Raise only after the block: an exception inside it would roll the expiry back.
            row = expired[0] if expired else ApprovalRow.get_or_none(ApprovalRow.id == approval_id)
        if row is None:
            raise NotFound(f"approval {approval_id} not found")
        current = approval_record(row)
        if current.status == "pending" and not approvers.may_decide(
                current.approvers, current.escalated_at is not None, decided_by):
            raise NotAnApprover(current)
        raise AlreadyFinal(current, expired_now=bool(expired))

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
