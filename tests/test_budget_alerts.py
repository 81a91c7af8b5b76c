"""Budget alerts are the bot's own record: recorded with the usage, relative grants,
retiring, delivery that never fails an append, forged grants, caps (both backends)."""

from __future__ import annotations

import pytest

from bot.approvals import ApprovalManager
from bot.governance import GRANT_KIND, Governance, due_alerts
from storage.errors import AlreadyFinal, Forbidden, LimitExceeded
from storage.records import MAX_RUN_DOLLARS, Budgets, NewLedgerEntry, StepUpsert


@pytest.fixture
def manager(store):
    return ApprovalManager(store, chat_ids=[])


@pytest.fixture
def gov(store, manager):
    return Governance(store, manager)


def entry(run_id="r1", tokens=10, dollars=0.01, **kw) -> NewLedgerEntry:
    return NewLedgerEntry(run_id=run_id, provider="openai", model="gpt-4o",
                          prompt_tokens=tokens, dollars=dollars, **kw)


async def alerts_of(gov, run_id="r1", status="pending"):
    await gov.drain()
    return [a for a in await gov.store.run(gov.store.list_approvals, status)
            if a.kind == GRANT_KIND and a.run_id == run_id]


async def test_approving_an_older_alert_after_a_newer_never_lowers_a_budget(gov, manager):
    await gov.upsert_run("r1", {"budget_tokens": 100})
    await gov.append_ledger([entry(tokens=85)])  # 80 %: warn
    await gov.append_ledger([entry(tokens=20)])  # halted
    alerts = sorted(await alerts_of(gov), key=lambda a: a.created_at)
    assert ["80%" in alerts[0].summary, "halted" in alerts[1].summary] == [True, True]
    newer = await manager.resolve(alerts[1].id, "approved", "telegram:1 (@alice)")
    await gov.settle(newer)
    run = await gov.store.run(gov.store.get_run, "r1")
    assert (run.status, run.budget_tokens) == ("running", 150)  # +50 % of 100
    # The older alert was retired when the newer one was decided: it can no longer
    # be approved, and the budget stays where the newer grant put it.
    older = await manager.get(alerts[0].id)
    assert older.status == "cancelled" and "retired" in older.reason
    with pytest.raises(AlreadyFinal):
        await manager.resolve(alerts[0].id, "approved", "telegram:1 (@alice)")
    await gov.settle(older)
    assert (await gov.store.run(gov.store.get_run, "r1")).budget_tokens == 150


async def test_a_grant_is_relative_to_the_budget_when_approved(gov, manager, store):
    await gov.upsert_run("r1", {"budget_dollars": 1.0})
    await gov.append_ledger([entry(dollars=0.85)])
    (alert,) = await alerts_of(gov)
    # An admin raised the budget meanwhile; the old alert's grant must not lower it.
    await gov.upsert_run("r1", {"budget_dollars": 10.0})
    approved = await manager.resolve(alert.id, "approved", "telegram:1 (@alice)")
    await gov.settle(approved)
    assert (await store.run(store.get_run, "r1")).budget_dollars == 15.0


async def test_denying_one_alert_retires_the_others(gov, manager):
    await gov.upsert_run("r1", {"budget_tokens": 100})
    await gov.append_ledger([entry(tokens=85)])
    await gov.append_ledger([entry(tokens=20)])
    first, second = sorted(await alerts_of(gov), key=lambda a: a.created_at)
    denied = await manager.resolve(second.id, "denied", "telegram:1 (@alice)")
    await gov.settle(denied)
    assert (await manager.get(first.id)).status == "cancelled"
    run = await gov.store.run(gov.store.get_run, "r1")
    assert (run.status, run.budget_tokens) == ("halted", 100)


async def test_a_grant_acts_only_from_the_bots_own_record(gov, manager, store):
    """An approval of kind budget.grant that the bot did not record grants nothing,
    whatever its payload says."""
    await gov.upsert_run("r1", {"budget_dollars": 0.02})
    await gov.append_ledger([entry(dollars=0.05)])  # halted
    forged, _ = await manager.submit(
        agent="tapgate", kind=GRANT_KIND, summary="Grant?", run_id="r1",
        payload={"run_id": "r1", "grant": {"budget_dollars": 0}})
    approved = await manager.resolve(forged.id, "approved", "telegram:1 (@alice)")
    await gov.settle(approved)
    run = await store.run(store.get_run, "r1")
    assert (run.status, run.budget_dollars) == ("halted", 0.02)


async def test_an_alert_that_fails_to_post_never_fails_the_append(gov, manager, store):
    await gov.upsert_run("r1", {"budget_tokens": 100})
    real_submit = manager.submit
    failures = []

    async def broken_submit(**kwargs):
        failures.append(kwargs["kind"])
        raise RuntimeError("telegram outbox unavailable")

    manager.submit = broken_submit
    result = await gov.append_ledger([entry(tokens=90)])  # committed: succeeds
    assert result.entries and not result.halted
    assert await alerts_of(gov) == [] and failures == [GRANT_KIND]
    (owed,) = await store.run(store.undelivered_alerts)
    assert owed.key == "warn80" and owed.fields == ["budget_tokens"]
    manager.submit = real_submit
    assert await gov.deliver_alerts() == 1  # the next delivery posts it
    (alert,) = await alerts_of(gov)
    assert (await store.run(store.alert_for_approval, alert.id)).id == owed.id
    assert await gov.deliver_alerts() == 0  # once


