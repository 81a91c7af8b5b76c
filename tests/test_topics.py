"""Forum topics through the real bot and the fake Telegram, on SQLite and PostgreSQL: a
topic per agent or per run made on first use and remembered across restarts, none
without ``TAPGATE_TOPIC_PER``, chats without topics asked once, a deleted topic made
again, and taps and replies in topics still deciding."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from telegram import Bot

from bot.config import ConfigError, load_settings
from bot.service import Service
from bot.topics import Topics
from storage.records import Approval, RunUpsert
from tests.fake_telegram import FakeTelegram
from tests.test_decisions_telegram import prompt
from tests.test_telegram import ALICE, BOB, answer_of, edited_to, posted, settings_for, submit

FORUM = -1001000000001  # a supergroup; each test turns its topics on (or not)


async def started(fake: FakeTelegram, db_url: str, **overrides) -> Service:
    values = {"approver_chat_ids": [FORUM], "topic_per": "agent", **overrides}
    svc = Service(settings_for(fake, db_url, **values), with_socket=False)
    await svc.start()
    await fake.wait_polling()
    return svc


def topic_calls(fake: FakeTelegram, chat_id: int = FORUM) -> list:
    return [c for c in fake.calls_of("createForumTopic") if int(c.params["chat_id"]) == chat_id]


async def test_a_topic_per_agent_made_once_and_remembered_across_a_restart(fake, db_url):
    fake.enable_topics(FORUM)
    svc = await started(fake, db_url)
    try:
        first = await posted(fake, FORUM, (await submit(svc, agent="claude-code")).id)
        other = await posted(fake, FORUM, (await submit(svc, agent="codex")).id)
        again = await posted(fake, FORUM, (await submit(svc, agent="claude-code")).id)
    finally:
        await svc.stop()
    names = {t.message_thread_id: t.name for t in fake.topics(FORUM)}
    assert names == {first.message_thread_id: "🤖 claude-code",
                     other.message_thread_id: "🤖 codex"}
    assert again.message_thread_id == first.message_thread_id
    assert len(topic_calls(fake)) == 2
    svc = await started(fake, db_url)
    try:
        later = await posted(fake, FORUM, (await submit(svc, agent="codex")).id)
        assert later.message_thread_id == other.message_thread_id
        assert len(topic_calls(fake)) == 2  # remembered in the database: no new topic
        remembered = await svc.store.run(svc.store.get_topic, FORUM, "agent:codex")
        assert (remembered.thread_id, remembered.name) == (other.message_thread_id, "🤖 codex")
    finally:
        await svc.stop()


async def test_private_chats_get_topics_when_the_bots_topic_mode_is_on(fake, db_url):
    fake.enable_topics(ALICE.id)  # before the start: getMe reports the topic mode
    svc = await started(fake, db_url, approver_chat_ids=[ALICE.id, BOB.id])
    try:
        approval = await submit(svc, agent="gemini")
        mine = await posted(fake, ALICE.id, approval.id)
        bobs = await posted(fake, BOB.id, approval.id)
    finally:
        await svc.stop()
    assert [(t.message_thread_id, t.name) for t in fake.topics(ALICE.id)] == [
        (mine.message_thread_id, "🤖 gemini")]
    # Bob's chat has no topics: Telegram refuses, the request goes to his main thread.
    assert bobs.message_thread_id is None
    assert topic_calls(fake, BOB.id)[0].description == "Bad Request: the chat is not a forum"


async def test_a_topic_per_run_and_the_agents_topic_without_a_run(fake, db_url):
    fake.enable_topics(FORUM)
    svc = await started(fake, db_url, topic_per="run")
    try:
        await svc.store.run(svc.store.upsert_run, RunUpsert(id="r-1", name="nightly build"))
        await svc.store.run(svc.store.upsert_run, RunUpsert(id="r-2"))  # no name
        one = await posted(fake, FORUM, (await submit(svc, run_id="r-1")).id)
        two = await posted(fake, FORUM, (await submit(svc, run_id="r-1", summary="ls")).id)
        loose = await posted(fake, FORUM, (await submit(svc, agent="builder")).id)
        named = await posted(fake, FORUM, (await submit(svc, run_id="r-2")).id)
    finally:
        await svc.stop()
    assert one.message_thread_id == two.message_thread_id != loose.message_thread_id
    names = {t.message_thread_id: t.name for t in fake.topics(FORUM)}
    assert names == {one.message_thread_id: "▶ nightly build",
                     loose.message_thread_id: "🤖 builder",
                     named.message_thread_id: "▶ r-2"}


async def test_no_topics_unless_asked_for(fake, db_url):
    fake.enable_topics(FORUM)
    svc = await started(fake, db_url, topic_per="none")
    try:
        msg = await posted(fake, FORUM, (await submit(svc)).id)
    finally:
        await svc.stop()
    assert msg.message_thread_id is None
    assert fake.calls_of("createForumTopic") == []


async def test_a_chat_without_topics_gets_plain_messages_and_is_asked_again_later(fake, db_url):
    # FORUM has no topics here; ALICE's private chat neither (getMe: no topic mode).
    svc = await started(fake, db_url, approver_chat_ids=[FORUM, ALICE.id])
    try:
        for _ in range(3):
            approval = await submit(svc)
            for chat in (FORUM, ALICE.id):
                assert (await posted(fake, chat, approval.id)).message_thread_id is None
        [refused] = topic_calls(fake)
        assert refused.description == "Bad Request: the chat is not a forum"
        assert topic_calls(fake, ALICE.id) == []  # the bot's topic mode is off: never asked
        # Topics turned on meanwhile: asked again once the chat's pause is over.
        fake.enable_topics(FORUM)
        svc.notifier.topics.recheck_after = 0
        later = await posted(fake, FORUM, (await submit(svc)).id)
        assert later.message_thread_id == fake.topics(FORUM)[0].message_thread_id
        assert len(topic_calls(fake)) == 2
    finally:
        await svc.stop()


async def test_a_deleted_topic_is_made_again_and_the_request_still_posted(fake, db_url):
    fake.enable_topics(FORUM)
    svc = await started(fake, db_url)
    try:
        old = await submit(svc)
        gone = await posted(fake, FORUM, old.id)
        done = await submit(svc, summary="decided before the topic went")
        await posted(fake, FORUM, done.id)
        await svc.manager.resolve(done.id, "denied", "api")
        elsewhere = await submit(svc, agent="codex")  # another agent's topic: untouched
        kept = await posted(fake, FORUM, elsewhere.id)
        fake.delete_topic(FORUM, gone.message_thread_id)
        new = await submit(svc)
        msg = await posted(fake, FORUM, new.id)
        await fake.wait_for_error("sendMessage", lambda c: c.params.get("message_thread_id")
                                  == gone.message_thread_id)
        [topic] = [t for t in fake.topics(FORUM) if t.name == "🤖 builder"]
        assert msg.message_thread_id == topic.message_thread_id != gone.message_thread_id
        stored = await svc.store.run(svc.store.get_topic, FORUM, "agent:builder")
        assert stored.thread_id == topic.message_thread_id
        # The request still pending in the deleted topic is posted again, in the new one.
        again = await fake.wait_until(lambda: next(
            (m for m in fake.messages(FORUM) if old.id in (m.text or "")), None),
            what="the pending request posted again")
        assert again.message_thread_id == topic.message_thread_id
        tap = fake.tap(FORUM, again.message_id, ALICE, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        assert (await svc.manager.wait(old.id, 10)).status == "approved"
        assert not [m for m in fake.messages(FORUM) if done.id in (m.text or "")]
        assert [m.message_id for m in fake.messages(FORUM)
                if elsewhere.id in (m.text or "")] == [kept.message_id]
    finally:
        await svc.stop()


async def test_taps_and_replies_in_a_topic_decide(fake, db_url):
    fake.enable_topics(FORUM)
    svc = await started(fake, db_url)
    try:
        first = await submit(svc)
        msg = await posted(fake, FORUM, first.id)
        assert msg.message_thread_id is not None
        tap = fake.tap(FORUM, msg.message_id, BOB, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        await edited_to(fake, FORUM, msg.message_id, "Approved by @bob")
        second = await submit(svc)
        msg2 = await posted(fake, FORUM, second.id)
        fake.tap(FORUM, msg2.message_id, ALICE, button_text="💬 Deny with reason")
        ask = await prompt(fake, svc, FORUM, "Deny with a reason")
        assert ask.message_thread_id == msg.message_thread_id  # the prompt stays in the topic
        fake.send_text(FORUM, ALICE, "not today", chat_type="supergroup",
                       reply_to=ask.message_id)
        decided = await svc.manager.wait(second.id, 10)
        assert (decided.status, decided.reason) == ("denied", "not today")
        await edited_to(fake, FORUM, msg2.message_id, "Denied by @alice: not today")
        third = await posted(fake, FORUM, (await submit(svc, summary="make test")).id)
        fake.tap(FORUM, third.message_id, ALICE, button_text="♾️ Always")
        offer = await fake.wait_for("sendMessage", lambda c: "Widen" in str(c.params["text"]))
        widen = fake.message(FORUM, offer.response["result"]["message_id"])
        assert widen.message_thread_id == msg.message_thread_id  # offered in the topic too
    finally:
        await svc.stop()


async def test_concurrent_requests_for_one_topic_make_one(fake, store):
    fake.enable_topics(FORUM)
    now = store.clock()
    approval = Approval(id="a1", agent="claude-code", kind="shell", summary="ls",
                        status="pending", created_at=now, expires_at=now + timedelta(hours=1))
    async with Bot(fake.token, base_url=f"{fake.url}/bot") as bot:
        topics = Topics(bot, store, "agent")
        threads = await asyncio.gather(*(topics.thread_for(FORUM, approval) for _ in range(8)))
        assert len(set(threads)) == 1 and threads[0] is not None
        assert len(fake.calls_of("createForumTopic")) == 1
        await topics.forget(FORUM, threads[0])
        assert await store.run(store.get_topic, FORUM, "agent:claude-code") is None
        fake.delete_topic(FORUM, threads[0])
        again = await topics.thread_for(FORUM, approval)
        assert again not in (None, threads[0])
        long = approval.model_copy(update={"agent": "x" * 300})
        thread = await topics.thread_for(FORUM, long)
        assert [t.name for t in fake.topics(FORUM) if t.message_thread_id == thread] == [
            "🤖 " + "x" * 124 + "…"]
        assert await Topics(bot, store, "none").thread_for(FORUM, approval) is None


def test_a_bad_topic_setting_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAPGATE_TOPIC_PER", "team")
    with pytest.raises(ConfigError) as exc_info:
        load_settings()
    assert str(exc_info.value) == "TAPGATE_TOPIC_PER: must be agent, run or none, got 'team'"
    monkeypatch.setenv("TAPGATE_TOPIC_PER", " Run ")
    assert load_settings().topic_per == "run"
    monkeypatch.delenv("TAPGATE_TOPIC_PER")
    assert load_settings().topic_per == "none"
