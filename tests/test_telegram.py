"""End to end: the real python-telegram-bot Application against the fake Bot API server.

Decision tests run on SQLite and PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from bot.config import Settings
from bot.service import Service
from tests.fake_telegram import FakeTelegram, User

ALICE = User(1001, "alice", "Alice")
BOB = User(1002, "bob", "Bob")
EVE = User(6666, "eve", "Eve")
CHAT_A, CHAT_B = ALICE.id, BOB.id


def settings_for(fake: FakeTelegram, db_url: str, **overrides) -> Settings:
    values = {
        "telegram_token": fake.token,
        "telegram_api_url": fake.url,
        "approver_chat_ids": [CHAT_A, CHAT_B],
        "approver_user_ids": [ALICE.id, BOB.id],
        "database_url": db_url,
        "expiry_interval": 0.2,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def running(fake: FakeTelegram, settings: Settings, with_socket: bool = True):
    """The bot of ``settings``, started and polling ``fake``; stopped on the way out."""
    svc = Service(settings, with_socket=with_socket)
    await svc.start()
    try:
        await fake.wait_polling()
        yield svc
    finally:
        await svc.stop()


@contextlib.asynccontextmanager
async def served_on_a_socket(fake: FakeTelegram, db_url: str, **overrides):
    """The bot with its Unix socket (what agents use), polling ``fake``."""
    sock_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="tgs-"))  # AF_UNIX paths are short
    try:
        async with running(fake, settings_for(fake, db_url, socket_path=sock_dir /
                                              "tapgate.sock", **overrides)) as svc:
            yield svc
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def socket_client(svc: Service) -> httpx.AsyncClient:
    """An HTTP client on ``svc``'s socket."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(svc.settings.socket_path)),
                             base_url="http://tapgate", timeout=60)


async def submit(svc: Service, **kwargs):
    values = {"agent": "builder", "kind": "shell", "summary": "rm -rf build/", **kwargs}
    approval, _ = await svc.manager.submit(**values)
    return approval


async def posted(fake: FakeTelegram, chat_id: int, approval_id: str):
    """The message of ``approval_id`` in ``chat_id`` once it is posted."""
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and approval_id in c.params["text"])
    return fake.message(chat_id, call.response["result"]["message_id"])


async def edited_to(fake: FakeTelegram, chat_id: int, message_id: int, needle: str):
    def done():
        msg = fake.message(chat_id, message_id)
        return msg if needle in msg.text and not msg.buttons else None
    return await fake.wait_until(done, what=f"message {message_id} shows {needle!r}")


async def answer_of(fake: FakeTelegram, query_id: str) -> str:
    call = await fake.wait_for("answerCallbackQuery",
                               lambda c: c.params["callback_query_id"] == query_id,
                               include_failed=True)
    return call.params.get("text", "")


async def test_approve_edits_every_copy_and_wakes_the_agent(fake, service):
    approval = await submit(service, payload={"path": "build/"})
    msg_a = await posted(fake, CHAT_A, approval.id)
    msg_b = await posted(fake, CHAT_B, approval.id)
    assert msg_a.button_texts == ["✅ Approve", "❌ Deny", "♾️ Always", "💬 Deny with reason",
                                  "✏️ Edit"]
    waiter = asyncio.create_task(service.manager.wait(approval.id, 30))
    query = fake.tap(CHAT_A, msg_a.message_id, ALICE, button_text="✅ Approve")
    decided = await asyncio.wait_for(waiter, 10)
    assert decided.status == "approved"
    assert decided.decided_by == "telegram:1001 (@alice)"
    assert "Approved" in await answer_of(fake, query)
    for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
        await edited_to(fake, chat, msg.message_id, "Approved by @alice")


async def test_deny_with_reason_by_command(fake, service):
    approval = await submit(service)
    msg = await posted(fake, CHAT_B, approval.id)
    fake.send_text(CHAT_B, BOB, f"/deny {approval.id} not on a Friday")
    await edited_to(fake, CHAT_B, msg.message_id, "Denied by @bob: not on a Friday")
    stored = await service.manager.get(approval.id)
    assert (stored.status, stored.reason) == ("denied", "not on a Friday")
    reply = await fake.wait_for("sendMessage", lambda c: "Denied" in c.params["text"]
                                and int(c.params["chat_id"]) == CHAT_B)
    assert approval.id in reply.params["text"]