async def test_an_alert_recorded_before_a_crash_is_posted_at_start(store, manager):
    """The intent is committed with the usage: a process that dies right after the
    append (before posting) leaves it owed, and the next start posts it."""
    gov = Governance(store, manager)
    await gov.upsert_run("r1", {"budget_loops": 2})
    # The append and the step as the dead process committed them: no delivery followed.
    await store.run(store.append_ledger, [entry(tokens=1)], None, None, due_alerts)
    await store.run(store.upsert_step, StepUpsert(run_id="r1", index=0), None, None,
                    due_alerts)
    await store.run(store.upsert_step, StepUpsert(run_id="r1", index=1), None, None,
                    due_alerts)
    assert [a.key for a in await store.run(store.undelivered_alerts)] == ["warn80"]
    restarted = Governance(store, manager)
    await restarted.recover()
    (alert,) = await alerts_of(restarted)
    assert "80%" in alert.summary and alert.payload["raise"] == ["budget_loops"]


async def test_agents_may_tighten_budgets_never_widen(store, manager):
    gov = Governance(store, manager, Budgets(budget_dollars=5.0, budget_loops=10))
    run = await gov.upsert_run("a1", {"budget_dollars": 1.0}, admin=False, uid=1001)
    assert (run.budget_dollars, run.budget_loops, run.owner_uid) == (1.0, 10, 1001)
    for looser in ({"budget_dollars": 6.0}, {"budget_loops": 0}):
        with pytest.raises(Forbidden, match="looser"):
            await gov.upsert_run("a2", looser, admin=False, uid=1001)
    # An existing run: a rename keeps the budgets; a change of budget or policy is refused.
    run = await gov.upsert_run("a1", {"name": "renamed", "metadata": {"team": "x"}},
                               admin=False, uid=1001)
    assert (run.name, run.budget_dollars) == ("renamed", 1.0)
    with pytest.raises(Forbidden, match="budget_dollars"):
        await gov.upsert_run("a1", {"budget_dollars": 100.0}, admin=False, uid=1001)
    with pytest.raises(Forbidden, match="policy"):
        await gov.upsert_run("a1", {"policy_ref": "lax"}, admin=False, uid=1001)
    with pytest.raises(Forbidden, match="admin"):
        await gov.cancel_run("a1", admin=False, uid=2002)
    run = await gov.upsert_run("a1", {"budget_dollars": 100.0})  # an admin may
    assert run.budget_dollars == 100.0
    assert (await gov.cancel_run("a1", admin=False, uid=1001)).halt_reason == "cancelled"


async def test_usage_caps_refuse_what_would_overflow(gov, store):
    await gov.upsert_run("r1", {})
    big = [entry(tokens=0, dollars=1e6) for _ in range(999)]
    await gov.append_ledger(big)  # $999M: under the $1B per run cap
    with pytest.raises(LimitExceeded) as info:
        await gov.append_ledger([entry(tokens=0, dollars=1e6) for _ in range(2)])
    assert info.value.field == "dollars" and "cap" in str(info.value)
    run = await store.run(store.get_run, "r1")
    assert run.usage_dollars == 999e6  # nothing of the refused list was written
    assert run.usage_dollars < MAX_RUN_DOLLARS
    with pytest.raises(LimitExceeded) as info:
        await gov.append_ledger([entry(tokens=10**12) for _ in range(1001)])
    assert info.value.field == "prompt_tokens"
    summary = await store.run(store.summarize_ledger, "model")
    assert summary.total.dollars == 999e6 and summary.total.calls == 999


async def test_deciding_one_alert_edits_the_others_to_retired(fake, service):
    from tests.test_telegram import ALICE, CHAT_A, edited_to, posted

    gov = service.governance
    await gov.upsert_run("r1", {"budget_tokens": 100})
    await gov.append_ledger([entry(tokens=85)])
    await gov.append_ledger([entry(tokens=20)])
    warn, halted = sorted(await alerts_of(gov), key=lambda a: a.created_at)
    warn_msg = await posted(fake, CHAT_A, warn.id)
    halted_msg = await posted(fake, CHAT_A, halted.id)
    assert "Budget alert" in halted_msg.text
    fake.tap(CHAT_A, halted_msg.message_id, ALICE, button_text="➕ Grant +50% budget")
    await edited_to(fake, CHAT_A, halted_msg.message_id, "Approved by @alice")
    await edited_to(fake, CHAT_A, warn_msg.message_id, "retired")
    await gov.drain()
    run = await service.store.run(service.store.get_run, "r1")
    assert (run.status, run.budget_tokens) == ("running", 150)
