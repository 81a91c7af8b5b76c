"""Webhook mode: updates POSTed by (the fake) Telegram instead of long polling.

In-process tests run the whole Service against the fake, which delivers to the
instance's listener (``webhook_target``: tests have no TLS); the real-process
tests run ``tapgate run`` (tests/botproc.py), two of them on one PostgreSQL
database behind a round-robin "load balancer".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.service import Service
from bot.telegram.webhook import MAX_BODY, SECRET_HEADER
from tests.botproc import BotProcess
from tests.conftest import _empty_postgres
from tests.fake_telegram import FakeTelegram
from tests.test_strangers import ask, sent_to, socket_api
from tests.test_telegram import ALICE, CHAT_A, CHAT_B, answer_of, posted, settings_for, submit

SECRET = "s3cr3t-webhook-token_0123456789abcdef"
PUBLIC_URL = "https://bot.example.com/tapgate/hook"


def webhook_settings(fake: FakeTelegram, db_url: str, **overrides) -> Settings:
    values = {"telegram_webhook_url": PUBLIC_URL, "webhook_listen": "127.0.0.1:0",
              "webhook_secret": SECRET, **overrides}
    return settings_for(fake, db_url, **values)


@pytest.fixture
async def hooked(fake, db_url):
    """The whole bot (no socket) in webhook mode; the fake delivers to its listener."""
    svc = Service(webhook_settings(fake, db_url), with_socket=False)
    fake.webhook_target = lambda url: svc.webhook.url + urlsplit(url).path
    await svc.start()
    yield svc
    await svc.stop()


async def post(svc: Service, body: bytes | dict, secret: str | None = SECRET,
               path: str = "/tapgate/hook", **headers: str) -> httpx.Response:
    """POST ``body`` to the instance's listener, as Telegram (or a forger) would."""
    if secret is not None:
        headers[SECRET_HEADER] = secret
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=svc.webhook.url, timeout=10) as client:
        return await client.post(path, content=data,
                                 headers={"Content-Type": "application/json", **headers})


def forged_tap(update_id: int, query_id: str, data: str, message_id: int) -> dict:
    """A callback_query update for a button of message ``message_id`` in CHAT_A."""
    return {"update_id": update_id, "callback_query": {
        "id": query_id, "from": ALICE.to_dict(), "chat_instance": "42", "data": data,
        "message": {"message_id": message_id, "date": 1_700_000_000, "text": "request",
                    "chat": {"id": CHAT_A, "type": "private", "first_name": "Alice"},
                    "from": {"id": 123456, "is_bot": True, "first_name": "Tapgate"}}}}


async def test_a_tap_by_webhook_decides_and_wakes_the_agent(fake, hooked):
    await fake.wait_for("setWebhook")
    assert fake.webhook_url == PUBLIC_URL and fake.webhook_secret == SECRET
    assert fake.allowed_updates == ["message", "callback_query"]
    set_call = fake.calls_of("setWebhook")[0]
    assert not set_call.params.get("drop_pending_updates")
    approval = await submit(hooked)
    msg = await posted(fake, CHAT_A, approval.id)
    waiter = asyncio.create_task(hooked.manager.wait(approval.id, 30))
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
    decided = await asyncio.wait_for(waiter, 10)
    assert decided.status == "approved" and decided.decided_by == "telegram:1001 (@alice)"
    assert "Approved" in await answer_of(fake, query)
    delivery = fake.webhook_deliveries[-1]
    assert (delivery.status, delivery.answer) == (200, {"ok": True})
    assert delivery.url.endswith("/tapgate/hook")
    assert fake.calls_of("getUpdates") == []  # nobody polls in webhook mode
    # A command arrives the same way, and its reply goes out.
    before = len(sent_to(fake, CHAT_B))
    fake.send_text(CHAT_B, ALICE, "/pending")
    await fake.wait_until(lambda: len(sent_to(fake, CHAT_B)) > before, what="a reply")
    assert hooked.webhook.accepted == 2


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET[:-1] + "X", SECRET + "x",
                                    SECRET.upper(), "é" * 5])
