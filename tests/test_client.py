"""The agents' client (sync and async) and the ``requires_approval`` decorator, against a
real server on a Unix socket. Sync calls run in a thread: the server shares the test's loop."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bot.client import (
    ApprovalDenied,
    ApprovalExpired,
    AsyncTapgateClient,
    ClientError,
    ConnectionFailed,
    TapgateClient,
    requires_approval,
)
from storage.records import Approval, LedgerEntry, Run
from tests.test_api import lite, short_dir  # noqa: F401  (the fixture)


class Approver:
    """A fake human: decides every new request as soon as it is announced."""

    def __init__(self, harness, decision: str | None, reason: str | None = None):
        self.decision, self.reason = decision, reason
        self.seen: list[Approval] = []
        self._harness = harness
        self._loop = asyncio.get_running_loop()
        harness.manager.subscribe(self._on_event)

    def _on_event(self, approval: Approval, created: bool) -> None:
        if created:
            self.seen.append(approval)
            if self.decision:
                self._loop.create_task(self._harness.manager.resolve(
                    approval.id, self.decision, "telegram:7 (@carol)", self.reason))


def approver(harness, decision: str | None, reason: str | None = None) -> Approver:
    return Approver(harness, decision, reason)


async def test_sync_client_covers_the_api(lite):  # noqa: F811
    def session() -> dict:
        out = {}
        with TapgateClient(lite.path) as tg:
            out["health"] = tg.health()
            approval = tg.request_approval("bot", "shell", "ls", payload={"a": 1},
                                           idempotency_key="k1")
            assert tg.request_approval("bot", "shell", "ls", payload={"a": 1},
                                       idempotency_key="k1") == approval
            assert tg.get_approval(approval.id) == approval
            assert tg.wait_for_decision(approval.id, timeout=0.2).status == "pending"
            assert [a.id for a in tg.list_approvals(status="pending")] == [approval.id]
            out["cancelled"] = tg.cancel_approval(approval.id, reason="changed my mind")
            with pytest.raises(ClientError) as final:
                tg.cancel_approval(approval.id)
            out["conflict"] = final.value

            run = tg.put_run("r1", name="nightly", budget_dollars=10, metadata={"team": "a"})
            assert isinstance(run, Run) and tg.get_run("r1").name == "nightly"
            assert [r.id for r in tg.list_runs()] == ["r1"]
            assert tg.put_step("r1", 0, prompt_tokens=3).index == 0
            assert len(tg.list_steps("r1")) == 1
            entry = tg.record_call("r1", "gpt-4o", provider="openai", prompt_tokens=100,
                                   completion_tokens=10)
            assert isinstance(entry, LedgerEntry) and entry.priced and entry.dollars > 0
            many = tg.record_calls([{"run_id": "r1", "model": "m", "dollars": 0.5}] * 3)
            assert len(many) == 3 and len(tg.ledger("r1")) == 4
            assert tg.totals("r1").calls == 4
            assert tg.spend(by="model").total.calls == 4
            assert tg.spend(by="day", since="2000-01-01").total.calls == 4
            result = tg.record_tool_call("r1", "shell", arguments={"cmd": "ls"})
            assert result.approval is None and tg.list_tool_calls("r1")[0].tool == "shell"
            tg.save_checkpoint("r1", name="cp", payload={"step": 1})
            assert tg.latest_checkpoint("r1").payload == {"step": 1}
            assert len(tg.list_checkpoints("r1")) == 1
            assert tg.put_fact("ns", "k/1", [1, 2]).value == [1, 2]  # "/" travels escaped
            assert tg.get_fact("ns", "k/1").key == "k/1"
            assert [f.key for f in tg.list_facts("ns")] == ["k/1"]
            assert tg.put_policy("p", tool_allowlist=["shell"]).tool_allowlist == ["shell"]
            assert tg.get_policy("p").name == "p" and len(tg.list_policies()) == 1
            assert tg.cancel_run("r1").halt_reason == "cancelled"
            with pytest.raises(ClientError) as halted:
                tg.record_call("r1", "m", dollars=1.0)
            out["halted"] = halted.value
            with pytest.raises(ClientError) as missing:
                tg.get_run("ghost")
            out["missing"] = missing.value
        return out

    out = await asyncio.to_thread(session)
    assert out["health"].status == "ok" and out["health"].database == "sqlite"
    assert out["cancelled"].status == "cancelled" and out["cancelled"].reason == \
        "changed my mind"
    assert (out["conflict"].status, out["conflict"].code) == (409, "conflict")
    assert out["conflict"].details[0]["approval"]["status"] == "cancelled"
    assert (out["halted"].status, out["halted"].code) == (402, "budget_exceeded")
    assert out["halted"].details[0]["halt_reason"] == "cancelled"
    assert (out["missing"].status, out["missing"].code) == (404, "not_found")
    assert "run ghost not found" in str(out["missing"])


async def test_async_client(lite):  # noqa: F811
    approver(lite, "approved")
    async with AsyncTapgateClient(lite.path) as tg:
        assert (await tg.health()).pending == 0
        approval = await tg.request_approval("bot", "deploy", "ship v2", ttl_seconds=60)
        decided = await tg.wait_for_decision(approval.id, timeout=30)
        assert decided.status == "approved" and decided.decided_by == "telegram:7 (@carol)"
        await tg.put_run("r1")
        entries = await tg.record_calls([{"run_id": "r1", "model": "m", "dollars": 0.1}] * 2)
        assert [e.dollars for e in entries] == [0.1, 0.1]
        assert (await tg.totals("r1")).dollars == pytest.approx(0.2)
        with pytest.raises(ClientError) as bad:
            await tg.request_approval("bot", "k", "")
        assert bad.value.code == "validation_error" and bad.value.details[0]["loc"] == [
            "body", "summary"]


async def test_wait_for_decision_returns_when_decided(lite):  # noqa: F811
    async with AsyncTapgateClient(lite.path) as tg:
        approval = await tg.request_approval("bot", "k", "s")
        waiting = asyncio.create_task(tg.wait_for_decision(approval.id))
        await lite.wait_until(lambda: lite.manager.waiting == 1)
        started = time.monotonic()
        await lite.manager.resolve(approval.id, "denied", "cli", "no")
        decided = await waiting
        assert decided.status == "denied" and time.monotonic() - started < 1


async def test_connection_failure_names_the_socket():
    path = short_dir() / "absent.sock"
    def check() -> None:
        with TapgateClient(path) as tg:
            tg.health()

    with pytest.raises(ConnectionFailed, match=str(path)) as sync_error:
        await asyncio.to_thread(check)
    assert sync_error.value.code == "connection_error"
    async with AsyncTapgateClient(path) as tg:
        with pytest.raises(ConnectionFailed, match="nothing is listening"):
            await tg.health()
    os.rmdir(path.parent)


async def test_approvers_and_the_person_acted_for_reach_the_request(lite):  # noqa: F811
    """``required_approvals`` and ``requested_by`` from both clients and the decorator."""
    def submit() -> Approval:
        with TapgateClient(lite.path) as tg:
            return tg.request_approval("ops", "deploy", "ship v2", required_approvals=2,
                                       requested_by=1001)

    made = await asyncio.to_thread(submit)
    assert (made.required_approvals, made.requested_by) == (2, 1001)
    async with AsyncTapgateClient(lite.path) as tg:
        made = await tg.request_approval("ops", "deploy", "ship v3", requested_by=42,
                                         required_approvals=3)
        assert (made.required_approvals, made.requested_by) == (3, 42)
        plain = await tg.request_approval("ops", "deploy", "ship v4")
        assert (plain.required_approvals, plain.requested_by) == (1, None)

    @requires_approval("deploy", socket_path=lite.path, required_approvals=2,
                       requested_by=1001)
    async def ship() -> None:
        raise AssertionError("denied: must not run")

    human = approver(lite, "denied")
    with pytest.raises(ApprovalDenied):
        await ship()
    assert (human.seen[0].required_approvals, human.seen[0].requested_by) == (2, 1001)


# --- the decorator ---------------------------------------------------------------------------


async def test_decorator_on_sync_functions(lite):  # noqa: F811
    ran: list[str] = []

    @requires_approval("shell", socket_path=lite.path, agent="ops-bot")
    def remove(path: str, force: bool = False) -> str:
        ran.append(path)
        return f"removed {path}"

    human = approver(lite, "approved")
    assert await asyncio.to_thread(remove, "build/", force=True) == "removed build/"
    assert ran == ["build/"]
    seen = human.seen
    assert seen[0].summary == "remove('build/', force=True)" and seen[0].agent == "ops-bot"

    human.decision, human.reason = "denied", "not on a Friday"
    with pytest.raises(ApprovalDenied, match="not on a Friday") as denied:
        await asyncio.to_thread(remove, "dist/")
    assert "telegram:7 (@carol)" in str(denied.value)
    assert denied.value.approval.status == "denied" and ran == ["build/"]


async def test_decorator_on_async_functions(lite):  # noqa: F811
    ran: list[int] = []

    @requires_approval("payment", summary=lambda amount: f"pay ${amount}",
                       payload=lambda amount: {"amount": amount}, socket_path=lite.path)
    async def pay(amount: int) -> int:
        ran.append(amount)
        return amount

    human = approver(lite, "approved")
    assert await pay(5) == 5 and ran == [5]
    seen = human.seen
    assert seen[0].summary == "pay $5" and seen[0].payload == {"amount": 5}
    assert seen[0].agent == __name__

    human.decision, human.reason = "denied", "too much"
    with pytest.raises(ApprovalDenied, match="too much"):
        await pay(500)
    assert ran == [5]


async def test_decorator_expiry_and_timeout(lite):  # noqa: F811
    ran = []

    @requires_approval("shell", ttl_seconds=1, socket_path=lite.path)
    async def slow_async() -> None:
        ran.append("async")

    @requires_approval("shell", ttl_seconds=1, socket_path=lite.path)
    def slow_sync() -> None:
        ran.append("sync")

    @requires_approval("shell", socket_path=lite.path, timeout=0.2)
    def impatient() -> None:
        ran.append("impatient")

    approver(lite, None)  # nobody answers
    with pytest.raises(ApprovalExpired, match="expired") as expired:
        await slow_async()
    assert expired.value.approval.status == "expired"
    with pytest.raises(ApprovalExpired, match="expired"):
        await asyncio.to_thread(slow_sync)
    with pytest.raises(ApprovalExpired, match="cancelled") as withdrawn:
        await asyncio.to_thread(impatient)
    assert withdrawn.value.approval.decided_by == "api"  # withdrawn, so nobody approves it
    assert ran == []


def test_summary_is_truncated():
    from bot.client_decorator import _describe, _truncate

    def f(*args):
        return None

    text = _truncate(_describe(f, ("x" * 1000,), {}))
    assert len(text) == 500 and text.startswith("f('xxx") and text.endswith("…")
