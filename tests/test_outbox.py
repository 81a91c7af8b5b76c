"""The Telegram outbox: ``approval_message.owed``, the order owed copies are paid in,
digests, chats that refuse the bot, refused texts and database errors.

Store-level tests use the ``store`` fixture, end-to-end tests the ``service``
fixture (the real PTB Application against the fake Bot API server); both run
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from telegram.error import BadRequest, Forbidden, NetworkError

from bot.telegram import render
from bot.telegram.failures import backoff_kind
from bot.telegram.notifier import TelegramNotifier
from storage.clock import to_text
from storage.db import is_postgres
from storage.errors import AlreadyFinal, StorageError
from storage.models import ApprovalMessageRow
from storage.records import NewApproval, RunUpsert
from tests.test_telegram import ALICE, CHAT_A, CHAT_B, edited_to, posted, submit

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
DIGEST_HEAD = "requests were decided before they could be posted"


def new_approval(**fields) -> NewApproval:
    values = {"agent": "builder", "kind": "shell", "summary": "rm -rf build/",
              "ttl_seconds": 60, "chat_ids": [111, 222]}
    return NewApproval(**{**values, **fields})


def owed_flags(store, approval_id: str) -> list[bool]:
    rows = (ApprovalMessageRow.select(ApprovalMessageRow.owed)
            .where(ApprovalMessageRow.approval == approval_id).order_by(ApprovalMessageRow.id))
    return [bool(r.owed) for r in rows]


def post_all(store, approval_id: str, now=T0) -> None:
    for ref in store.approval_messages(approval_id):
        store.record_message(ref.id, "pending", message_id=1000 + ref.id, now=now)


# --- the owed flag -------------------------------------------------------------------


def test_owed_is_set_by_every_transition_and_cleared_by_a_matching_record(store):
    a, _ = store.create_approval(new_approval(), now=T0)
    assert owed_flags(store, a.id) == [True, True]
    post_all(store, a.id)
    assert owed_flags(store, a.id) == [False, False]
    assert store.messages_owed() == []
    store.resolve_approval(a.id, "approved", "alice", now=T0 + S)
    assert owed_flags(store, a.id) == [True, True]
    for ref in store.approval_messages(a.id):
        assert store.record_message(ref.id, "approved", now=T0 + 2 * S)
    assert owed_flags(store, a.id) == [False, False]

    # The expiry found by a late transition, the sweep, a cancel: each owes the copies.
    due, _ = store.create_approval(new_approval(ttl_seconds=10), now=T0)
    swept, _ = store.create_approval(new_approval(ttl_seconds=10), now=T0)
    withdrawn, _ = store.create_approval(new_approval(), now=T0)
    for x in (due, swept, withdrawn):
        post_all(store, x.id)
    with pytest.raises(AlreadyFinal) as exc:
        store.resolve_approval(due.id, "denied", "bob", now=T0 + 20 * S)
    assert exc.value.expired_now
    assert owed_flags(store, due.id) == [True, True]
    assert owed_flags(store, swept.id) == [False, False]
    assert [x.id for x in store.expire_due(now=T0 + 20 * S)] == [swept.id]
    assert owed_flags(store, swept.id) == [True, True]
    store.cancel_approval(withdrawn.id, "api", now=T0 + 21 * S)
    assert owed_flags(store, withdrawn.id) == [True, True]


def test_a_decision_between_send_and_record_leaves_the_copy_owed(store):
    a, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    ref = store.approval_messages(a.id)[0]
    store.resolve_approval(a.id, "denied", "bob", now=T0 + S)  # lands while the send is out
    assert store.record_message(ref.id, "pending", message_id=77, now=T0 + 2 * S) is False
    [(owed, approval)] = store.messages_owed(111)
    assert (owed.message_id, owed.shown, approval.status) == (77, "pending", "denied")
    assert store.record_message(ref.id, "denied", now=T0 + 3 * S) is True
    assert store.messages_owed(111) == []


def in_flight(store, statements: list[tuple[str, tuple]]):
    """Run ``statements`` (``?`` placeholders) in another connection's transaction, left
    open: a concurrent unit of work caught between its statements."""
    if is_postgres(store.db):
        conn = psycopg.connect(dbname=store.db.database, **store.db.connect_params)
        mark = "%s"
    else:
        conn = sqlite3.connect(store.db.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        mark = "?"
    for sql, params in statements:
        conn.execute(sql.replace("?", mark), params)
    return conn


def run_against(store, conn, fn):
    """Call ``fn`` in a thread while ``conn``'s transaction is open (on PostgreSQL, wait
    until it waits for a lock; SQLite's writers wait anyway), then commit; return its result."""
    result = []

    def call() -> None:
        try:
            result.append(fn())
        finally:
            store.close_thread_connection()

    thread = threading.Thread(target=call)
    thread.start()
    if is_postgres(store.db):
        with psycopg.connect(dbname=store.db.database, autocommit=True,
                             **store.db.connect_params) as watch:
            deadline = time.monotonic() + 10
            while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                    "wait_event_type = 'Lock' AND datname = %s",
                                    (store.db.database,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the call never waited for the other"
                time.sleep(0.01)
    conn.commit()
    thread.join(10)
    conn.close()
    return result[0]


def test_a_record_waits_for_a_decision_in_flight(store):
    """A decision committing while the copy is recorded: the record must see it, never
    settle the copy on the old status (on PostgreSQL it waits for the decision's lock)."""
    a, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    ref = store.approval_messages(a.id)[0]
    decision = in_flight(store, [  # as _transition writes it, not yet committed
        ("UPDATE approval SET status = 'approved' WHERE id = ?", (a.id,)),
        ("UPDATE approval_message SET owed = TRUE WHERE approval_id = ?", (a.id,))])
    settled = run_against(store, decision, lambda: store.record_message(
        ref.id, "pending", message_id=5, now=T0 + S))
    assert settled is False
    assert [r.id for r, _ in store.messages_owed(111)] == [ref.id]


def test_a_decision_waiting_for_a_record_in_flight_still_owes_the_copy(store):
    """The reverse: a record holds the approval while a decision arrives. The decision,
    committed after it, must leave the copy owed (its snapshot predates the record)."""
    a, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    ref = store.approval_messages(a.id)[0]
    lock = " FOR SHARE" if is_postgres(store.db) else ""
    record = in_flight(store, [  # as record_message writes it, not yet committed
        (f"SELECT status FROM approval WHERE id = ?{lock}", (a.id,)),
        ("UPDATE approval_message SET owed = FALSE, shown = 'pending', message_id = 5 "
         "WHERE id = ?", (ref.id,))])
    decided = run_against(store, record, lambda: store.resolve_approval(
        a.id, "denied", "bob", now=T0 + S))
    assert decided.status == "denied"
    assert owed_flags(store, a.id) == [True]
    [(owed, approval)] = store.messages_owed(111)
    assert (owed.message_id, owed.shown, approval.status) == (5, "pending", "denied")


def test_owed_lookup_uses_the_partial_index(store, monkeypatch):
    """Thousands of paid copies and three owed: the lookup reads the partial index
    approval_message_owed (the old join filtered on shown != status: a full scan)."""
    fill_history(store, decided=2000)
    live, _ = store.create_approval(new_approval(chat_ids=[CHAT_A, CHAT_B]), now=T0)
    statements: list[tuple[str, tuple]] = []
    real = store.db.execute_sql

    def spy(sql, params=None, *args, **kwargs):
        statements.append((sql, tuple(params or ())))
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(store.db, "execute_sql", spy)
    assert [ap.id for _, ap in store.messages_owed(CHAT_A)] == [live.id]
    monkeypatch.undo()
    [(sql, params)] = [s for s in statements if "approval_message" in s[0]]
    if is_postgres(store.db):
        store.db.execute_sql('ANALYZE "approval_message"')
        store.db.execute_sql("SET enable_seqscan = off")  # a deterministic plan at any size
        try:
            plan = "\n".join(r[0] for r in store.db.execute_sql(f"EXPLAIN {sql}", params))
        finally:
            store.db.execute_sql("RESET enable_seqscan")
    else:
        plan = "\n".join(r[-1] for r in store.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                              params))
    assert "approval_message_owed" in plan, plan