async def test_approve_by_command(fake, service):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)
    fake.send_text(CHAT_A, ALICE, f"/approve {approval.id}")
    await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
    fake.send_text(CHAT_A, ALICE, "/approve nosuchid")
    await fake.wait_for("sendMessage", lambda c: "No request" in c.params["text"])
    fake.send_text(CHAT_A, ALICE, f"/deny {approval.id}")
    await fake.wait_for("sendMessage", lambda c: "Already approved by @alice" in c.params["text"])


async def test_two_approvers_at_once_one_wins(fake, service):
    approval = await submit(service)
    msg_a = await posted(fake, CHAT_A, approval.id)
    msg_b = await posted(fake, CHAT_B, approval.id)
    q_alice = fake.tap(CHAT_A, msg_a.message_id, ALICE, button_text="✅ Approve")
    q_bob = fake.tap(CHAT_B, msg_b.message_id, BOB, button_text="❌ Deny")
    answers = {await answer_of(fake, q_alice), await answer_of(fake, q_bob)}
    final = await service.manager.get(approval.id)
    # Taps are handled concurrently: either may win, exactly one does.
    if final.status == "approved":
        assert answers == {"✅ Approved", "Already approved by @alice"}
        outcome = "Approved by @alice"
    else:
        assert final.status == "denied"
        assert answers == {"❌ Denied", "Already denied by @bob"}
        outcome = "Denied by @bob"
    for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
        await edited_to(fake, chat, msg.message_id, outcome)


async def test_stranger_tap_changes_nothing(fake, service, caplog):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, EVE, button_text="✅ Approve")
    call = await fake.wait_for("answerCallbackQuery",
                               lambda c: c.params["callback_query_id"] == query)
    assert "not allowed" in call.params["text"]
    assert (await service.manager.get(approval.id)).status == "pending"
    assert fake.message(CHAT_A, msg.message_id).buttons
    assert any("non-approver" in r.message for r in caplog.records)
    fake.send_text(CHAT_A, EVE, "/pending")
    await fake.wait_for("sendMessage", lambda c: "not an approver" in c.params["text"])


async def test_stale_button_answers_state_and_repairs(fake, service):
    approval = await submit(service)
    await posted(fake, CHAT_A, approval.id)
    await posted(fake, CHAT_B, approval.id)
    # One copy's edit is lost (Telegram says the message is gone): it keeps its buttons.
    fake.fail_next("editMessageText", error="Bad Request: message to edit not found", status=400)
    await service.manager.resolve(approval.id, "approved", "telegram:1002 (@bob)")
    failed = await fake.wait_for_error("editMessageText")
    chat, message_id = int(failed.params["chat_id"]), int(failed.params["message_id"])
    assert fake.message(chat, message_id).buttons
    query = fake.tap(chat, message_id, ALICE, button_text="❌ Deny")
    assert await answer_of(fake, query) == "Already approved by @bob"
    await edited_to(fake, chat, message_id, "Approved by @bob")
    assert (await service.manager.get(approval.id)).status == "approved"


@pytest.mark.parametrize("data", ["garbage", "appr:nosuchid1:approve", "appr:{id}:maybe",
                                  "appr:{id}:approve:extra", "appr::deny", "x" * 64])
async def test_forged_callback_data_is_answered_and_changes_nothing(fake, service, data):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, data=data.format(id=approval.id))
    text = await answer_of(fake, query)
    assert "not valid" in text or "Unknown request" in text
    assert (await service.manager.get(approval.id)).status == "pending"


async def test_expiry_edits_the_message_and_wakes_the_waiter(fake, service):
    approval = await submit(service, ttl_seconds=1)
    msg = await posted(fake, CHAT_A, approval.id)
    decided = await service.manager.wait(approval.id, 10)
    assert decided.status == "expired"
    await edited_to(fake, CHAT_A, msg.message_id, "Expired")


