"""Budgets, policies, tool-call gating and budget grants (both backends)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.approvals import ApprovalManager
from bot.governance import (
    GRANT_KIND,
    Governance,
    after_usage,
    before_step,
    effective_budgets,
    grant_budgets,
    needs_approval,
)
from storage.errors import BudgetExceeded, Forbidden, RunNotRunning
from storage.records import (
    ApprovalRule,
    Budgets,
    NewLedgerEntry,
    NewToolCall,
    Policy,
    PolicyUpsert,
    Run,
    StepUpsert,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def run_with(**fields) -> Run:
    base = dict(id="r", name="n", status="running", usage_prompt_tokens=0,
                usage_completion_tokens=0, usage_dollars=0.0, usage_loops=0, metadata={},
                created_at=T0, updated_at=T0)
    return Run(**{**base, **fields})


def policy_with(**fields) -> Policy:
    return Policy(**{"name": "p", "created_at": T0, "updated_at": T0, **fields})


# --- pure rules ---------------------------------------------------------------------------


def test_precedence_inline_then_policy_then_defaults_field_by_field():
    policy = policy_with(budget_tokens=500, budget_dollars=2.0)
    defaults = Budgets(budget_tokens=1, budget_dollars=1.0, budget_loops=9, budget_seconds=60)
    got = effective_budgets({"budget_tokens": 100, "budget_dollars": None}, policy, defaults)
    assert got == Budgets(budget_tokens=100, budget_dollars=2.0, budget_loops=9,
                          budget_seconds=60)
    assert effective_budgets({}, None, defaults) == defaults
    # An inline 0 is given: unlimited, even when the policy and the defaults set one.
    assert effective_budgets({"budget_tokens": 0}, policy, defaults).budget_tokens == 0


def test_before_step_checks_time_first_then_loops_plus_one():
    run = run_with(budget_loops=3, usage_loops=2, budget_seconds=10)
    assert before_step(run, T0 + timedelta(seconds=5)) is None
    assert before_step(run.model_copy(update={"usage_loops": 3}), T0) == "loop_budget_exceeded"
    assert before_step(run.model_copy(update={"usage_loops": 3}),
                       T0 + timedelta(seconds=10)) == "time_budget_exceeded"


@pytest.mark.parametrize("fields,reason", [
    ({"budget_tokens": 100, "usage_prompt_tokens": 60, "usage_completion_tokens": 40},
     "token_budget_exceeded"),
    ({"budget_dollars": 1.5, "usage_dollars": 1.5}, "dollar_budget_exceeded"),
    ({"budget_tokens": 100, "usage_prompt_tokens": 99}, None),
    ({"budget_dollars": 1.5, "usage_dollars": 1.4999}, None),
    ({"budget_tokens": 0, "usage_prompt_tokens": 10**9}, None),
])
def test_after_usage_uses_greater_or_equal(fields, reason):
    assert after_usage(run_with(**fields), T0) == reason


def test_after_usage_time_first():
    run = run_with(budget_seconds=5, budget_tokens=1, usage_prompt_tokens=5)
    assert after_usage(run, T0 + timedelta(seconds=5)) == "time_budget_exceeded"


def test_rules_exact_tool_glob_and_default_safe():
    policy = policy_with(approval_rules=[ApprovalRule(tool="deploy"),
                                         ApprovalRule(side_effect="fs.delete*")])
    assert needs_approval(policy, "deploy", "")
    assert not needs_approval(policy, "deploy2", "")
    assert needs_approval(policy, "rm", "fs.delete.recursive")
    assert not needs_approval(policy, "cat", "fs.read")
    safe = policy_with(default_safe=True)
    assert needs_approval(safe, "anything", "net.post")
    assert not needs_approval(safe, "anything", "")
    assert not needs_approval(None, "deploy", "fs.delete")


def test_grant_raises_by_half_and_past_usage():
    run = run_with(budget_dollars=2.0, usage_dollars=5.0, budget_tokens=100)
    grant = grant_budgets(run, ["budget_dollars"], T0)
    assert grant.budget_dollars > 5.0 and grant.budget_tokens == 100
    assert grant_budgets(run_with(budget_tokens=100), ["budget_tokens"], T0).budget_tokens == 150


# --- against the store --------------------------------------------------------------------


@pytest.fixture
def manager(store):
    return ApprovalManager(store, chat_ids=[])


@pytest.fixture
def gov(store, manager):
    return Governance(store, manager, Budgets(budget_loops=50))


def entry(run_id="r1", tokens=10, dollars=0.01, **kw) -> NewLedgerEntry:
    return NewLedgerEntry(run_id=run_id, provider="openai", model="gpt-4o",
                          prompt_tokens=tokens, dollars=dollars, **kw)


async def grants(manager, run_id, gov=None):
    if gov is not None:
        await gov.drain()  # alerts are posted by a task after the append commits
    return [a for a in await manager.store.run(manager.store.list_approvals, "pending")
            if a.kind == GRANT_KIND and a.run_id == run_id]


@pytest.mark.parametrize("budget,entries,reason", [
    ({"budget_tokens": 100}, [40, 59], None),
    ({"budget_tokens": 100}, [40, 60], "token_budget_exceeded"),
    ({"budget_dollars": 0.03}, [1, 1, 1], "dollar_budget_exceeded"),
])
async def test_ledger_budget_halts_at_exact_boundary(gov, manager, budget, entries, reason):
    await gov.upsert_run("r1", budget)
    for tokens in entries:
        await gov.append_ledger([entry(tokens=tokens, dollars=0.01)])
    run = await gov.store.run(gov.store.get_run, "r1")
    assert run.halt_reason == reason
    assert run.status == ("halted" if reason else "running")
    if reason:
        with pytest.raises(BudgetExceeded) as info:
            await gov.append_ledger([entry()])
        assert info.value.reason == reason
        with pytest.raises(BudgetExceeded):
            await gov.upsert_step(StepUpsert(run_id="r1", index=99))
        with pytest.raises(BudgetExceeded):
            await gov.append_tool_call(NewToolCall(run_id="r1", tool="ls"))
        assert len(await gov.store.run(gov.store.ledger_for_run, "r1")) == len(entries)


async def test_a_list_crossing_the_budget_is_recorded_whole_then_halts(gov):
    await gov.upsert_run("r1", {"budget_tokens": 100})
    result = await gov.append_ledger([entry(tokens=80), entry(tokens=80), entry(tokens=80)])
    assert len(result.entries) == 3 and result.halted[0].halt_reason == "token_budget_exceeded"
    assert (await gov.store.run(gov.store.totals, "r1")).prompt_tokens == 240


async def test_loop_budget_halts_before_the_step(gov):
    await gov.upsert_run("r1", {"budget_loops": 2})
    await gov.upsert_step(StepUpsert(run_id="r1", index=0))
    await gov.upsert_step(StepUpsert(run_id="r1", index=1))
    await gov.upsert_step(StepUpsert(run_id="r1", index=1, status="done"))  # update: no loop
    with pytest.raises(BudgetExceeded) as info:
        await gov.upsert_step(StepUpsert(run_id="r1", index=2))
    assert info.value.reason == "loop_budget_exceeded"
    assert len(await gov.store.run(gov.store.list_steps, "r1")) == 2


async def test_time_budget(store, manager):
    clock = {"now": T0}
    store.clock = lambda: clock["now"]
    gov = Governance(store, manager)
    await gov.upsert_run("r1", {"budget_seconds": 60})
    await gov.upsert_step(StepUpsert(run_id="r1", index=0))
    clock["now"] = T0 + timedelta(seconds=60)
    with pytest.raises(BudgetExceeded) as info:
        await gov.upsert_step(StepUpsert(run_id="r1", index=1))
    assert info.value.reason == "time_budget_exceeded"


async def test_precedence_through_policy_ref(gov):
    await gov.store.run(gov.store.upsert_policy,
                        PolicyUpsert(name="tight", budget_tokens=10, budget_dollars=1.0))
    run = await gov.upsert_run("r1", {"policy_ref": "tight", "budget_dollars": 5.0})
    assert (run.budget_tokens, run.budget_dollars, run.budget_loops) == (10, 5.0, 50)


async def test_warning_at_80_percent_sent_once(gov, manager):
    await gov.upsert_run("r1", {"budget_tokens": 100})
    await gov.append_ledger([entry(tokens=50)])
    assert await grants(manager, "r1", gov) == []
    await gov.append_ledger([entry(tokens=30)])
    await gov.append_ledger([entry(tokens=5)])
    await gov.append_ledger([entry(tokens=5)])
    alerts = await grants(manager, "r1", gov)
    assert len(alerts) == 1
    assert "80%" in alerts[0].summary and alerts[0].payload["raise"] == ["budget_tokens"]
    assert alerts[0].agent == "tapgate" and alerts[0].submitter_uid is None
    approved = await manager.resolve(alerts[0].id, "approved", "telegram:1 (@alice)")
    await gov.settle(approved)
    assert (await gov.store.run(gov.store.get_run, "r1")).budget_tokens == 150


async def test_halt_alert_grant_resumes_the_run_once(gov, manager):
    await gov.upsert_run("r1", {"budget_dollars": 0.02})
    await gov.append_ledger([entry(dollars=0.05)])
    alerts = [a for a in await grants(manager, "r1", gov) if "halted" in a.summary]
    assert len(alerts) == 1
    approved = await manager.resolve(alerts[0].id, "approved", "telegram:1 (@alice)")
    await gov.settle(approved)  # the listener's task does the same; settling twice is safe
    await gov.settle(approved)
    run = await gov.store.run(gov.store.get_run, "r1")
    assert run.status == "running" and run.budget_dollars > 0.05
    await gov.append_ledger([entry(dollars=0.001)])  # accepted again


async def test_cancel_run_withdraws_its_pending_approvals(gov, manager):
    await gov.store.run(gov.store.upsert_policy,
                        PolicyUpsert(name="p", approval_rules=[ApprovalRule(tool="deploy")]))
    await gov.upsert_run("r1", {"policy_ref": "p"})
    _, approval = await gov.append_tool_call(NewToolCall(run_id="r1", tool="deploy"))
    run = await gov.cancel_run("r1")
    assert run.halt_reason == "cancelled"
    assert (await manager.get(approval.id)).status == "cancelled"
    with pytest.raises(RunNotRunning):
        await gov.cancel_run("r1")
    with pytest.raises(BudgetExceeded):
        await gov.append_ledger([entry()])


async def test_tool_calls_allowlist_rules_and_status(gov, manager):
    await gov.store.run(gov.store.upsert_policy, PolicyUpsert(
        name="p", tool_allowlist=["ls", "rm", "deploy"],
        approval_rules=[ApprovalRule(tool="deploy"), ApprovalRule(side_effect="fs.delete*")]))
    await gov.upsert_run("r1", {"policy_ref": "p"})
    with pytest.raises(Forbidden, match="'curl'.*'p'"):
        await gov.append_tool_call(NewToolCall(run_id="r1", tool="curl"))
    call, approval = await gov.append_tool_call(NewToolCall(run_id="r1", tool="ls"))
    assert approval is None and call.status == "allowed"
    call, approval = await gov.append_tool_call(
        NewToolCall(run_id="r1", tool="rm", side_effect="fs.delete", arguments={"path": "/x"}))
    assert approval.tool_call_id == call.id and approval.run_id == "r1"
    assert call.status == "pending_approval" and call.approval_id == approval.id
    denied = await manager.resolve(approval.id, "denied", "cli", "no")
    await gov.settle(denied)
    calls = {c.tool: c for c in await gov.store.run(gov.store.list_tool_calls, "r1")}
    assert calls["rm"].status == "denied" and calls["curl"].status == "forbidden"


async def test_a_restart_keeps_usage_a_checkpoint_is_no_reset(store, manager):
    """Usage is the ledger's and the steps' truth: a new start (recover) forgets nothing."""
    from storage.records import NewCheckpoint

    gov = Governance(store, manager, Budgets(budget_tokens=1000))
    await gov.upsert_run("r1", {})
    await gov.append_ledger([entry(tokens=10)])
    await gov.upsert_step(StepUpsert(run_id="r1", index=0))
    await gov.store.run(gov.store.save_checkpoint, NewCheckpoint(run_id="r1", payload={"k": 1}))
    await gov.append_ledger([entry(tokens=90)])
    await gov.upsert_step(StepUpsert(run_id="r1", index=1))
    restarted = Governance(store, manager, Budgets(budget_tokens=1000))
    await restarted.recover()
    run = await gov.store.run(gov.store.get_run, "r1")
    assert (run.usage_prompt_tokens, run.usage_loops) == (100, 2)
    assert (await gov.store.run(gov.store.latest_checkpoint, "r1")).payload == {"k": 1}


async def test_a_decision_settled_before_the_link_is_not_undone(gov, manager, store):
    """The human may decide before append_tool_call links the approval to the call."""
    await store.run(store.upsert_policy,
                    PolicyUpsert(name="p", approval_rules=[ApprovalRule(tool="deploy")]))
    await gov.upsert_run("r1", {"policy_ref": "p"})
    decided = []

    async def decide_at_once(approval, created):
        if created and approval.tool_call_id:
            final = await manager.resolve(approval.id, "approved", "cli")
            await gov.settle(final)
            decided.append(final)

    manager.subscribe(lambda a, c: asyncio.get_running_loop().create_task(decide_at_once(a, c)))
    original_submit = manager.submit

    async def submit_then_decide(**kwargs):
        approval, created = await original_submit(**kwargs)
        while not decided:
            await asyncio.sleep(0)
        return approval, created

    manager.submit = submit_then_decide
    call, approval = await gov.append_tool_call(NewToolCall(run_id="r1", tool="deploy"))
    assert call.status == "approved" and call.approval_id == approval.id