def fill_history(store, decided: int, chats=(CHAT_A, CHAT_B)) -> None:
    """``decided`` approved requests whose copies (one per chat) are all paid."""
    p = store.db.param
    at = to_text(T0)
    with store.db.atomic():
        cursor = store.db.cursor()
        cursor.executemany(
            'INSERT INTO "approval" ("id", "agent", "kind", "summary", "status", "decided_by", '
            '"decided_at", "callback_data", "adapter", "created_at", "expires_at") VALUES '
            f'({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})',
            [(f"old{i}", "builder", "shell", "old", "approved", "alice", at, f"appr:old{i}",
              "telegram", at, at) for i in range(decided)])
        cursor.executemany(
            'INSERT INTO "approval_message" ("approval_id", "chat_id", "message_id", "shown", '
            f'"updated_at", "owed") VALUES ({p}, {p}, {p}, {p}, {p}, {p})',
            [(f"old{i}", chat, i + 1, "approved", at, False)
             for i in range(decided) for chat in chats])


def test_owed_copies_come_pending_newest_first_then_edits_then_unposted(store):
    posted_first, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    post_all(store, posted_first.id)
    unposted, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0 + S)
    older, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0 + 2 * S)
    newer, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0 + 3 * S)
    store.resolve_approval(posted_first.id, "approved", "alice", now=T0 + 4 * S)
    store.resolve_approval(unposted.id, "denied", "bob", now=T0 + 4 * S)
    order = [ap.id for _, ap in store.messages_owed(111)]
    assert order == [newer.id, older.id, posted_first.id, unposted.id]
    assert [ap.id for _, ap in store.messages_owed(111, limit=1)] == [newer.id]
    [item] = store.unposted_outcomes(111)
    assert (item.approval_id, item.kind, item.status) == (unposted.id, "shell", "denied")