async def test_restart_keeps_pending_requests_decidable(fake, db_url):
    first = Service(settings_for(fake, db_url), with_socket=False)
    await first.start()
    approval = await submit(first)
    msg = await posted(fake, CHAT_A, approval.id)
    await posted(fake, CHAT_B, approval.id)
    await fake.wait_until(lambda: first.notifier.idle, what="notifier idle")
    await first.stop()
    second = Service(settings_for(fake, db_url), with_socket=False)
    await second.start()
    try:
        assert (await second.manager.get(approval.id)).status == "pending"
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
        assert len(fake.calls_of("sendMessage")) == 2  # not posted again
    finally:
        await second.stop()


async def test_tap_while_down_counts_after_restart(fake, db_url):
    first = Service(settings_for(fake, db_url), with_socket=False)
    await first.start()
    approval = await submit(first)
    msg = await posted(fake, CHAT_A, approval.id)
    await first.stop()
    fake.callback_query_ttl = 0  # by the time the bot is back, Telegram refuses the answer
    fake.tap(CHAT_A, msg.message_id, BOB, button_text="❌ Deny")
    second = Service(settings_for(fake, db_url), with_socket=False)
    await second.start()
    try:
        await edited_to(fake, CHAT_A, msg.message_id, "Denied by @bob")
        assert (await second.manager.get(approval.id)).status == "denied"
        failed = await fake.wait_for_error("answerCallbackQuery")
        assert "query is too old" in failed.description
    finally:
        await second.stop()


async def test_special_characters_shown_exactly(fake, service):
    nasty = "<b>bold?</b> & <i>not</i> *md* _x_ [l](http://e) `c` #+-=|{}.! &amp; \\ \"q\" 'a'"
    approval = await submit(service, summary=nasty, agent="<agent&>",
                            payload={"cmd": nasty, "lt": "a<b>c"})
    msg = await posted(fake, CHAT_A, approval.id)
    assert nasty in msg.text
    assert "<agent&>" in msg.text
    assert json.dumps(nasty)[1:-1].replace('\\"', '"').replace("\\\\", "\\") in msg.text
    fake.send_text(CHAT_A, ALICE, f"/deny {approval.id} <no> & *never*")
    await edited_to(fake, CHAT_A, msg.message_id, "Denied by @alice: <no> & *never*")


async def test_large_payload_preview_truncated_and_stored_in_full(fake, service):
    payload = "".join(f"line {i}: <&> ok\n" for i in range(4000))
    assert len(payload) > 55_000
    approval = await submit(service, payload=payload)
    msg = await posted(fake, CHAT_A, approval.id)
    assert "Payload truncated" in msg.text
    assert len(msg.text.encode("utf-16-le")) // 2 <= 4096
    assert approval.id in msg.text
    assert (await service.manager.get(approval.id)).payload == payload


@pytest.mark.parametrize("count", [0, 1, 25])
async def test_pending_listing(fake, service, count):
    ids = [(await submit(service, summary=f"task {i}")).id for i in range(count)]
    fake.send_text(CHAT_A, ALICE, "/pending")
    call = await fake.wait_for("sendMessage", lambda c: "Pending requests" in c.params["text"]
                               or "No pending requests" in c.params["text"])
    text = call.params["text"]
    msg = fake.message(CHAT_A, call.response["result"]["message_id"])
    if count == 0:
        assert "No pending requests" in text
        assert not msg.buttons
        return
    assert ids[0] in text  # oldest first
    listed = min(count, 10)
    assert len(msg.buttons) == 2 * listed
    if count > 10:
        assert f"and {count - 10} more" in text
        assert ids[-1] not in text
    # A button of the listing decides too.
    fake.tap(CHAT_A, msg.message_id, ALICE, data=f"appr:{ids[0]}:approve")
    assert (await service.manager.wait(ids[0], 10)).status == "approved"


async def test_commands_registered_and_updates_explicit(fake, service):
    call = await fake.wait_for("setMyCommands")
    names = [c["command"] for c in json.loads(call.params["commands"])] \
        if isinstance(call.params["commands"], str) else \
        [c["command"] for c in call.params["commands"]]
    assert {"pending", "approve", "deny", "spend", "help"} <= set(names)
    # A getUpdates call is recorded when it returns: a long poll holds up to POLL_TIMEOUT
    # (10 s) unless an update arrives, so one is sent.
    fake.send_text(CHAT_A, ALICE, "/help")
    poll = await fake.wait_for("getUpdates", lambda c: "allowed_updates" in c.params, timeout=30)
    assert set(fake.allowed_updates) == {"message", "callback_query"}
    assert poll.ok


