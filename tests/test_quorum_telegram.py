"""Two-person approval through the real bot and the fake Telegram: progress on every
copy, a double tap and the requester's own tap refused with a popup, one deny deciding,
racing last approvers making one decision, and escalation posting once."""

from __future__ import annotations

import asyncio

from bot.service import Service
from tests.fake_telegram import User
from tests.test_telegram import (
    ALICE,
    BOB,
    CHAT_A,
    CHAT_B,
    answer_of,
    edited_to,
    posted,
    settings_for,
    submit,
)

CAROL = User(1003, "carol", "Carol")
TEAM = -100500  # a group where all three approvers sit


async def test_two_approvers_decide_and_every_copy_shows_progress(fake, service):
    approval = await submit(service, required_approvals=2)
    msg_a = await posted(fake, CHAT_A, approval.id)
    msg_b = await posted(fake, CHAT_B, approval.id)
    assert "✅ 0 of 2" in msg_a.text
    assert msg_a.button_texts == ["✅ Approve", "❌ Deny", "💬 Deny with reason"]
    waiter = asyncio.create_task(service.manager.wait(approval.id, 30))
    first = fake.tap(CHAT_A, msg_a.message_id, ALICE, button_text="✅ Approve")
    assert "1 of 2" in await answer_of(fake, first)
    for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
        await fake.wait_until(lambda c=chat, m=msg: "✅ 1 of 2: @alice" in
                              fake.message(c, m.message_id).text, what="progress")
        assert fake.message(chat, msg.message_id).buttons  # still decidable
    assert not waiter.done()
    again = fake.tap(CHAT_B, msg_b.message_id, ALICE, button_text="✅ Approve")
    assert "already approved" in await answer_of(fake, again)
    second = fake.tap(CHAT_B, msg_b.message_id, BOB, button_text="✅ Approve")
    decided = await asyncio.wait_for(waiter, 10)
    assert decided.status == "approved" and "Approved" in await answer_of(fake, second)
    assert [v.by for v in decided.approvals] == ["telegram:1001 (@alice)",
                                                 "telegram:1002 (@bob)"]
    for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
        await edited_to(fake, chat, msg.message_id, "Approved by @alice, @bob")


async def test_one_deny_decides_and_the_requesters_approval_never_counts(fake, service):
    approval = await submit(service, required_approvals=2, requested_by=ALICE.id)
    msg_a = await posted(fake, CHAT_A, approval.id)
    own = fake.tap(CHAT_A, msg_a.message_id, ALICE, button_text="✅ Approve")
    assert "acts for you" in await answer_of(fake, own)
    assert (await service.manager.get(approval.id)).approvals == []
    deny = fake.tap(CHAT_A, msg_a.message_id, BOB, button_text="❌ Deny")
    assert "Denied" in await answer_of(fake, deny)
    await edited_to(fake, CHAT_A, msg_a.message_id, "Denied by @bob")


async def test_racing_last_approvers_make_one_decision(fake, db_url):
    svc = Service(settings_for(fake, db_url, approver_chat_ids=[TEAM],
                               approver_user_ids=[ALICE.id, BOB.id, CAROL.id]),
                  with_socket=False)
    await svc.start()
    try:
        await fake.wait_polling()
        for _ in range(3):
            approval = await submit(svc, required_approvals=2)
            msg = await posted(fake, TEAM, approval.id)
            first = fake.tap(TEAM, msg.message_id, ALICE, button_text="✅ Approve")
            await answer_of(fake, first)
            queries = [fake.tap(TEAM, msg.message_id, user, button_text="✅ Approve")
                       for user in (BOB, CAROL)]
            answers = [await answer_of(fake, q) for q in queries]
            assert sum("Approved" in a and "Already" not in a for a in answers) == 1, answers
            final = await svc.manager.get(approval.id)
            assert final.status == "approved"
    finally:
        await svc.stop()


async def test_a_request_escalates_once_and_a_decision_there_finishes_every_copy(fake, db_url):
    escalation = -100900
    svc = Service(settings_for(fake, db_url, escalation_chat_ids=[escalation],
                               approver_user_ids=[ALICE.id, BOB.id, CAROL.id],
                               escalate_after=1), with_socket=False)
    await svc.start()
    try:
        await fake.wait_polling()
        approval = await submit(svc)
        msg_a = await posted(fake, CHAT_A, approval.id)
        up = await posted(fake, escalation, approval.id)
        await fake.wait_until(lambda: "escalated" in fake.message(CHAT_A, msg_a.message_id).text,
                              what="the original says it escalated")
        await asyncio.sleep(0)
        tap = fake.tap(escalation, up.message_id, CAROL, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        for chat, msg in ((CHAT_A, msg_a), (escalation, up)):
            await edited_to(fake, chat, msg.message_id, "Approved by @carol")
        sends = [c for c in fake.calls_of("sendMessage")
                 if int(c.params["chat_id"]) == escalation and approval.id in c.params["text"]]
        assert len(sends) == 1
    finally:
        await svc.stop()