async def test_a_request_without_the_secret_gets_403_and_changes_nothing(
        fake, hooked, secret):
    approval = await submit(hooked)
    msg = await posted(fake, CHAT_A, approval.id)
    data = msg.buttons[0]["callback_data"]
    update = forged_tap(990_000_001, "4242", data, msg.message_id)
    if secret == "é" * 5:  # a non-ASCII header value: still a plain 403
        async with httpx.AsyncClient(base_url=hooked.webhook.url) as client:
            response = await client.post("/tapgate/hook", content=json.dumps(update).encode(),
                                         headers=[(SECRET_HEADER.encode(), secret.encode())])
    else:
        response = await post(hooked, update, secret=secret)
    assert response.status_code == 403
    assert response.json() == {"ok": False, "error": "forbidden"}
    assert hooked.webhook.refused == 1
    await asyncio.sleep(0.3)
    assert (await hooked.manager.get(approval.id)).status == "pending"
    assert not [c for c in fake.calls_of("answerCallbackQuery")
                if c.params["callback_query_id"] == "4242"]
    # Nothing was claimed either: the same update with the secret counts.
    ok = await post(hooked, update)
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    decided = await hooked.manager.wait(approval.id, 10)
    assert decided.status == "approved"


async def test_a_redelivered_update_is_handled_once(fake, hooked):
    await fake.wait_for("setWebhook")
    # Telegram redelivers when our answer is lost (a timeout, a proxy that dropped it).
    fake.webhook_lost_answers = 1
    update_id = fake.send_text(CHAT_A, ALICE, "/pending")
    await fake.wait_until(lambda: sum(d.update_id == update_id
                                      for d in fake.webhook_deliveries) >= 2,
                          what="the /pending update delivered twice")
    first, second = [d for d in fake.webhook_deliveries if d.update_id == update_id]
    assert first.status == second.status == 200
    assert second.answer == {"ok": True, "duplicate": True}
    await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == CHAT_A)
    await asyncio.sleep(0.3)
    assert len([c for c in fake.calls_of("sendMessage")
                if int(c.params["chat_id"]) == CHAT_A]) == 1
    # The same tap POSTed twice (as two instances behind a balancer would see it).
    approval = await submit(hooked)
    msg = await posted(fake, CHAT_A, approval.id)
    update = forged_tap(990_000_002, "4343", msg.buttons[1]["callback_data"], msg.message_id)
    answers = await asyncio.gather(post(hooked, update), post(hooked, update))
    assert sorted(r.json().get("duplicate", False) for r in answers) == [False, True]
    assert (await hooked.manager.wait(approval.id, 10)).status == "denied"
    assert hooked.webhook.duplicates == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("body,status", [
    (b"", 400), (b"not json", 400), (b"\xff\xfe\x00", 400), (b"[1, 2]", 400), (b"null", 400),
    (b'{"message": {}}', 400), (b'{"update_id": "7"}', 400), (b'{"update_id": true}', 400),
    (b'{"update_id": -1}', 400), (b'{"update_id": 1e3}', 400),
    (b'{"update_id": 99999999999999999999999}', 400),
    (b'{"update_id": 7, "callback_query": "tap"}', 400),
    (b'{"update_id": 8, "message": {"chat": 5}}', 400),
    (b'{"update_id": 9, "callback_query": {"id": 1}}', 400),
    (b"{" * 100_000, 400),
    (b"x" * (MAX_BODY + 1), 413),
])
async def test_malformed_bodies_get_4xx_never_a_traceback(fake, hooked, caplog, body, status):
    response = await post(hooked, body)
    assert response.status_code == status, response.text
    assert response.json()["ok"] is False
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert hooked.webhook.accepted == 0
    # The listener is fine afterwards.
    assert (await post(hooked, {"update_id": 12345})).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_only_post_and_health(fake, hooked):
    async with httpx.AsyncClient(base_url=hooked.webhook.url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/tapgate/hook")).status_code == 405
        assert (await client.put("/tapgate/hook", headers={SECRET_HEADER: SECRET})
                ).status_code == 405
    # The path does not matter (a proxy may strip it); the secret does.
    assert (await post(hooked, {"update_id": 5}, path="/")).status_code == 200


def test_the_claim_is_once_per_bot_and_update_and_pruned_after_a_day(store):
    from datetime import timedelta

    day_ago = store.clock() - timedelta(days=1, seconds=1)
    assert store.claim_update(1, 500, now=day_ago) is True
    assert store.claim_update(1, 500) is False
    assert store.claim_update(2, 500) is True  # another bot's update 500
    assert store.claim_update(1, 501) is True
    assert store.prune_updates(store.clock() - timedelta(days=1)) == 1
    assert store.claim_update(1, 500) is True  # forgotten: Telegram gave up on it long ago
    assert store.claim_update(1, 501) is False


# ------------------------------------------------------------------ the fake's webhook


async def test_the_fake_delivers_with_the_secret_and_redelivers_until_2xx():
    from aiohttp import web

    seen: list[tuple[int, str | None]] = []
    answers = iter([500, 200, 200])

    async def receive(request: web.Request) -> web.Response:
        update = await request.json()
        seen.append((update["update_id"], request.headers.get(SECRET_HEADER)))
        return web.json_response({}, status=next(answers))

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with FakeTelegram(webhook_target=f"http://127.0.0.1:{port}",
                                webhook_retry_delay=0.05) as fake:
            bot = httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}")
            bad = await bot.post("/setWebhook", json={"url": "http://insecure/hook"})
            assert bad.status_code == 400
            bad = await bot.post("/setWebhook", json={"url": PUBLIC_URL, "secret_token": "a b"})
            assert bad.status_code == 400
            ok = await bot.post("/setWebhook", json={"url": "https://x.example/hook",
                                                     "secret_token": "abc"})
            assert ok.json() == {"ok": True, "result": True}
            conflict = await bot.post("/getUpdates", json={"timeout": 0})
            assert conflict.status_code == 409 and "webhook is active" in conflict.text
            first = fake.send_text(CHAT_A, ALICE, "hello")
            second = fake.send_text(CHAT_A, ALICE, "again")
            await fake.wait_until(lambda: len(seen) == 3, what="three deliveries")
            assert seen == [(first, "abc"), (first, "abc"), (second, "abc")]
            assert [d.ok for d in fake.webhook_deliveries] == [False, True, True]
            assert fake.pending_updates == []
            info = (await bot.post("/getWebhookInfo")).json()["result"]
            assert "500" in info["last_error_message"] and info["pending_update_count"] == 0
            # A connection error is retried too; deleteWebhook stops delivery.
            await runner.cleanup()
            fake.send_text(CHAT_A, ALICE, "nobody listens")
            await fake.wait_until(lambda: len(fake.webhook_deliveries) >= 5, what="retries")
            assert fake.webhook_deliveries[-1].status is None
            assert (await bot.post("/deleteWebhook")).json()["result"] is True
            assert len(fake.pending_updates) == 1  # kept for getUpdates
            polled = await bot.post("/getUpdates", json={"timeout": 0})
            assert [u["message"]["text"] for u in polled.json()["result"]] == ["nobody listens"]
            await bot.aclose()
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("var,value,needle", [
    ("TAPGATE_TELEGRAM_WEBHOOK_URL", "http://bot.example.com/hook", "https://"),
    ("TAPGATE_TELEGRAM_WEBHOOK_URL", "bot.example.com/hook", "https://"),
    ("TAPGATE_TELEGRAM_WEBHOOK_URL", "https:///hook", "https://"),
    ("TAPGATE_TELEGRAM_WEBHOOK_URL", "https://bot.example.com:8080/hook", "443, 80, 88 or 8443"),
    ("TAPGATE_TELEGRAM_WEBHOOK_URL", "https://bot.example.com:99999/hook", "invalid port"),
    ("TAPGATE_WEBHOOK_LISTEN", "8081", "host:port"),
    ("TAPGATE_WEBHOOK_LISTEN", "127.0.0.1:http", "host:port"),
    ("TAPGATE_WEBHOOK_LISTEN", "127.0.0.1:70000", "host:port"),
    ("TAPGATE_WEBHOOK_SECRET", "short", "16-256 characters"),
    ("TAPGATE_WEBHOOK_SECRET", "has spaces in it, not allowed!!", "16-256 characters"),
    ("TAPGATE_WEBHOOK_SECRET", "x" * 257, "16-256 characters"),
])
def test_a_bad_webhook_setting_is_one_line_naming_the_variable(
        clean_env, monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{var}: ") and needle in message and "\n" not in message
    if var == "TAPGATE_WEBHOOK_SECRET":
        assert value not in message  # a secret is never echoed


def test_webhook_settings_parse(clean_env, monkeypatch):
    s = load_settings()
    assert (s.webhook_mode, s.webhook_address, s.webhook_secret) == (
        False, ("127.0.0.1", 8081), None)
    monkeypatch.setenv("TAPGATE_TELEGRAM_WEBHOOK_URL", PUBLIC_URL)
    monkeypatch.setenv("TAPGATE_WEBHOOK_LISTEN", "[::1]:9000")
    monkeypatch.setenv("TAPGATE_WEBHOOK_SECRET", SECRET)
    s = load_settings()
    assert s.webhook_mode and s.webhook_address == ("::1", 9000)
    assert s.webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(s)


def test_the_secret_is_required_with_the_url():
    values = {"telegram_token": "1:x", "approver_chat_ids": [1], "approver_user_ids": [1],
              "telegram_webhook_url": PUBLIC_URL}
    with pytest.raises(ConfigError, match="^TAPGATE_WEBHOOK_SECRET: missing"):
        Settings(_env_file=None, **values).require_for_run()
    Settings(_env_file=None, webhook_secret=SECRET, **values).require_for_run()


def test_tapgate_run_without_the_secret_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(TAPGATE_TELEGRAM_TOKEN="1:x", TAPGATE_APPROVER_CHAT_IDS="1",
               TAPGATE_APPROVER_USER_IDS="1", TAPGATE_TELEGRAM_WEBHOOK_URL=PUBLIC_URL,
               TAPGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'never.db'}")
    proc = subprocess.run([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("TAPGATE_WEBHOOK_SECRET: missing")


# ------------------------------------------------------------------ real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webhook_env(port: int, **extra) -> dict:
    return {"telegram_webhook_url": PUBLIC_URL, "webhook_listen": f"127.0.0.1:{port}",
            "webhook_secret": SECRET, **extra}


async def test_tapgate_run_by_webhook_keeps_the_secret_out_of_its_log(fake, sqlite_url):
    port = free_port()
    fake.webhook_target = f"http://127.0.0.1:{port}"
    bot = BotProcess(fake, sqlite_url, **webhook_env(port, log_level="DEBUG"))
    await bot.start(wait_polling=False)
    try:
        await fake.wait_for("setWebhook", timeout=30)
        async with socket_api(bot) as api:
            approval_id = await ask(api, "deploy by webhook")
            msg = await posted(fake, CHAT_A, approval_id)
            waiting = asyncio.create_task(api.get(f"/v1/approvals/{approval_id}",
                                                  params={"wait": 60}))
            fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
            assert (await asyncio.wait_for(waiting, 60)).json()["status"] == "approved"
    finally:
        assert await bot.stop() == 0
    log = bot.log()
    assert "setWebhook" in log  # PTB logged the call's parameters at DEBUG ...
    assert SECRET not in log  # ... with the secret masked
    assert fake.calls_of("getUpdates") == [] and fake.calls_of("deleteWebhook") == []


async def test_two_instances_on_postgres_handle_a_redelivered_tap_once(fake, pg_url):
    _empty_postgres(pg_url)
    ports = [free_port(), free_port()]
    turn = itertools.count()
    # A round-robin load balancer: each delivery attempt goes to the next instance.
    fake.webhook_target = lambda url: f"http://127.0.0.1:{ports[next(turn) % 2]}/tapgate/hook"
    first = BotProcess(fake, pg_url, **webhook_env(ports[0]))
    second = BotProcess(fake, pg_url, **webhook_env(ports[1]))
    await first.start(wait_polling=False)
    try:
        await second.start(wait_polling=False)
        await fake.wait_for("setWebhook", timeout=30)
        async with socket_api(second) as api:
            approval_id = await ask(api, "deploy from the second host")
            msg = await posted(fake, CHAT_A, approval_id)
            waiting = asyncio.create_task(api.get(f"/v1/approvals/{approval_id}",
                                                  params={"wait": 60}))
            fake.webhook_lost_answers = 1  # the first instance's 200 never reaches Telegram
            query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
            decided = (await asyncio.wait_for(waiting, 60)).json()
            assert decided["status"] == "approved"
        await fake.wait_until(lambda: len([d for d in fake.webhook_deliveries
                                           if "callback_query" in d.update]) >= 2,
                              what="the tap delivered twice")
        tap = [d for d in fake.webhook_deliveries if "callback_query" in d.update]
        assert len(tap) == 2 and tap[0].update_id == tap[1].update_id
        assert {urlsplit(d.url).port for d in tap} == set(ports)
        assert tap[1].answer == {"ok": True, "duplicate": True}
        await asyncio.sleep(0.5)
        answers = [c for c in fake.calls_of("answerCallbackQuery")
                   if c.params["callback_query_id"] == query]
        assert len(answers) == 1 and answers[0].ok  # handled once, by one instance
    finally:
        await second.stop()
        await first.stop()
    # Nobody polled, and shutdown never deleted the webhook (another instance may serve it).
    assert fake.calls_of("getUpdates") == [] and fake.calls_of("deleteWebhook") == []
    assert fake.webhook_url == PUBLIC_URL


# ------------------------------------------------------------------ tapgate doctor


async def test_doctor_says_what_telegram_knows_of_the_webhook(fake, tmp_path):
    from telegram import Bot

    from bot.telegram import webhook

    polling = settings_for(fake, f"sqlite:///{tmp_path / 'x.db'}")
    hooked = webhook_settings(fake, f"sqlite:///{tmp_path / 'x.db'}")
    async with Bot(fake.token, base_url=f"{fake.url}/bot") as bot:
        assert await webhook.check(bot, polling) is None
        ok, text = await webhook.check(bot, hooked)
        assert ok and "not set yet" in text
        fake.webhook_target = "http://127.0.0.1:9"  # nothing listens there
        fake.webhook_retry_delay = 0.05
        await webhook.register(bot, hooked)
        fake.send_text(CHAT_A, ALICE, "hello")
        await fake.wait_until(lambda: fake.webhook_deliveries, what="a failed delivery")
        ok, text = await webhook.check(bot, hooked)
        assert not ok and "last delivery failed" in text and "1 update(s) waiting" in text
        assert SECRET not in text
        ok, text = await webhook.check(bot, polling)
        assert not ok and "deletes it at start" in text
        other = webhook_settings(fake, "sqlite://", telegram_webhook_url="https://other.example/h")
        ok, text = await webhook.check(bot, other)
        assert not ok and "not TAPGATE_TELEGRAM_WEBHOOK_URL" in text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_listen_address_in_use_is_one_line_naming_the_variable(fake, db_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = Service(webhook_settings(fake, db_url, webhook_listen=f"127.0.0.1:{port}"),
                      with_socket=False)
        try:
            with pytest.raises(ConfigError) as info:
                await svc.start()
        finally:
            await svc.stop()
    assert str(info.value).startswith(f"TAPGATE_WEBHOOK_LISTEN: cannot listen on 127.0.0.1:{port}")
    assert "\n" not in str(info.value)
