"""Strangers, other chats and slow chats never delay or reach a decision.

The timing tests run the real ``tapgate run`` process (tests/botproc.py): how
updates are scheduled is wiring, and only the real process shows it. The
access tests use the in-process service (same Application, same handlers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx

from tests.botproc import BotProcess
from tests.fake_telegram import FakeTelegram, User
from tests.test_telegram import ALICE, BOB, CHAT_A, CHAT_B, EVE, answer_of, posted, submit

MALLORY = User(7777, "mallory", "Mallory")
OTHER_GROUP = -100555  # a group the bot was added to, not an approver chat
FLOOD = ["/pending", "/spend", "/start", "hello there", "/spend day", "/approve x", "/help"]


@contextlib.asynccontextmanager
async def socket_api(bot: BotProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the bot's socket (what an agent uses)."""
    transport = httpx.AsyncHTTPTransport(uds=str(bot.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://tapgate",
                                 timeout=60) as client:
        yield client


async def ask(api: httpx.AsyncClient, summary: str) -> str:
    response = await api.post("/v1/approvals", json={"agent": "builder", "kind": "shell",
                                                    "summary": summary})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def sent_to(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [c.params["text"] for c in fake.calls_of("sendMessage")
            if c.ok and int(c.params["chat_id"]) == chat_id]


async def timed_tap(fake: FakeTelegram, api: httpx.AsyncClient, approval_id: str,
                    message_id: int) -> tuple[float, float]:
    """Tap Approve in CHAT_A; (seconds until the agent's wait returned it decided,
    seconds until Telegram got the popup answer)."""
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(api.get(f"/v1/approvals/{approval_id}", params={"wait": 60}))
    tapped = loop.time()
    query = fake.tap(CHAT_A, message_id, ALICE, button_text="✅ Approve")
    decided = await asyncio.wait_for(waiting, 90)
    decided_after = loop.time() - tapped
    assert decided.json()["status"] == "approved"
    answer = await fake.wait_for("answerCallbackQuery",
                                 lambda c: c.params["callback_query_id"] == query, timeout=90)
    return decided_after, answer.at - tapped  # Call.at is time.monotonic, like loop.time()


async def a_year_of_spend(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/runs/r1", json={"name": "crawler"})
    assert response.status_code in (200, 201), response.text
    now = datetime.now(UTC)
    response = await api.post("/v1/ledger", json=[
        {"run_id": "r1", "provider": "openai", "model": "gpt-4o", "prompt_tokens": 1000,
         "dollars": 1.5, "created_at": (now - timedelta(days=d)).isoformat()}
        for d in range(365)])
    assert response.status_code == 201, response.text


async def test_stranger_flood_in_a_group_does_not_delay_a_private_tap(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url) as bot, socket_api(bot) as api:
        await a_year_of_spend(api)
        approval_id = await ask(api, "deploy during a flood")
        msg = await posted(fake, CHAT_A, approval_id)
        fake.send_text(CHAT_B, BOB, "/spend day")  # a chart drawn in Bob's chat meanwhile
        for i in range(50):
            fake.send_text(OTHER_GROUP, EVE, FLOOD[i % len(FLOOD)], chat_type="group")
        decided_after, answered_after = await timed_tap(fake, api, approval_id, msg.message_id)
        print(f"\ntap under a 50-message stranger flood: decided after {decided_after * 1000:.0f}"
              f" ms, answered after {answered_after * 1000:.0f} ms")
        assert decided_after < 1.0
        assert answered_after < 1.0
        # Another stranger's message after the flood: once it is refused, Eve's 50 were all
        # handled (a chat's messages run in order). Eve got one refusal, and it says nothing.
        fake.send_text(OTHER_GROUP, MALLORY, "/pending", chat_type="group")
        await fake.wait_until(lambda: any("7777" in t for t in sent_to(fake, OTHER_GROUP)),
                              timeout=30, what="Mallory's refusal")
        texts = sent_to(fake, OTHER_GROUP)
        assert len([t for t in texts if "6666" in t]) == 1
        assert len(texts) == 2
        for text in texts:
            assert "not an approver chat" in text
            assert approval_id not in text and "Spend" not in text and "Pending" not in text
        chart = await fake.wait_for("sendPhoto", timeout=30)
        assert int(chart.params["chat_id"]) == CHAT_B  # Bob's chart, none for the strangers


async def test_approver_command_paced_in_a_group_does_not_hold_a_private_tap(fake, sqlite_url):
    group = -100777
    async with BotProcess(fake, sqlite_url, approver_chat_ids=f"{CHAT_A},{group}") as bot, \
            socket_api(bot) as api:
        approval_id = await ask(api, "deploy while the group is paced")
        msg = await posted(fake, CHAT_A, approval_id)
        await posted(fake, group, approval_id)
        # 30 replies to one group: 20 go at once, then one per 3 s (Telegram's group limit,
        # kept by AIORateLimiter), so the group's handler waits on the pacer for ~30 s.
        for _ in range(30):
            fake.send_text(group, ALICE, "/help", chat_type="group")
        await fake.wait_until(lambda: len(sent_to(fake, group)) >= 21, timeout=30,
                              what="the group's burst")
        decided_after, answered_after = await timed_tap(fake, api, approval_id, msg.message_id)
        print(f"\ntap while an approver's replies are paced in a group: decided after "
              f"{decided_after * 1000:.0f} ms, answered after {answered_after * 1000:.0f} ms")
        assert decided_after < 1.0
        assert answered_after < 1.0
        helps = [t for t in sent_to(fake, group) if "asks you before an AI agent acts" in t]
        assert len(helps) < 30  # the group's replies were still being paced
        sends = [c.at for c in fake.calls_of("sendMessage") if int(c.params["chat_id"]) == group]
        assert sends[-1] - sends[0] >= 2.5  # paced, not a burst
        # Shutdown does not wait for the paced replies still owed.
        started = asyncio.get_running_loop().time()
        assert await bot.stop() == 0
        assert asyncio.get_running_loop().time() - started < 15


# --- who may do what where (in-process: same Application and handlers) ----------------------


async def test_an_approver_in_another_chat_gets_nothing(fake, service):
    approval = await submit(service, summary="secret plans")
    await posted(fake, CHAT_A, approval.id)
    for command in ("/pending", "/spend", f"/approve {approval.id}", f"/deny {approval.id} no",
                    "/spend day", "/help"):
        fake.send_text(OTHER_GROUP, ALICE, command, chat_type="group")
    # Bob's command after Alice's: once Bob is refused, Alice's were all handled.
    fake.send_text(OTHER_GROUP, BOB, "/pending", chat_type="group")
    await fake.wait_until(lambda: any("1002" in t for t in sent_to(fake, OTHER_GROUP)),
                          what="Bob's refusal")
    texts = sent_to(fake, OTHER_GROUP)
    assert len(texts) == 2  # one refusal each, however many commands
    for text in texts:
        assert "not an approver chat" in text
        assert approval.id not in text and "secret" not in text and "Spend" not in text
    assert (await service.manager.get(approval.id)).status == "pending"
    assert not fake.calls_of("sendPhoto")


async def test_a_tap_from_another_chat_is_refused_and_decides_nothing(fake, service):
    approval = await submit(service)
    await posted(fake, CHAT_A, approval.id)
    query = fake.tap(OTHER_GROUP, 42, ALICE, data=f"appr:{approval.id}:approve")
    assert "approver chat" in await answer_of(fake, query)
    query = fake.tap(EVE.id, 43, ALICE, data=f"appr:{approval.id}:deny")  # Eve's private chat
    assert "approver chat" in await answer_of(fake, query)
    assert (await service.manager.get(approval.id)).status == "pending"


async def test_private_chat_of_an_approver_counts_as_an_approver_chat(fake, db_url):
    from bot.service import Service
    from tests.test_telegram import settings_for

    group = -100888
    svc = Service(settings_for(fake, db_url, approver_chat_ids=[group]), with_socket=False)
    await svc.start()
    try:
        await submit(svc, summary="listed privately")
        fake.send_text(ALICE.id, ALICE, "/pending")
        call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == ALICE.id)
        assert "Pending requests" in call.params["text"]
        fake.send_text(EVE.id, EVE, "/pending")
        call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == EVE.id)
        assert "not an approver chat" in call.params["text"] and "6666" in call.params["text"]
    finally:
        await svc.stop()


# --- the refusal limiter ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_refusals_once_per_user_per_interval_capped_and_bounded():
    from bot.telegram.gate import Refusals

    clock = Clock()
    release = asyncio.Event()
    sent: list[int] = []

    def sender(uid: int):
        async def send() -> None:
            await release.wait()  # held, like a reply waiting on a group's pacer
            sent.append(uid)
        return send

    refusals = Refusals(interval=60, max_in_flight=3, max_users=5, clock=clock)
    assert refusals.offer(1, sender(1))
    assert not refusals.offer(1, sender(1))  # same user within the interval
    assert refusals.offer(2, sender(2)) and refusals.offer(3, sender(3))
    assert not refusals.offer(4, sender(4))  # three in flight: dropped, not queued
    release.set()
    while len(sent) < 3:
        await asyncio.sleep(0)
    assert sorted(sent) == [1, 2, 3]
    for uid in range(10, 30):  # many users: memory stays bounded
        clock.now += 0.01
        refusals.offer(uid, sender(uid))
        await asyncio.sleep(0)
        assert len(refusals._last) <= 6
    clock.now += 61
    assert refusals.offer(1, sender(1))  # the interval has passed
    await refusals.close()
    assert not refusals.offer(99, sender(99))
