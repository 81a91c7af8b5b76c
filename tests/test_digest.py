"""Burst digests through the real bot and the fake Telegram (group pacing on: 20
messages a minute per group), on SQLite and PostgreSQL: a burst to a group becomes
digest messages, Approve all / Deny all decide exactly the listed requests (racing
single taps and the API honestly), pages, edits as requests are decided elsewhere,
strangers and forged data; plus the store's compare-and-sets and crash safety."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from bot.config import ConfigError, load_settings
from bot.telegram import render
from bot.telegram.digest import DIGEST_CAPACITY, PAGE_SIZE, digest_keyboard, digest_text
from bot.telegram.digest_taps import NOT_THIS_MESSAGE, UNKNOWN_DIGEST
from bot.telegram.fit import visible_length
from storage.records import NewApproval
from tests.fake_telegram import FakeTelegram, User
from tests.test_telegram import ALICE, BOB, EVE, answer_of, running, settings_for, submit

GROUP = -1001234500000
CAROL = User(1003, "carol", "Carol")
HEAD = "requests at once"


@pytest.fixture
async def paced():
    """The fake Telegram holding every group to 20 messages a minute."""
    async with FakeTelegram(group_limit_per_minute=20, callback_query_ttl=60) as server:
        yield server


def bot_for(fake, db_url, **overrides):
    values = {"approver_chat_ids": [GROUP], "approver_user_ids": [ALICE.id, BOB.id, CAROL.id],
              **overrides}
    return running(fake, settings_for(fake, db_url, **values), with_socket=False)


@pytest.fixture
async def group_bot(paced, db_url):
    async with bot_for(paced, db_url) as svc:
        yield svc


async def burst(svc, n: int, **kwargs) -> list:
    """``n`` requests owed at once: submitted while the notifier is paused (as while it
    waits on a paced group), then it pays them in one round."""
    await svc.notifier.stop()
    try:
        return [await submit(svc, summary=f"job {i} <&>", **kwargs) for i in range(n)]
    finally:
        await svc.notifier.start()


def digests(fake, chat=GROUP) -> list:
    return [m for m in fake.messages(chat) if HEAD in (m.text or "")]


async def posted_digests(fake, count: int, chat=GROUP) -> list:
    return await fake.wait_until(lambda: (d := digests(fake, chat)) and len(d) >= count and d,
                                 what=f"{count} digest(s) posted")


def data_of(msg, text: str) -> str:
    [button] = [b for b in msg.buttons if b["text"] == text]
    return button["callback_data"]


async def settled(svc) -> None:
    await wait(lambda: svc.notifier.idle, "the notifier is idle")


async def wait(condition, what: str, timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := condition()):
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)
    return result


async def statuses(svc, approvals) -> list[str]:
    return [(await svc.manager.get(a.id)).status for a in approvals]


def count_in(text: str, word: str) -> int:
    match = re.search(rf"{word} (\d+)", text)
    return int(match.group(1)) if match else 0


# --- posting -----------------------------------------------------------------------------


async def test_a_burst_to_a_group_is_one_digest(paced, group_bot):
    approvals = await burst(group_bot, 12)
    [digest] = await posted_digests(paced, 1)
    await settled(group_bot)
    assert fake_sends(paced) == 1  # no message per request
    assert all(a.id in digest.text for a in approvals)
    assert "12 requests at once" in digest.text and "⏳ 12 pending" in digest.text
    assert "job 3 <&>" in digest.text  # shown exactly, escaped on the way
    assert digest.button_texts[:2] == ["✅ 1", "❌ 1"]
    assert digest.button_texts[-2:] == ["✅ Approve all 12", "❌ Deny all 12"]
    assert len(digest.buttons) == 2 * 12 + 2 and "◀" not in digest.button_texts
    assert data_of(digest, "✅ 1") == f"appr:{approvals[0].id}:approve"
    refs = await group_bot.store.run(group_bot.store.approval_messages, approvals[5].id)
    assert [(r.message_id, r.shown) for r in refs] == [(digest.message_id, "pending")]


async def test_with_topics_per_agent_a_burst_is_a_digest_per_agents_topic(paced, db_url):
    paced.enable_topics(GROUP)
    async with bot_for(paced, db_url, topic_per="agent") as svc:
        await svc.notifier.stop()
        try:  # 7 of one agent, 7 of another, 2 of a third: owed at once
            crawler = [await submit(svc, agent="crawler", summary=f"c{i}") for i in range(7)]
            builder = [await submit(svc, agent="builder", summary=f"b{i}") for i in range(7)]
            few = [await submit(svc, agent="mailer", summary=f"m{i}") for i in range(2)]
        finally:
            await svc.notifier.start()
        found = await posted_digests(paced, 2)
        await settled(svc)
    topics = {t.name: t.message_thread_id for t in paced.topics(GROUP)}
    by_thread = {d.message_thread_id: d for d in found}
    assert set(by_thread) == {topics["🤖 crawler"], topics["🤖 builder"]}
    assert all(a.id in by_thread[topics["🤖 crawler"]].text for a in crawler)
    assert not any(a.id in by_thread[topics["🤖 crawler"]].text for a in builder)
    assert all(a.id in by_thread[topics["🤖 builder"]].text for a in builder)
    # The third agent's two are under the threshold in their topic: one message each.
    singles = [m for m in paced.messages(GROUP) if any(a.id in (m.text or "") for a in few)]
    assert len(singles) == 2 and {m.message_thread_id for m in singles} == {topics["🤖 mailer"]}


def fake_sends(fake, chat=GROUP) -> int:
    return len([c for c in fake.calls_of("sendMessage") if c.ok
                and int(c.params["chat_id"]) == chat])


async def test_250_make_three_digests_that_fit_telegram(paced, group_bot):
    approvals = await burst(group_bot, 250, agent="a" * 200, kind="k" * 200)
    found = await posted_digests(paced, 3)
    await settled(group_bot)
    assert len(found) == 3 and fake_sends(paced) == 3
    listed = [sum(a.id in d.raw_text for a in approvals) for d in found]
    assert listed == [PAGE_SIZE] * 3  # a page of 20 lines each
    sizes = [int(d.text.split(" requests at once")[0].split()[-1]) for d in found]
    assert sorted(sizes) == [50, 100, 100]  # the newest burst first, like every new post
    for digest, size in zip(found, sizes, strict=True):
        assert f"and {size - PAGE_SIZE} more" in digest.text
        assert len(digest.text.encode("utf-16-le")) // 2 <= 4096
        assert len(digest.buttons) <= 100 and digest.button_texts[-1] == "▶"
        assert all(len(b["callback_data"].encode()) <= 64 for b in digest.buttons)
    owed = await group_bot.store.run(group_bot.store.messages_owed)
    assert owed == []


async def test_up_to_the_threshold_each_request_is_its_own_message(paced, group_bot):
    approvals = await burst(group_bot, 5)
    for a in approvals:
        await paced.wait_for("sendMessage", lambda c, a=a: a.id in c.params["text"])
    await settled(group_bot)
    assert digests(paced) == [] and fake_sends(paced) == 5
    assert all("✅ Approve" in m.button_texts for m in paced.messages(GROUP))


async def test_threshold_zero_turns_digests_off(paced, db_url):
    async with bot_for(paced, db_url, digest_threshold=0) as svc:
        await burst(svc, 8)
        await paced.wait_until(lambda: fake_sends(paced) == 8, what="8 messages")
        assert digests(paced) == []


def test_a_bad_threshold_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("TAPGATE_DIGEST_THRESHOLD", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("TAPGATE_DIGEST_THRESHOLD: ")
    assert "\n" not in str(info.value)


async def test_a_digest_opened_but_never_posted_is_posted_on_the_next_round(paced, group_bot):
    svc = group_bot
    await svc.notifier.stop()
    approvals = [await submit(svc, summary=f"before the crash {i}") for i in range(3)]
    refs = await svc.store.run(svc.store.new_posts, GROUP)
    opened = await svc.store.run(svc.store.open_digest, GROUP, refs)  # then the crash
    assert opened is not None
    await svc.notifier.start()  # the next leader's first round
    [digest] = await posted_digests(paced, 1)
    await settled(svc)
    assert "3 requests at once" in digest.text and all(a.id in digest.text for a in approvals)
    assert fake_sends(paced) == 1
    assert await svc.store.run(svc.store.messages_owed) == []


# --- approve all -------------------------------------------------------------------------


async def test_approve_all_decides_exactly_the_listed_ones(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 12)
    [digest] = await posted_digests(paced, 1)
    await settled(svc)
    late = await submit(svc, summary="arrived after the digest")
    await paced.wait_for("sendMessage", lambda c: late.id in c.params["text"])
    await settled(svc)
    # Decided elsewhere while the message still shows them pending.
    await svc.notifier.stop()
    for a in approvals[:3]:
        await svc.manager.resolve(a.id, "denied", "api")
    query = paced.tap(GROUP, digest.message_id, ALICE, button_text="✅ Approve all 12")
    assert await answer_of(paced, query) == "✅ Approved 9, 3 were already decided."
    await svc.notifier.start()
    assert await statuses(svc, approvals) == ["denied"] * 3 + ["approved"] * 9
    assert (await svc.manager.get(late.id)).status == "pending"
    final = await paced.wait_until(
        lambda: (m := paced.message(GROUP, digest.message_id)) and not m.buttons and m,
        what="the digest shows every outcome")
    assert "all decided" in final.text and "✅ 9 approved · ❌ 3 denied" in final.text
    assert all(a.id in final.text for a in approvals)
    stale = f"dg:{await digest_id(svc, approvals)}:deny"
    again = paced.tap(GROUP, digest.message_id, BOB, data=stale)
    assert "Nothing left to decide" in await answer_of(paced, again)


async def digest_id(svc, approvals) -> int:
    [ref] = await svc.store.run(svc.store.approval_messages, approvals[0].id)
    return ref.digest_id


async def test_deny_all_and_a_line_tap(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 7)
    [digest] = await posted_digests(paced, 1)
    one = paced.tap(GROUP, digest.message_id, BOB, button_text="❌ 3")
    assert await answer_of(paced, one) == "❌ Denied"
    assert await statuses(svc, approvals) == ["pending"] * 2 + ["denied"] + ["pending"] * 4
    edited = await paced.wait_until(
        lambda: (m := paced.message(GROUP, digest.message_id)) and "❌ 3" not in m.button_texts
        and m, what="line 3 loses its buttons")
    assert "✅ Approve all 6" in edited.button_texts
    query = paced.tap(GROUP, digest.message_id, ALICE, button_text="❌ Deny all 6")
    assert await answer_of(paced, query) == "❌ Denied 6."
    assert await statuses(svc, approvals) == ["denied"] * 7


@pytest.mark.parametrize("attempt", range(3))
async def test_approve_all_racing_a_tap_and_the_api_one_outcome_each(paced, db_url, attempt):
    async with bot_for(paced, db_url, approver_chat_ids=[GROUP, ALICE.id]) as svc:
        approvals = await burst(svc, 10)
        [in_group] = await posted_digests(paced, 1)
        [in_private] = await posted_digests(paced, 1, chat=ALICE.id)
        await settled(svc)
        target = approvals[attempt]
        everything = paced.tap(GROUP, in_group.message_id, BOB, button_text="✅ Approve all 10")
        line = paced.tap(ALICE.id, in_private.message_id, ALICE,
                         button_text=f"❌ {attempt + 1}")
        other = approvals[9 - attempt]
        by_api = asyncio.create_task(resolve_quietly(svc, other.id))
        popup = await answer_of(paced, everything)
        single = await answer_of(paced, line)
        api_won = await by_api
        final = {a.id: await svc.manager.get(a.id) for a in approvals}
        assert all(a.status in ("approved", "denied") for a in final.values())
        approved_by_bob = sum(a.decided_by == "telegram:1002 (@bob)" for a in final.values())
        assert count_in(popup, "Approved") == approved_by_bob
        lost = (single == "❌ Denied") + api_won
        # Every request decided once; the popup counts its own decisions, and as
        # "already decided" those the others won.
        assert count_in(popup, "Approved") + lost == 10, (popup, single, api_won)
        assert _already(popup) == lost, (popup, single, api_won)
        assert (final[target.id].status == "denied") == (single == "❌ Denied")


def _already(popup: str) -> int:
    match = re.search(r"(\d+) (?:was|were) already decided", popup)
    return int(match.group(1)) if match else 0


async def resolve_quietly(svc, approval_id: str) -> bool:
    from storage.errors import AlreadyFinal

    try:
        await svc.manager.resolve(approval_id, "denied", "api")
    except AlreadyFinal:
        return False
    return True


async def test_a_quorum_request_in_a_digest_gets_a_vote(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 6, required_approvals=2)
    [digest] = await posted_digests(paced, 1)
    first = paced.tap(GROUP, digest.message_id, ALICE, button_text="✅ Approve all 6")
    assert await answer_of(paced, first) == "✅ Voted on 6 (more approvers needed)."
    assert await statuses(svc, approvals) == ["pending"] * 6
    shown = await paced.wait_until(lambda: (m := paced.message(GROUP, digest.message_id))
                                   and "🗳1/2" in m.text and m, what="votes shown")
    again = paced.tap(GROUP, digest.message_id, ALICE, button_text="✅ Approve all 6")
    assert "6 not counted" in await answer_of(paced, again)
    second = paced.tap(GROUP, shown.message_id, BOB, button_text="✅ Approve all 6")
    assert await answer_of(paced, second) == "✅ Approved 6."
    assert await statuses(svc, approvals) == ["approved"] * 6


# --- pages and edits ---------------------------------------------------------------------


async def test_paging_shows_page_two_and_its_buttons(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 30)
    [digest] = await posted_digests(paced, 1)
    assert approvals[25].id not in digest.text and "and 10 more" in digest.text
    query = paced.tap(GROUP, digest.message_id, ALICE, button_text="▶")
    assert await answer_of(paced, query) == "Page 2 of 2"
    page2 = await paced.wait_until(lambda: (m := paced.message(GROUP, digest.message_id))
                                   and "◀" in m.button_texts and m, what="page 2")
    assert approvals[25].id in page2.text and approvals[0].id not in page2.text
    assert "Page 2 of 2" in page2.text and "and 20 more" in page2.text
    assert page2.button_texts[:2] == ["✅ 21", "❌ 21"] and "▶" not in page2.button_texts
    tap = paced.tap(GROUP, digest.message_id, BOB, button_text="✅ 26")
    assert await answer_of(paced, tap) == "✅ Approved"
    assert (await svc.manager.get(approvals[25].id)).status == "approved"
    for data in (f"dg:{await digest_id(svc, approvals)}:page:2", "dg:1:page:x"):
        bad = paced.tap(GROUP, digest.message_id, ALICE, data=data)
        assert await answer_of(paced, bad) == render.INVALID_BUTTON


async def test_the_digest_follows_decisions_made_elsewhere_to_the_end(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 8)
    [digest] = await posted_digests(paced, 1)
    await svc.manager.resolve(approvals[0].id, "approved", "telegram:1002 (@bob)")
    await paced.wait_until(lambda: "✅ 1 approved" in paced.message(GROUP, digest.message_id).text,
                           what="an API decision shown")
    await svc.manager.cancel(approvals[1].id, "agent")
    await svc.manager.expire_due(svc.store.clock() + timedelta(days=2))
    final = await paced.wait_until(
        lambda: (m := paced.message(GROUP, digest.message_id)) and not m.buttons and m,
        what="every outcome shown")
    assert "✅ 1 approved · ⌛ 6 expired · ↩️ 1 withdrawn" in final.text
    lines = [ln for ln in final.text.splitlines() if ln[:2].rstrip(".").isdigit()]
    assert len(lines) == 8 and lines[0].startswith("1. ✅") and "@bob" in lines[0]
    assert lines[1].startswith("2. ↩️") and all("⌛" in ln for ln in lines[2:])


async def test_a_reply_to_a_digest_decides_nothing(paced, group_bot):
    svc = group_bot
    approvals = await burst(svc, 6)
    [digest] = await posted_digests(paced, 1)
    await settled(svc)  # recorded: the database knows the message
    paced.send_text(GROUP, ALICE, "approve all", chat_type="supergroup",
                    reply_to=digest.message_id)
    await paced.wait_for("sendMessage", lambda c: "A reply decides nothing" in c.params["text"]
                         and int(c.params["chat_id"]) == GROUP)
    assert await statuses(svc, approvals) == ["pending"] * 6


# --- who may tap, and forged data --------------------------------------------------------


async def test_a_strangers_approve_all_changes_nothing(paced, group_bot):
    approvals = await burst(group_bot, 6)
    [digest] = await posted_digests(paced, 1)
    query = paced.tap(GROUP, digest.message_id, EVE, button_text="✅ Approve all 6")
    assert await answer_of(paced, query) == render.REFUSE_TAP_STRANGER
    assert await statuses(group_bot, approvals) == ["pending"] * 6


async def test_stale_and_forged_digest_data_get_a_clear_popup(paced, db_url):
    async with bot_for(paced, db_url, approver_chat_ids=[GROUP, ALICE.id]) as svc:
        approvals = await burst(svc, 6)
        [in_group] = await posted_digests(paced, 1)
        [in_private] = await posted_digests(paced, 1, chat=ALICE.id)
        private_id = int(data_of(in_private, "✅ Approve all 6").split(":")[1])
        cases = [("dg:999999:approve", UNKNOWN_DIGEST), ("dg:1:nope", render.INVALID_BUTTON),
                 (f"dg:{private_id}:approve", NOT_THIS_MESSAGE)]
        for data, popup in cases:
            query = paced.tap(GROUP, in_group.message_id, ALICE, data=data)
            assert await answer_of(paced, query) == popup, data
        assert await statuses(svc, approvals) == ["pending"] * 6


# --- the store ---------------------------------------------------------------------------


def _new(**fields) -> NewApproval:
    values = {"agent": "builder", "kind": "shell", "summary": "make", "ttl_seconds": 60,
              "chat_ids": [GROUP]}
    return NewApproval(**{**values, **fields})


def test_a_digest_claims_unposted_copies_once_and_records_like_a_copy(store):
    made = [store.create_approval(_new())[0] for _ in range(4)]
    refs = store.new_posts(GROUP)
    assert len(refs) == 4
    digest, claimed = store.open_digest(GROUP, refs[:3])
    assert claimed == refs[:3] and store.new_posts(GROUP) == refs[3:]
    assert store.open_digest(GROUP, refs[:3]) is None  # claimed already: no empty digest
    # Opened but never recorded as posted: still owed, so the next round posts it.
    owed = {r.id: r.digest_id for r, _ in store.messages_owed(GROUP)}
    assert owed == {**dict.fromkeys(refs[:3], digest.id), refs[3]: None}
    items = store.digest_items(digest.id)
    shown = {i.ref_id: i.approval.shown_as for i in items}
    store.resolve_approval(made[1].id, "denied", "api")  # lands between render and record
    assert store.record_digest(digest.id, shown, 0, message_id=555) is False
    assert store.get_digest(digest.id).message_id == 555
    owed = [r for r, _ in store.messages_owed(GROUP) if r.digest_id]
    assert [(r.id, r.message_id) for r in owed] == [(refs[1], 555)]
    assert store.find_message(GROUP, 555).digest_id == digest.id
    # A page turned between render and record keeps every copy owed.
    items = store.digest_items(digest.id)
    shown = {i.ref_id: i.approval.shown_as for i in items}
    store.set_digest_page(digest.id, 1)
    assert store.record_digest(digest.id, shown, 0) is False
    assert len([r for r, _ in store.messages_owed(GROUP) if r.digest_id]) == 3
    assert store.record_digest(digest.id, shown, 1) is True
    assert [r.id for r, _ in store.messages_owed(GROUP)] == [refs[3]]
    assert store.owe_digest(digest.id, made[0].id) == 0  # shows what it is: nothing owed
    assert store.unposted_outcomes(GROUP) == []


def test_rendering_fits_for_a_full_digest_of_long_fields(store):
    for _ in range(DIGEST_CAPACITY):
        store.create_approval(_new(agent="ä" * 200, kind="𝕂" * 100, summary="<&>" * 300))
    digest, _ = store.open_digest(GROUP, store.new_posts(GROUP))
    items = store.digest_items(digest.id)
    for page in range(5):
        assert visible_length(digest_text(items, page)) <= 4096
        markup = digest_keyboard(digest.id, items, page)
        assert sum(len(r) for r in markup.inline_keyboard) <= 100
    for item in items:
        store.resolve_approval(item.approval.id, "denied", "telegram:1 (@" + "x" * 90 + ")")
    items = store.digest_items(digest.id)
    text = digest_text(items, 0)
    assert visible_length(text) <= 4096 and all(i.approval.id in text for i in items)
    assert digest_keyboard(digest.id, items, 0) is None