def test_settle_unposted_and_give_up(store):
    a, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    b, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0)
    store.resolve_approval(a.id, "approved", "alice", now=T0 + S)
    refs = [store.approval_messages(x.id)[0].id for x in (a, b)]
    # Only decided, unposted, owed copies are settled: the pending one is left alone.
    assert store.settle_unposted(refs, now=T0 + 2 * S) == 1
    [settled] = store.approval_messages(a.id)
    assert (settled.message_id, settled.shown) == (None, "approved")
    assert [ap.id for _, ap in store.messages_owed(111)] == [b.id]
    # A copy given up while pending is owed again when its request is decided.
    assert store.give_up_message(refs[1], "approved") is False  # not its status
    assert store.give_up_message(refs[1], "pending") is True
    assert store.messages_owed(111) == []
    store.resolve_approval(b.id, "denied", "bob", now=T0 + 3 * S)
    assert [ap.id for _, ap in store.messages_owed(111)] == [b.id]


def test_cancel_run_expires_its_overdue_approvals(store):
    store.upsert_run(RunUpsert(id="r1"), now=T0)
    overdue, _ = store.create_approval(new_approval(run_id="r1", ttl_seconds=10), now=T0)
    live, _ = store.create_approval(new_approval(run_id="r1", ttl_seconds=3600), now=T0)
    for x in (overdue, live):
        post_all(store, x.id)
    later = T0 + 60 * S
    _, changed = store.cancel_run("r1", decided_by="cli", now=later)
    by_id = {x.id: x for x in changed}
    assert set(by_id) == {overdue.id, live.id}
    expired = by_id[overdue.id]
    assert (expired.status, expired.decided_by, expired.decided_at) == (
        "expired", "expiry", T0 + 10 * S)
    cancelled = by_id[live.id]
    assert (cancelled.status, cancelled.decided_by, cancelled.decided_at) == (
        "cancelled", "cli", later)
    for x in changed:
        assert store.get_approval(x.id) == x
        assert owed_flags(store, x.id) == [True, True]


# --- texts and backoff policy --------------------------------------------------------


def test_digest_fits_telegram_and_says_how_many_more():
    items = [(f"id{i:09d}", "deploy<prod>" * 10, "denied") for i in range(500)]
    text = render.outcomes_digest(items)
    assert render.visible_length(text) <= render.MAX_TEXT
    listed = text.count("<code>")
    assert 20 < listed < 500
    assert text.endswith(f"…and {500 - listed} more.")
    assert "id000000000" in text and "&lt;prod&gt;" in text  # newest (first) listed, escaped
    small = render.outcomes_digest([("a1", "shell", "approved"), ("a2", "x", "expired")])
    assert "more" not in small and "✅ <code>a1</code> · shell · Approved" in small


def test_backoff_is_short_for_the_database_and_long_for_telegram():
    notifier = TelegramNotifier(None, None, [CHAT_A])
    assert backoff_kind(StorageError("database error: connection refused")) == "storage"
    assert backoff_kind(Forbidden("Forbidden: bot was blocked by the user")) == "refused"
    assert backoff_kind(NetworkError("Bad Gateway")) == "outage"
    assert backoff_kind(BadRequest("Bad Request: chat not found")) == "outage"
    assert max(notifier.backoff("storage", n) for n in range(1, 50)) <= 2.0
    assert notifier.backoff("outage", 20) == 30.0
    assert 60 <= notifier.backoff("refused", 20) <= 600


# --- end to end ----------------------------------------------------------------------


