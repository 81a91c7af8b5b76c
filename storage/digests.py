"""Digests: a burst of requests owed to one chat, listed in one message.

A digest claims copies (``approval_message.digest_id``) that were never posted;
from then on those copies are paid as one message: the digest is posted once
(every claimed copy records its ``message_id``) and edited as its requests are
decided or its page changes. The outbox rules of :mod:`storage.copies` hold for
each copy: it stays ``owed`` until recorded showing what its approval is as
committed now, so a decision landing between a render and its record leads to
another edit, and a digest opened but never recorded as posted is posted again.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import peewee

from storage.approvals import _decode_approval, approval_record
from storage.base import StoreBase, columns, unit_of_work
from storage.clock import to_text
from storage.copies import shown_key
from storage.db import is_postgres
from storage.errors import NotFound
from storage.models import ApprovalRow, DigestRow
from storage.quorum import with_votes
from storage.records import Approval

GRANT_KIND = "budget.grant"  # a budget alert keeps its own message and its own buttons


class Digest(NamedTuple):
    """One digest message of one chat."""

    id: int
    chat_id: int
    message_id: int | None
    thread_id: int | None
    page: int
    created_at: datetime


class NewPost(NamedTuple):
    """A copy owed as a new post: whose request it is decides its forum topic."""

    ref_id: int
    agent: str
    run_id: str | None


class DigestItem(NamedTuple):
    """A copy listed in a digest: what the message shows for it, and its request now."""

    ref_id: int
    shown: str | None
    approval: Approval


def _digest(row: DigestRow) -> Digest:
    return Digest(row.id, row.chat_id, row.message_id, row.thread_id, row.page, row.created_at)


class DigestStore(StoreBase):
    """Digest operations of the Store."""

    @unit_of_work
    def new_posts(self, chat_id: int, limit: int = 1000) -> list[int]:
        """Copies owed to ``chat_id`` as new posts, oldest first: never posted, not in a
        digest, request still pending (budget alerts excluded). Read through the owed
        partial index."""
        return [post.ref_id for post in self.new_posts_of(chat_id, limit)]

    @unit_of_work
    def new_posts_of(self, chat_id: int, limit: int = 1000) -> list[NewPost]:
        """:meth:`new_posts` with whose they are (agent and run: their forum topic)."""
        p = self.db.param
        sql = self.statement("digest.new_posts", lambda: (
            'SELECT m."id", a."agent", a."run_id" FROM "approval_message" AS m '
            f'JOIN "approval" AS a ON a."id" = m."approval_id" WHERE m."owed" '
            f'AND m."chat_id" = {p} AND m."message_id" IS NULL AND m."digest_id" IS NULL '
            f'AND a."status" = \'pending\' AND a."kind" <> \'{GRANT_KIND}\' '
            f'ORDER BY m."id" LIMIT {p}'))
        return [NewPost(*row) for row in self.db.execute_sql(sql, (chat_id, limit)).fetchall()]

    @unit_of_work
    def open_digest(self, chat_id: int, ref_ids: list[int], thread_id: int | None = None,
                    now: datetime | None = None) -> tuple[Digest, list[int]] | None:
        """Open a digest of ``chat_id`` claiming those of ``ref_ids`` that are still
        unposted copies of that chat in no digest (one transaction). Returns the digest
        and the claimed copies, or None (and no digest) when none could be claimed."""
        if not ref_ids:
            return None
        p = self.db.param
        with self.write():
            row = DigestRow.create(chat_id=chat_id, thread_id=thread_id, page=0,
                                   created_at=now or self.clock())
            marks = ", ".join([p] * len(ref_ids))
            claimed = sorted(r[0] for r in self.db.execute_sql(
                f'UPDATE "approval_message" SET "digest_id" = {p} WHERE "id" IN ({marks}) '
                f'AND "chat_id" = {p} AND "message_id" IS NULL AND "digest_id" IS NULL '
                'RETURNING "id"', (row.id, *ref_ids, chat_id)).fetchall())
            if not claimed:
                DigestRow.delete().where(DigestRow.id == row.id).execute()
                return None
        return _digest(row), claimed

    @unit_of_work
    def get_digest(self, digest_id: int) -> Digest:
        row = DigestRow.get_or_none(DigestRow.id == digest_id)
        if row is None:
            raise NotFound(f"digest {digest_id} not found")
        return _digest(row)

    @unit_of_work
    def digest_items(self, digest_id: int) -> list[DigestItem]:
        """The copies a digest lists, in the order they were claimed, with their requests."""
        p = self.db.param
        sql = self.statement("digest.items", lambda: (
            f'SELECT m."id", m."shown", {_a_columns()} FROM "approval_message" AS m '
            'JOIN "approval" AS a ON a."id" = m."approval_id" '
            f'WHERE m."digest_id" = {p} ORDER BY m."id"'))
        items = []
        for row in self.db.execute_sql(sql, (digest_id,)).fetchall():
            approval = approval_record(_decode_approval(row[2:]))
            items.append(DigestItem(row[0], row[1], with_votes(self, approval)))
        return items

    def _shown_now(self, digest_id: int) -> dict[int, str]:
        """Inside a write: what each copy of the digest should display as committed now.
        On PostgreSQL FOR SHARE waits for decisions in flight and holds the requests
        until we commit (a decision after us then owes the copies again)."""
        p = self.db.param
        rows = self.db.execute_sql(self.statement("digest.shown_now", lambda: (
            'SELECT m."id", a."status", a."required_approvals", a."escalated_at", a."id" '
            'FROM "approval_message" AS m JOIN "approval" AS a ON a."id" = m."approval_id" '
            f'WHERE m."digest_id" = {p}'
            + (" FOR SHARE OF a" if is_postgres(self.db) else ""))), (digest_id,)).fetchall()
        return {ref_id: shown_key(self, *rest) for ref_id, *rest in rows}

    @unit_of_work
    def record_digest(self, digest_id: int, shown: dict[int, str], page: int,
                      message_id: int | None = None, thread_id: int | None = None,
                      now: datetime | None = None) -> bool:
        """Record that the digest was posted (``message_id``: the digest's and every
        claimed copy's; ``thread_id``: its forum topic) or edited, showing ``shown``
        (copy id → display key) on ``page``.

        A copy stops being owed only if its key is its approval's as committed now and
        the digest still is on ``page`` (a compare-and-set, like
        :meth:`storage.copies.CopyStore.record_message`). True if nothing is owed now.
        """
        p = self.db.param
        lock = " FOR UPDATE" if is_postgres(self.db) else ""
        with self.write():
            row = self.db.execute_sql(f'SELECT "page" FROM "digest" WHERE "id" = {p}{lock}',
                                      (digest_id,)).fetchone()
            if row is None:
                return False
            same_page = row[0] == page
            if message_id is not None:
                self.db.execute_sql(f'UPDATE "digest" SET "message_id" = {p}, "thread_id" = {p} '
                                    f'WHERE "id" = {p}', (message_id, thread_id, digest_id))
            current = self._shown_now(digest_id)
            stamp = to_text(now or self.clock())
            params = [(key, stamp, not same_page or current[ref_id] != key, message_id, ref_id,
                       digest_id) for ref_id, key in shown.items() if ref_id in current]
            if params:
                with peewee.__exception_wrapper__:
                    self.db.cursor().executemany(
                        f'UPDATE "approval_message" SET "shown" = {p}, "updated_at" = {p}, '
                        f'"owed" = {p}, "message_id" = COALESCE({p}, "message_id") '
                        f'WHERE "id" = {p} AND "digest_id" = {p}', params)
            return same_page and all(current[r] == k for r, k in shown.items() if r in current)

    @unit_of_work
    def set_digest_page(self, digest_id: int, page: int) -> Digest:
        """Show ``page`` (0-based); the digest's copies are owed so it is re-rendered."""
        with self.write():
            rows = list(DigestRow.update(page=page).where(DigestRow.id == digest_id)
                        .returning(DigestRow).execute())
            if not rows:
                raise NotFound(f"digest {digest_id} not found")
            self._owe(digest_id)
        return _digest(rows[0])

    @unit_of_work
    def owe_digest(self, digest_id: int, approval_id: str | None = None) -> int:
        """Owe the digest's copies again (only ``approval_id``'s, if given, and only if it
        shows something else than its request now): the message is re-rendered."""
        with self.write():
            if approval_id is None:
                return self._owe(digest_id)
            shown = self._shown_now(digest_id)
            p = self.db.param
            row = self.db.execute_sql(
                f'SELECT "id", "shown" FROM "approval_message" WHERE "digest_id" = {p} '
                f'AND "approval_id" = {p}', (digest_id, approval_id)).fetchone()
            if row is None or shown.get(row[0]) == row[1]:
                return 0
            return self.db.execute_sql(
                f'UPDATE "approval_message" SET "owed" = TRUE WHERE "id" = {p}',
                (row[0],)).rowcount

    def _owe(self, digest_id: int) -> int:
        return self.db.execute_sql(
            f'UPDATE "approval_message" SET "owed" = TRUE WHERE "digest_id" = {self.db.param}',
            (digest_id,)).rowcount

    @unit_of_work
    def give_up_digest(self, digest_id: int, shown: dict[int, str]) -> int:
        """Stop owing the copies of a digest Telegram refuses for good, except those whose
        request moved on from ``shown`` meanwhile (they get a new attempt)."""
        p = self.db.param
        with self.write():
            current = self._shown_now(digest_id)
            done = [r for r, key in shown.items() if current.get(r) == key]
            for ref_id in done:
                self.db.execute_sql(
                    f'UPDATE "approval_message" SET "owed" = FALSE WHERE "id" = {p}', (ref_id,))
        return len(done)


def _a_columns() -> str:
    return ", ".join(f'a.{c}' for c in columns(ApprovalRow).split(", "))
