"""Requests that need several approvers: votes, and the last one deciding.

An approval of a request with ``required_approvals`` > 1 is a vote: recorded once per
approver (a unique index on (approval, voter), so a double tap counts once whatever
the race), refused from the person the request acts for (``requested_by``), and the
vote that reaches the quorum makes the one compare-and-set to ``approved`` — in the
same transaction, under a lock on the request, so two last approvers racing yield
one decision and no quorum is ever reached unnoticed. A denial needs no quorum: the
ordinary compare-and-set decides it at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage import approvers
from storage.base import StoreBase, columns, decoder
from storage.clock import to_text
from storage.db import is_postgres
from storage.errors import AlreadyVoted, InvalidArgument, NotAnApprover, SelfApproval
from storage.models import ApprovalRow, VoteRow
from storage.records import Approval, Vote

_decode = decoder(ApprovalRow)


def voter_of(decided_by: str) -> str:
    """Who an approval counts as: ``telegram:123 (@alice)`` → ``telegram:123``."""
    return decided_by.split(" ", 1)[0][:100]


def votes(store: StoreBase, approval_id: str) -> list[Vote]:
    p = store.db.param
    rows = store.db.execute_sql(store.statement("vote.of", lambda: (
        f'SELECT "by", "at" FROM "approval_vote" WHERE "approval_id" = {p} ORDER BY "id"')),
        (approval_id,)).fetchall()
    return [Vote(by=by, at=VoteRow.at.python_value(at)) for by, at in rows]


def with_votes(store: StoreBase, approval: Approval) -> Approval:
    """``approval`` with its votes listed (read only for requests that need several)."""
    if approval.required_approvals <= 1:
        return approval
    return approval.model_copy(update={"approvals": votes(store, approval.id)})


def cast_vote(store: StoreBase, approval_id: str, decided_by: str, edited_payload: Any,
              now: datetime) -> Approval | None:
    """Inside a write, after the single-approval compare-and-set missed: count this
    approval if the request is pending, not due, and needs several approvers.

    Returns the request (approved if this vote reached the quorum, else pending with
    its votes), or None when it is not such a request (the caller then reports it
    final, unknown or due). Raises :class:`SelfApproval`, :class:`NotAnApprover` or
    :class:`AlreadyVoted`.
    """
    from storage.approvals import approval_record, mark_copies_owed

    p = store.db.param
    lock = " FOR UPDATE" if is_postgres(store.db) else ""  # SQLite's writers are serial
    row = store.db.execute_sql(store.statement("vote.lock", lambda: (
        f'SELECT {columns(ApprovalRow)} FROM "approval" WHERE "id" = {p}' + lock)),
        (approval_id,)).fetchone()
    if row is None:
        return None
    request = _decode(row)
    if request.status != "pending" or request.expires_at <= now \
            or request.required_approvals <= 1:
        return None
    voter = voter_of(decided_by)
    current = approval_record(request)
    if not approvers.may_decide(current.approvers, current.escalated_at is not None,
                                decided_by):
        raise NotAnApprover(with_votes(store, current))
    if edited_payload is not None:
        raise InvalidArgument(f"approval {approval_id} needs {request.required_approvals} "
                              "approvers: each approves it as submitted, so it cannot be edited")
    if request.requested_by is not None and \
            approvers.telegram_user(decided_by) == request.requested_by:
        raise SelfApproval(with_votes(store, current))
    added = store.db.execute_sql(store.statement("vote.add", lambda: (
        'INSERT INTO "approval_vote" ("approval_id", "voter", "by", "at") '
        f'VALUES ({p}, {p}, {p}, {p}) ON CONFLICT ("approval_id", "voter") DO NOTHING')),
        (approval_id, voter, decided_by, to_text(now))).rowcount
    if not added:
        raise AlreadyVoted(with_votes(store, current), voter)
    mark_copies_owed([approval_id])  # every copy shows the progress (or the outcome)
    counted = votes(store, approval_id)
    if len(counted) < request.required_approvals:
        return current.model_copy(update={"approvals": counted})
    won = store.db.execute_sql(store.statement("vote.decide", lambda: (
        f'UPDATE "approval" SET "status" = \'approved\', "decided_by" = {p}, '
        f'"decided_at" = {p}, "edited_payload" = {p} WHERE "id" = {p} '
        f'AND "status" = \'pending\' RETURNING {columns(ApprovalRow)}')),
        (decided_by, to_text(now),
         None if edited_payload is None else ApprovalRow.edited_payload.db_value(edited_payload),
         approval_id)).fetchone()
    store.announce_final([approval_id])
    return approval_record(_decode(won)).model_copy(update={"approvals": counted})