async def until(condition, timeout: float = 15.0, what: str = "condition"):
    """Poll ``condition`` (something the fake cannot announce) until it holds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.01)
    return result


def chat_calls(fake, chat_id: int, since: int) -> list:
    return [c for c in fake.calls[since:] if c.ok and int(c.params.get("chat_id", 0)) == chat_id
            and c.method in ("sendMessage", "editMessageText")]


def labels(calls: list, approvals: list) -> list[tuple[str, str]]:
    out = []
    for call in calls:
        text = call.params["text"]
        if DIGEST_HEAD in text:
            out.append(("digest", ""))
            continue
        [approval] = [a for a in approvals if a.id in text]
        out.append(("send" if call.method == "sendMessage" else "edit", approval.id))
    return out


async def test_after_an_outage_pending_go_first_then_edits_then_one_digest(fake, service):
    service.notifier.retry_base, service.notifier.retry_max = 0.05, 0.2
    early = [await submit(service, summary=f"early {i}") for i in range(2)]
    for a in early:
        for chat in (CHAT_A, CHAT_B):
            await posted(fake, chat, a.id)
    await until(lambda: service.notifier.idle, what="notifier idle")
    fake.set_down(True)
    for a in early:
        await service.manager.resolve(a.id, "approved", "cli")
    old = [await submit(service, summary=f"old {i}") for i in range(5)]
    for a in old:
        await service.manager.resolve(a.id, "denied", "cli")
    live = [await submit(service, summary=f"live {i}") for i in range(3)]
    # Every worker's next read happens after a failure that follows all of the above.
    mark = len(fake.calls)
    for chat in (CHAT_A, CHAT_B):
        await fake.wait_until(lambda chat=chat: [
            c for c in fake.calls[mark:] if c.status == 502
            and int(c.params.get("chat_id", 0)) == chat], what=f"a failed call for {chat}")
    since = len(fake.calls)
    fake.set_down(False)
    for chat in (CHAT_A, CHAT_B):
        await fake.wait_for("sendMessage", lambda c, chat=chat: DIGEST_HEAD in c.params["text"]
                            and int(c.params["chat_id"]) == chat)
        order = labels(chat_calls(fake, chat, since), [*early, *old, *live])
        assert order == [("send", live[2].id), ("send", live[1].id), ("send", live[0].id),
                         ("edit", early[0].id), ("edit", early[1].id), ("digest", "")]
        [digest] = [c for c in chat_calls(fake, chat, since) if DIGEST_HEAD in c.params["text"]]
        assert all(a.id in digest.params["text"] for a in old)
        assert "5 requests" in digest.params["text"]
    await until(lambda: service.notifier.idle, what="notifier idle")
    for a in old:
        refs = await service.store.run(service.store.approval_messages, a.id)
        assert [(r.message_id, r.shown) for r in refs] == [(None, "denied")] * 2
    assert await service.store.run(service.store.messages_owed) == []


async def test_a_chat_that_blocked_the_bot_is_retried_and_gets_pending_first(fake, service):
    service.notifier.refusal_base, service.notifier.refusal_max = 0.05, 0.2
    fake.set_chat_unavailable(CHAT_B, "Forbidden: bot was blocked by the user", 403)
    decided = await submit(service, summary="decided while blocked")
    await service.manager.resolve(decided.id, "approved", "cli")
    live = [await submit(service, summary=f"live {i}") for i in range(3)]
    for a in (decided, *live):
        await posted(fake, CHAT_A, a.id)  # the other chat is not held up
    mark = len(fake.calls)

    def refused() -> int:
        return len([c for c in fake.calls[mark:] if c.status == 403
                    and int(c.params.get("chat_id", 0)) == CHAT_B])

    await fake.wait_until(lambda: refused() >= 2, what="chat B retried after refusals")
    since = len(fake.calls)
    fake.set_chat_unavailable(CHAT_B, None)
    msg = await posted(fake, CHAT_B, decided.id)
    assert labels(chat_calls(fake, CHAT_B, since), [decided, *live]) == [
        ("send", live[2].id), ("send", live[1].id), ("send", live[0].id), ("send", decided.id)]
    assert "Approved by cli" in msg.text and not msg.buttons


async def test_a_message_from_a_refusing_chat_retries_it_at_once(fake, service):
    """The approver unblocks the bot and presses /start: no waiting out the backoff."""
    from tests.test_telegram import BOB

    service.notifier.refusal_base = service.notifier.refusal_max = 600.0
    fake.set_chat_unavailable(CHAT_B, "Forbidden: bot was blocked by the user", 403)
    approval = await submit(service, summary="while blocked")
    await posted(fake, CHAT_A, approval.id)
    await fake.wait_for_error("sendMessage")  # chat B refused: the next try is 10 min away
    fake.set_chat_unavailable(CHAT_B, None)
    fake.send_text(CHAT_B, BOB, "/start")
    await posted(fake, CHAT_B, approval.id)


async def test_a_refused_edit_text_falls_back_to_plain_text(fake, service):
    approval = await submit(service)
    for chat in (CHAT_A, CHAT_B):
        await posted(fake, chat, approval.id)
    fake.fail_next("editMessageText",
                   error='Bad Request: can\'t parse entities: Unsupported start tag "x"')
    await service.manager.resolve(approval.id, "denied", "telegram:1002 (@bob)", "no")
    failed = await fake.wait_for_error("editMessageText")
    chat, message_id = int(failed.params["chat_id"]), int(failed.params["message_id"])
    msg = await edited_to(fake, chat, message_id, f"❌ Denied by @bob · request {approval.id}")
    assert msg.parse_mode is None
    await until(lambda: service.notifier.idle, what="notifier idle")
    refs = await service.store.run(service.store.approval_messages, approval.id)
    assert {r.shown for r in refs} == {"denied"}
    assert await service.store.run(service.store.messages_owed) == []


async def test_a_refused_send_text_falls_back_to_plain_text_with_buttons(fake, service):
    fake.fail_next("sendMessage", error="Bad Request: message is too long")
    approval = await submit(service)
    failed = await fake.wait_for_error("sendMessage")
    chat = int(failed.params["chat_id"])
    msg = await posted(fake, chat, approval.id)
    assert msg.text.startswith("⏳ Pending · request") and msg.buttons
    fake.tap(chat, msg.message_id, ALICE, button_text="✅ Approve")
    await edited_to(fake, chat, msg.message_id, "Approved by @alice")


async def test_a_copy_refused_for_good_is_given_up_alone(fake, service):
    service.notifier.page = 1  # a given-up copy must not stay at the head of the page
    fake.fail_next("sendMessage", error="Bad Request: some permanent refusal")
    approvals = [await submit(service, summary=f"job {i}") for i in range(3)]
    failed = await fake.wait_for_error("sendMessage")
    chat = int(failed.params["chat_id"])
    [refused] = [a for a in approvals if a.id in failed.params["text"]]
    for a in approvals:
        for c in (CHAT_A, CHAT_B):
            if (a.id, c) != (refused.id, chat):
                await posted(fake, c, a.id)
    await until(lambda: service.notifier.idle, what="notifier idle")
    [ref] = [r for r in await service.store.run(service.store.approval_messages, refused.id)
             if r.chat_id == chat]
    assert ref.message_id is None
    assert await service.store.run(service.store.messages_owed) == []
    attempts = [c for c in fake.calls_of("sendMessage") if refused.id in c.params["text"]
                and int(c.params["chat_id"]) == chat]
    assert len(attempts) == 1


async def test_database_errors_are_retried_within_two_seconds(fake, service):
    store = service.store
    real, attempts, failing = store.messages_owed, [], [True]

    def flaky(chat_id=None, *args, **kwargs):
        if chat_id == CHAT_A:
            attempts.append(time.monotonic())
        if failing[0]:
            raise StorageError("database error: server closed the connection unexpectedly")
        return real(chat_id, *args, **kwargs)

    store.messages_owed = flaky
    approval = await submit(service)
    await until(lambda: len(attempts) >= 8, what="eight attempts on chat A")
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert max(gaps) <= 2.5, gaps
    failing[0] = False
    started = time.monotonic()
    await posted(fake, CHAT_A, approval.id)
    assert time.monotonic() - started <= 3.0


async def test_a_send_whose_record_failed_is_not_sent_again(fake, service):
    store = service.store
    real, failures = store.record_message, [2]

    def flaky(*args, **kwargs):
        if failures[0] > 0:
            failures[0] -= 1
            raise StorageError("database error: connection refused")
        return real(*args, **kwargs)

    store.record_message = flaky
    approval = await submit(service)
    for chat in (CHAT_A, CHAT_B):
        await posted(fake, chat, approval.id)
    await until(lambda: service.notifier.idle, what="notifier idle")
    assert failures == [0]
    assert await store.run(store.messages_owed) == []
    sends = [c for c in fake.calls_of("sendMessage") if approval.id in c.params["text"]]
    assert len(sends) == 2
