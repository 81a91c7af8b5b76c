"""The whole service end to end: socket API + Telegram (fake) + CLI subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from bot.client import AsyncTapgateClient, ClientError
from bot.service import Service
from tests.test_telegram import ALICE, BOB, CHAT_A, CHAT_B, edited_to, posted, settings_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sock_dir():
    path = tempfile.mkdtemp(dir="/tmp", prefix="tg-")  # AF_UNIX paths are short
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def service(fake, db_url, sock_dir):
    settings = settings_for(fake, db_url, socket_path=sock_dir / "tapgate.sock")
    svc = Service(settings)
    await svc.start()
    await fake.wait_polling()
    yield svc
    await svc.stop()


async def cli(service: Service, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(TAPGATE_SOCKET_PATH=str(service.settings.socket_path),
               TAPGATE_DATABASE_URL=service.settings.database_url)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def request_summary(fake, summary: str):
    call = await fake.wait_for("sendMessage", lambda c: summary in c.params["text"], timeout=30)
    return fake.message(int(call.params["chat_id"]), call.response["result"]["message_id"])


@pytest.mark.parametrize("button,code,status", [("✅ Approve", 0, "approved"),
                                                ("❌ Deny", 1, "denied")])
async def test_request_wait_decided_by_a_tap(fake, service, button, code, status):
    proc = await cli(service, "request", "--kind", "shell", "--summary", f"cli {status}",
                     "--payload", '{"cmd": "make clean"}', "--wait")
    msg = await request_summary(fake, f"cli {status}")
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text=button)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == code, err.decode()
    decided = json.loads(out)
    assert decided["status"] == status and decided["decided_by"] == "telegram:1001 (@alice)"
    assert decided["payload"] == {"cmd": "make clean"}


async def test_request_wait_deny_reason_by_command(fake, service):
    proc = await cli(service, "request", "--kind", "deploy", "--summary", "cli reason", "--wait")
    msg = await request_summary(fake, "cli reason")
    approval_id = msg.text.rsplit("ID: ", 1)[1].split()[0]
    fake.send_text(CHAT_B, BOB, f"/deny {approval_id} not today")
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert json.loads(out)["reason"] == "not today"


async def test_request_wait_ttl_passes(fake, service):
    proc = await cli(service, "request", "--kind", "shell", "--summary", "cli ttl", "--ttl", "1s",
                     "--wait")
    msg = await request_summary(fake, "cli ttl")
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert json.loads(out)["status"] == "expired"
    await edited_to(fake, msg.chat_id, msg.message_id, "Expired")


async def test_idempotent_submit_posts_once(fake, service):
    async with AsyncTapgateClient(service.settings.socket_path) as client:
        first = await client.request_approval("a", "shell", "once only", idempotency_key="k-1")
        again = await client.request_approval("a", "shell", "once only", idempotency_key="k-1")
        assert again.id == first.id
        with pytest.raises(ClientError) as info:
            await client.request_approval("a", "shell", "different", idempotency_key="k-1")
        assert info.value.status == 409
    await posted(fake, CHAT_A, first.id)
    await posted(fake, CHAT_B, first.id)
    await fake.wait_until(lambda: service.notifier.idle, what="notifier idle")
    sent = [c for c in fake.calls_of("sendMessage") if first.id in c.params["text"]]
    assert len(sent) == 2  # one per approver chat, not two


async def test_long_poll_returns_at_the_tap(fake, service):
    async with AsyncTapgateClient(service.settings.socket_path) as client:
        approval = await client.request_approval("a", "shell", "long poll")
        msg = await posted(fake, CHAT_A, approval.id)
        waiting = asyncio.create_task(client.get_approval(approval.id, wait=30))
        await asyncio.sleep(0)
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        decided = await asyncio.wait_for(waiting, 10)
        assert decided.status == "approved"


async def test_policies_budgets_and_grants_over_the_socket(fake, service):
    async with AsyncTapgateClient(service.settings.socket_path) as client:
        await client.put_policy("careful", tool_allowlist=["ls", "rm"], budget_dollars=1.0,
                                approval_rules=[{"side_effect": "fs.delete*"}])
        run = await client.put_run("r1", name="crawler", policy_ref="careful")
        assert run.budget_dollars == 1.0  # from the policy
        with pytest.raises(ClientError) as info:
            await client.record_tool_call("r1", "curl")
        assert info.value.status == 403 and "curl" in info.value.message
        result = await client.record_tool_call("r1", "rm", side_effect="fs.delete",
                                               arguments={"path": "/data"})
        assert result.approval is not None and result.tool_call.status == "pending_approval"
        msg = await posted(fake, CHAT_A, result.approval.id)
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        assert (await client.wait_for_decision(result.approval.id, 10)).status == "approved"
        await client.record_call("r1", "gpt-4o", provider="openai", prompt_tokens=5,
                                 dollars=1.5)
        with pytest.raises(ClientError) as info:
            await client.record_call("r1", "gpt-4o", provider="openai", prompt_tokens=5)
        assert info.value.status == 402
        assert info.value.details[0]["halt_reason"] == "dollar_budget_exceeded"
        assert info.value.details[0]["usage_dollars"] == 1.5
    await service.governance.drain()
    calls = await service.store.run(service.store.list_tool_calls, "r1")
    assert {c.tool: c.status for c in calls} == {"curl": "forbidden", "rm": "approved"}


async def test_rejected_token_is_one_line_without_the_token(fake, db_url):
    from bot.config import ConfigError

    settings = settings_for(fake, db_url, telegram_token="999:SECRET-VALUE")
    svc = Service(settings, with_socket=False)
    with pytest.raises(ConfigError) as info:
        await svc.start()
    await svc.stop()
    assert str(info.value).startswith("TAPGATE_TELEGRAM_TOKEN: rejected")
    assert "SECRET" not in str(info.value)


async def test_agents_submit_while_telegram_is_down_at_start(fake, db_url, sock_dir):
    fake.set_down(True)
    svc = Service(settings_for(fake, db_url, socket_path=sock_dir / "tapgate.sock"))
    starting = asyncio.create_task(svc.start())
    try:
        await fake.wait_for_error("getMe")
        while not svc.settings.socket_path.exists():
            await asyncio.sleep(0.01)
        async with AsyncTapgateClient(svc.settings.socket_path) as client:
            approval = await client.request_approval("a", "shell", "during the outage")
        fake.set_down(False)
        await asyncio.wait_for(starting, 30)
        msg = await posted(fake, CHAT_A, approval.id)
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        assert (await svc.manager.wait(approval.id, 10)).status == "approved"
    finally:
        if not starting.done():
            starting.cancel()
        await svc.stop()