async def test_429_storm_on_send_loses_nothing(fake, sqlite_url, monkeypatch):
    svc = Service(settings_for(fake, sqlite_url), with_socket=False)
    await svc.start()
    try:
        fake.fail_next("sendMessage", count=4, retry_after=1)
        approvals = [await submit(svc, summary=f"storm {i}") for i in range(5)]
        for a in approvals:
            for chat in (CHAT_A, CHAT_B):
                await posted(fake, chat, a.id)
        sent = [c for c in fake.calls_of("sendMessage") if c.ok]
        assert len(sent) == 10  # every copy exactly once
        assert any(c.status == 429 for c in fake.calls_of("sendMessage"))
    finally:
        await svc.stop()


async def test_telegram_outage_delays_but_loses_nothing(fake, sqlite_url):
    svc = Service(settings_for(fake, sqlite_url), with_socket=False)
    await svc.start()
    try:
        fake.set_down(True)
        approval = await submit(svc)
        await fake.wait_for_error("sendMessage")
        fake.set_down(False)
        msg = await posted(fake, CHAT_A, approval.id)
        await posted(fake, CHAT_B, approval.id)
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
    finally:
        await svc.stop()


async def test_group_chat_pacing_does_not_hold_up_private_taps(fake, sqlite_url):
    group = -1001234567890
    # One message per request (digest_threshold=0): this is about the pacing itself.
    svc = Service(settings_for(fake, sqlite_url, approver_chat_ids=[CHAT_A, group],
                               digest_threshold=0), with_socket=False)
    await svc.start()
    try:
        approvals = [await submit(svc, summary=f"job {i}") for i in range(22)]
        last = approvals[-1]
        msg = await posted(fake, CHAT_A, last.id)
        # The group is held to 20 messages a minute; the private chat is not.
        group_sends = [c for c in fake.calls_of("sendMessage") if int(c.params["chat_id"]) == group]
        assert len(group_sends) < 22
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        assert (await svc.manager.wait(last.id, 5)).status == "approved"
        await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
        # Nothing is lost: every request reaches the group, the decided one edited there.
        await fake.wait_until(lambda: len(fake.messages(group)) == 22, timeout=30,
                              what="all 22 requests posted to the group")
        group_msg = next(m for m in fake.messages(group) if last.id in m.text)
        await edited_to(fake, group, group_msg.message_id, "Approved by @alice")
        group_sends = [c for c in fake.calls_of("sendMessage") if int(c.params["chat_id"]) == group]
        assert group_sends[-1].at - group_sends[0].at >= 2.5  # paced, not a burst
        assert not [c for c in fake.calls if c.status == 429]
    finally:
        await svc.stop()


async def test_stale_tap_on_a_pending_listing_leaves_the_listing(fake, service):
    approval = await submit(service, summary="listed once")
    await posted(fake, CHAT_A, approval.id)
    fake.send_text(CHAT_A, ALICE, "/pending")
    call = await fake.wait_for("sendMessage", lambda c: "Pending requests" in c.params["text"])
    listing = fake.message(CHAT_A, call.response["result"]["message_id"])
    await service.manager.resolve(approval.id, "denied", "telegram:1002 (@bob)")
    query = fake.tap(CHAT_A, listing.message_id, ALICE, data=f"appr:{approval.id}:approve")
    assert await answer_of(fake, query) == "Already denied by @bob"
    await fake.wait_until(lambda: service.notifier.idle, what="notifier idle")
    assert fake.message(CHAT_A, listing.message_id).edited_count == 0


async def test_request_decided_before_it_was_posted_is_posted_with_its_outcome(fake, service):
    fake.set_down(True)
    approval = await submit(service, summary="decided in the dark")
    # Chat A's own send must have failed: chat B's failure says nothing of chat A's worker.
    await fake.wait_for_error("sendMessage", lambda c: int(c.params.get("chat_id", 0)) == CHAT_A)
    await service.manager.resolve(approval.id, "denied", "cli", "not needed")
    fake.set_down(False)
    msg = await posted(fake, CHAT_A, approval.id)
    await edited_to(fake, CHAT_A, msg.message_id, "Denied by cli: not needed")
    assert fake.message(CHAT_A, msg.message_id).edited_count == 0  # posted final, no edit
