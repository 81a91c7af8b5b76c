"""/spend, budget alerts with the grant button, and gated tool calls, end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.governance import GRANT_KIND
from bot.service import Service
from bot.telegram.handlers import parse_spend_args
from storage.errors import InvalidArgument
from storage.records import ApprovalRule, NewLedgerEntry, NewToolCall, PolicyUpsert
from tests.test_telegram import ALICE, CHAT_A, edited_to, posted

NOW = datetime.now(UTC)


async def load_ledger(svc: Service) -> None:
    gov = svc.governance
    await gov.upsert_run("r-alpha", {"name": "alpha", "metadata": {"team": "search"}})
    await gov.upsert_run("r-beta", {"name": "beta", "metadata": {"team": "ads"}})
    await gov.upsert_run("r-gamma", {"name": "gamma"})
    rows = []
    for day in range(10):
        at = NOW - timedelta(days=day)
        rows += [
            NewLedgerEntry(run_id="r-alpha", provider="openai", model="gpt-4o",
                           prompt_tokens=1000, completion_tokens=100, dollars=0.5, created_at=at),
            NewLedgerEntry(run_id="r-beta", provider="anthropic", model="claude",
                           prompt_tokens=200, completion_tokens=20, dollars=0.25, created_at=at),
        ]
    rows.append(NewLedgerEntry(run_id="r-gamma", provider="acme", model="mystery-1",
                               prompt_tokens=7, completion_tokens=3, dollars=None, priced=False,
                               created_at=NOW))
    await gov.append_ledger(rows)


async def spend(fake, text: str) -> str:
    before = len(fake.calls_of("sendMessage"))
    fake.send_text(CHAT_A, ALICE, text)
    call = await fake.wait_for("sendMessage",
                               lambda c: fake.calls_of("sendMessage").index(c) >= before)
    return fake.message(CHAT_A, call.response["result"]["message_id"]).text


def test_spend_arguments():
    now = datetime(2026, 11, 22, 15, 30, tzinfo=UTC)
    assert parse_spend_args([], now) == ("model", None, None)
    by, since, until = parse_spend_args(["day", "7d"], now)
    assert (by, since, until) == ("day", now - timedelta(days=7), None)
    by, since, _ = parse_spend_args(["today"], now)
    assert by == "model" and since == datetime(2026, 11, 22, tzinfo=UTC)
    _, since, until = parse_spend_args(["provider", "2026-11-01", "2026-11-15"], now)
    assert (since.day, until.day) == (1, 15)
    with pytest.raises(InvalidArgument):
        parse_spend_args(["model", "yesterweek"], now)


async def test_spend_by_model_all_time_matches_the_ledger(fake, service):
    await load_ledger(service)
    text = await spend(fake, "/spend")
    assert "Spend by model" in text and "all time" in text
    lines = text.splitlines()
    gpt = next(line for line in lines if line.startswith("gpt-4o"))
    assert "10" in gpt and "$5.0000" in gpt
    assert next(line for line in lines if line.startswith("TOTAL")).endswith("$7.5000")
    assert "1 unpriced call" in text
    entries = []
    for run in ("r-alpha", "r-beta", "r-gamma"):
        entries += await service.store.run(service.store.ledger_for_run, run)
    assert round(sum(e.dollars for e in entries if e.priced), 6) == 7.5


@pytest.mark.parametrize("args,expect", [
    ("provider", ["openai", "anthropic", "acme"]),
    ("name", ["alpha", "beta", "gamma"]),
    ("metadata.team", ["search", "ads", "(none)"]),
])
async def test_spend_groupings(fake, service, args, expect):
    await load_ledger(service)
    text = await spend(fake, f"/spend {args}")
    for key in expect:
        assert any(line.startswith(key) for line in text.splitlines()), (key, text)


async def test_spend_window(fake, service):
    await load_ledger(service)
    text = await spend(fake, "/spend model 3d")
    total = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert total.endswith("$2.2500")  # three days of 0.75 each (the 4th day ago is out)
    text = await spend(fake, "/spend nonsense-arg")
    assert "invalid time" in text


async def test_spend_day_sends_a_chart(fake, service):
    await load_ledger(service)
    fake.send_text(CHAT_A, ALICE, "/spend day")
    call = await fake.wait_for("sendPhoto", timeout=60)  # a fresh install builds the font cache
    message = fake.message(CHAT_A, call.response["result"]["message_id"])
    assert message.photo.startswith(b"\x89PNG")
    assert "Daily spend" in message.caption


async def test_budget_alert_grant_button_resumes_the_run(fake, service):
    gov = service.governance
    await gov.upsert_run("r1", {"name": "crawler", "budget_dollars": 1.0})
    await gov.append_ledger([NewLedgerEntry(run_id="r1", model="gpt-4o", provider="openai",
                                            prompt_tokens=10, dollars=1.2)])
    run = await service.store.run(service.store.get_run, "r1")
    assert run.status == "halted"
    await gov.drain()  # the alert is posted by a task once the append has committed
    grant = next(a for a in await service.store.run(service.store.list_approvals, "pending")
                 if a.kind == GRANT_KIND and "halted" in a.summary)
    msg = await posted(fake, CHAT_A, grant.id)
    assert "Budget alert" in msg.text and "crawler" in msg.text
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="➕ Grant +50% budget")
    await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
    await gov.drain()
    run = await service.store.run(service.store.get_run, "r1")
    assert run.status == "running" and run.budget_dollars > 1.2


@pytest.mark.parametrize("action,expected", [("approve", "approved"), ("deny", "denied"),
                                             ("expire", "expired")])
async def test_tool_call_approval_end_to_end(fake, service, action, expected):
    gov = service.governance
    await service.store.run(service.store.upsert_policy, PolicyUpsert(
        name="careful", approval_rules=[ApprovalRule(side_effect="fs.delete*")]))
    await gov.upsert_run("r1", {"policy_ref": "careful"})
    if action == "expire":
        # The policy's approvals use the default TTL; expire this one through the sweep.
        service.manager.default_ttl = 1
    _, approval = await gov.append_tool_call(
        NewToolCall(run_id="r1", tool="rm", side_effect="fs.delete", arguments={"path": "/tmp"}))
    msg = await posted(fake, CHAT_A, approval.id)
    if action == "approve":
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
    elif action == "deny":
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="❌ Deny")
    final = await service.manager.wait(approval.id, 10)
    assert final.status == expected
    word = {"approved": "Approved", "denied": "Denied", "expired": "Expired"}[expected]
    await edited_to(fake, CHAT_A, msg.message_id, word)
    await gov.drain()
    calls = await service.store.run(service.store.list_tool_calls, "r1")
    assert calls[0].status == expected and calls[0].approval_id == approval.id
