"""The Store's contract, run on every backend (the ``store`` fixture: SQLite and PostgreSQL).

Time is always injected (``now=`` or a Store built with ``clock=``): nothing here
sleeps or depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.base import translated_errors
from storage.clock import to_text
from storage.db import is_postgres
from storage.errors import (
    AlreadyFinal,
    BudgetExceeded,
    Conflict,
    InvalidArgument,
    NotFound,
    RunNotRunning,
)
from storage.models import (
    ApprovalMessageRow,
    ApprovalRow,
    CheckpointRow,
    LedgerDailyRow,
    LedgerRow,
    RunRow,
    StepRow,
    ToolCallRow,
)
from storage.records import (
    ApprovalRule,
    Budgets,
    NewApproval,
    NewCheckpoint,
    NewLedgerEntry,
    NewToolCall,
    PolicyUpsert,
    RunUpsert,
    StepUpsert,
    from_nano,
    to_nano,
)
from storage.store import Store

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY0 = datetime(2026, 3, 10, tzinfo=UTC)  # a midnight
S = timedelta(seconds=1)
US = timedelta(microseconds=1)


# --- helpers ------------------------------------------------------------------------------


def add_run(store: Store, run_id: str = "r1", now: datetime = T0, **fields):
    return store.upsert_run(RunUpsert(id=run_id, **fields), now=now)


def entry(run_id: str = "r1", **fields) -> NewLedgerEntry:
    values = {"provider": "openai", "model": "gpt-4o", "prompt_tokens": 10,
              "completion_tokens": 5, "dollars": 0.25, "created_at": T0}
    values.update(fields)
    return NewLedgerEntry(run_id=run_id, **values)


def new_approval(**fields) -> NewApproval:
    values = {"agent": "builder", "kind": "shell", "summary": "rm -rf build/",
              "payload": {"cmd": "rm -rf build/"}, "ttl_seconds": 60}
    values.update(fields)
    return NewApproval(**values)


def raw(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    """Run raw SQL (``?`` placeholders) on the store's database; return all rows."""
    store.db.connect(reuse_if_open=True)
    cursor = store.db.execute_sql(sql.replace("?", store.db.param), params)
    return list(cursor.fetchall()) if cursor.description else []


def count(store: Store, table: str) -> int:
    return raw(store, f"SELECT COUNT(*) FROM {table}")[0][0]


def wipe(store: Store) -> None:
    """Empty every table that hangs off runs (children first)."""
    store.db.connect(reuse_if_open=True)
    with store.db.atomic():
        for model in (ApprovalMessageRow, ApprovalRow, ToolCallRow, StepRow, LedgerRow,
                      LedgerDailyRow, CheckpointRow, RunRow):
            model.delete().execute()


def reference_summary(store: Store, by: str, since: datetime | None, until: datetime | None):
    """A plain GROUP BY over the raw ledger rows joined with their run.

    Returns ``(groups, unpriced)`` where groups are ``[(key, calls, prompt, completion,
    nano)]`` ordered by nano-dollars descending then key, computed without the
    per-day aggregates the Store answers from.
    """
    params: list = []
    if by in ("provider", "model"):
        key = f"l.{by}"
    elif by == "day":
        key = "substr(l.created_at, 1, 10)"
    elif by == "name":
        key = "r.name"
    else:
        meta_key = by.removeprefix("metadata.")
        if is_postgres(store.db):
            key = "COALESCE(CAST(r.metadata AS json) ->> ?, '(none)')"
            params.append(meta_key)
        else:
            key = "COALESCE(json_extract(r.metadata, ?), '(none)')"
            params.append(f'$."{meta_key}"')
    where = []
    if since is not None:
        where.append("l.created_at >= ?")
        params.append(to_text(since))
    if until is not None:
        where.append("l.created_at < ?")
        params.append(to_text(until))
    sql = (f"SELECT {key} AS k, COUNT(*), SUM(l.prompt_tokens), SUM(l.completion_tokens), "
           "SUM(l.dollars_nano), SUM(CASE WHEN l.priced THEN 0 ELSE 1 END) "
           "FROM ledger_entry l JOIN run r ON r.id = l.run_id "
           + (f"WHERE {' AND '.join(where)} " if where else "")
           + "GROUP BY 1")
    rows = [(k, *(int(v) for v in rest)) for k, *rest in raw(store, sql, tuple(params))]
    rows.sort(key=lambda r: (-r[4], r[0]))
    return [r[:5] for r in rows], sum(r[5] for r in rows)


def assert_matches_reference(store: Store, by: str, since, until) -> None:
    summary = store.summarize_ledger(by, since=since, until=until)
    groups, unpriced = reference_summary(store, by, since, until)
    got = [(g.key, g.calls, g.prompt_tokens, g.completion_tokens, g.dollars)
           for g in summary.groups]
    want = [(k, c, p, cp, from_nano(n)) for k, c, p, cp, n in groups]
    assert got == want, (by, since, until)
    assert summary.total.key == "total"
    assert summary.total.calls == sum(g[1] for g in groups)
    assert summary.total.prompt_tokens == sum(g[2] for g in groups)
    assert summary.total.completion_tokens == sum(g[3] for g in groups)
    assert summary.total.dollars == from_nano(sum(g[4] for g in groups))
    assert summary.unpriced_calls == unpriced


def keys(summary) -> list[str]:
    return [g.key for g in summary.groups]


def run_threads(n: int, target, timeout: float = 60) -> None:
    """Start ``n`` threads running ``target(i, barrier)`` together; join them all."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i, barrier)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


# --- runs ---------------------------------------------------------------------------------


def test_upsert_run_inserts(store):
    run = add_run(store, "r1", name="nightly", policy_ref="strict", budget_tokens=1000,
                  budget_dollars=2.5, budget_loops=10, budget_seconds=600,
                  metadata={"team": "core", "env": "prod"})
    assert run.id == "r1"
    assert run.name == "nightly"
    assert run.status == "running"
    assert run.halt_reason is None
    assert run.policy_ref == "strict"
    assert (run.budget_tokens, run.budget_dollars, run.budget_loops, run.budget_seconds) == (
        1000, 2.5, 10, 600)
    assert (run.usage_prompt_tokens, run.usage_completion_tokens, run.usage_dollars,
            run.usage_loops) == (0, 0, 0.0, 0)
    assert run.metadata == {"team": "core", "env": "prod"}
    assert run.created_at == run.updated_at == T0
    assert store.get_run("r1") == run


def test_upsert_run_again_updates_but_keeps_created_at_policy_status_usage(store):
    add_run(store, "r1", name="first", policy_ref="strict", budget_tokens=1000,
            metadata={"team": "core"})
    store.append_ledger([entry("r1", prompt_tokens=7, completion_tokens=3, dollars=0.5)])
    store.upsert_step(StepUpsert(run_id="r1", index=0), now=T0)
    later = T0 + timedelta(hours=1)
    run = add_run(store, "r1", now=later, name="second", policy_ref="lenient",
                  budget_tokens=5, budget_dollars=1.0, budget_loops=3, budget_seconds=9,
                  metadata={"env": "dev"})
    assert run.created_at == T0
    assert run.updated_at == later
    assert run.policy_ref == "strict"
    assert run.name == "second"
    assert (run.budget_tokens, run.budget_dollars, run.budget_loops, run.budget_seconds) == (
        5, 1.0, 3, 9)
    assert run.metadata == {"env": "dev"}
    assert run.status == "running"
    assert (run.usage_prompt_tokens, run.usage_completion_tokens, run.usage_dollars,
            run.usage_loops) == (7, 3, 0.5, 1)
    assert store.get_run("r1") == run


def test_empty_metadata_is_stored_as_empty_object(store):
    run = add_run(store, "r1")
    assert run.metadata == {}
    assert raw(store, "SELECT metadata FROM run WHERE id = ?", ("r1",)) == [("{}",)]
    add_run(store, "r2", metadata={"a": "b"})
    add_run(store, "r2", metadata={})
    assert raw(store, "SELECT metadata FROM run WHERE id = ?", ("r2",)) == [("{}",)]
    assert store.get_run("r2").metadata == {}


def test_halted_run_stays_halted_when_its_id_is_upserted_again(store):
    add_run(store, "r1")
    store.cancel_run("r1", now=T0)
    add_run(store, "r2", budget_loops=1)
    store.upsert_step(StepUpsert(run_id="r2", index=0), now=T0)
    with pytest.raises(BudgetExceeded):
        store.upsert_step(StepUpsert(run_id="r2", index=1), now=T0,
                          before_step=lambda run, now: "loop_budget_exceeded")
    for run_id, reason in (("r1", "cancelled"), ("r2", "loop_budget_exceeded")):
        run = add_run(store, run_id, now=T0 + S, name="again", budget_loops=100)
        assert (run.status, run.halt_reason) == ("halted", reason)
        assert run.name == "again"


def test_get_unknown_run_is_not_found(store):
    with pytest.raises(NotFound):
        store.get_run("nope")


def test_list_runs_newest_first_and_by_status(store):
    add_run(store, "b", now=T0)
    add_run(store, "c", now=T0 + 2 * S)
    add_run(store, "a", now=T0 + S)
    add_run(store, "d", now=T0 + 3 * S)
    assert [r.id for r in store.list_runs()] == ["d", "c", "a", "b"]
    assert [r.id for r in store.list_runs(limit=2)] == ["d", "c"]
    # Upserting again changes nothing about the order (created_at is kept).
    add_run(store, "b", now=T0 + 10 * S)
    assert [r.id for r in store.list_runs()] == ["d", "c", "a", "b"]
    store.cancel_run("a", now=T0 + 4 * S)
    store.cancel_run("d", now=T0 + 5 * S)
    assert [r.id for r in store.list_runs(status="halted")] == ["d", "a"]
    assert [r.id for r in store.list_runs(status="running")] == ["c", "b"]
    assert [r.id for r in store.list_runs_by_status("halted")] == ["d", "a"]
    assert store.list_runs(status="completed") == []


def test_list_runs_empty(store):
    assert store.list_runs() == []


def test_cancel_run_halts_and_cancels_its_pending_approvals(store):
    add_run(store, "r1")
    add_run(store, "r2")
    a1, _ = store.create_approval(new_approval(run_id="r1"), now=T0)
    a2, _ = store.create_approval(new_approval(run_id="r1", summary="two"), now=T0 + S)
    done, _ = store.create_approval(new_approval(run_id="r1", summary="done"), now=T0)
    store.resolve_approval(done.id, "approved", "alice", now=T0 + S)
    other, _ = store.create_approval(new_approval(run_id="r2"), now=T0)
    loose, _ = store.create_approval(new_approval(), now=T0)

    later = T0 + 5 * S
    run, cancelled = store.cancel_run("r1", decided_by="cli", now=later)
    assert (run.status, run.halt_reason) == ("halted", "cancelled")
    assert run.updated_at == later
    assert sorted(a.id for a in cancelled) == sorted([a1.id, a2.id])
    for a in cancelled:
        assert (a.status, a.decided_by, a.decided_at) == ("cancelled", "cli", later)
        assert store.get_approval(a.id) == a
    assert store.get_approval(done.id).status == "approved"
    assert store.get_approval(done.id).decided_by == "alice"
    assert store.get_approval(other.id).status == "pending"
    assert store.get_approval(loose.id).status == "pending"
    assert store.get_run("r1") == run

    with pytest.raises(RunNotRunning):
        store.cancel_run("r1", now=later)
    with pytest.raises(NotFound):
        store.cancel_run("nope", now=later)


def test_cancel_run_without_approvals(store):
    add_run(store, "r1")
    run, cancelled = store.cancel_run("r1", now=T0)
    assert run.status == "halted"
    assert cancelled == []


def test_resume_run(store):
    add_run(store, "r1", budget_loops=1)
    store.upsert_step(StepUpsert(run_id="r1", index=0), now=T0)
    with pytest.raises(BudgetExceeded):
        store.upsert_step(StepUpsert(run_id="r1", index=1), now=T0,
                          before_step=lambda run, now: "loop_budget_exceeded")
    later = T0 + timedelta(minutes=1)
    run = store.resume_run("r1", Budgets(budget_loops=5, budget_tokens=7), now=later)
    assert (run.status, run.halt_reason) == ("running", None)
    assert (run.budget_loops, run.budget_tokens) == (5, 7)
    assert run.alerted == []
    assert run.updated_at == later
    assert run.usage_loops == 1
    assert store.upsert_step(StepUpsert(run_id="r1", index=1), now=later).index == 1

    store.cancel_run("r1", now=later)
    with pytest.raises(RunNotRunning):
        store.resume_run("r1", Budgets(budget_loops=50), now=later)
    assert store.get_run("r1").halt_reason == "cancelled"
    with pytest.raises(NotFound):
        store.resume_run("nope", Budgets(), now=later)


# --- steps --------------------------------------------------------------------------------


def test_upsert_step_inserts_then_updates(store):
    add_run(store, "r1")
    step = store.upsert_step(StepUpsert(run_id="r1", index=0), now=T0)
    assert (step.run_id, step.index, step.status) == ("r1", 0, "running")
    assert step.started_at == T0
    assert step.ended_at is None
    assert store.get_run("r1").usage_loops == 1

    ended = T0 + 30 * S
    step = store.upsert_step(StepUpsert(run_id="r1", index=0, status="done", prompt_tokens=5,
                                        completion_tokens=6, dollars=0.125, ended_at=ended),
                             now=ended)
    assert (step.status, step.prompt_tokens, step.completion_tokens, step.dollars) == (
        "done", 5, 6, 0.125)
    assert step.started_at == T0
    assert step.ended_at == ended
    assert store.get_run("r1").usage_loops == 1  # an update is not a new loop

    store.upsert_step(StepUpsert(run_id="r1", index=1, started_at=T0 + 40 * S), now=T0 + 41 * S)
    assert store.get_run("r1").usage_loops == 2
    assert store.list_steps("r1")[1].started_at == T0 + 40 * S


def test_list_steps_in_index_order(store):
    add_run(store, "r1")
    add_run(store, "r2")
    for index in (2, 0, 3, 1):
        store.upsert_step(StepUpsert(run_id="r1", index=index), now=T0)
    store.upsert_step(StepUpsert(run_id="r2", index=9), now=T0)
    assert [s.index for s in store.list_steps("r1")] == [0, 1, 2, 3]
    assert [s.index for s in store.list_steps("r2")] == [9]
    assert store.get_run("r1").usage_loops == 4
    with pytest.raises(NotFound):
        store.list_steps("nope")


def test_upsert_step_unknown_run(store):
    with pytest.raises(NotFound):
        store.upsert_step(StepUpsert(run_id="nope", index=0), now=T0)


def test_before_step_guard_halts_the_run(store):
    add_run(store, "r1", budget_loops=2)
    seen = []

    def guard(run, now):
        seen.append((run.usage_loops, now))
        return "loop_budget_exceeded" if run.usage_loops + 1 > run.budget_loops else None

    store.upsert_step(StepUpsert(run_id="r1", index=0), before_step=guard, now=T0)
    store.upsert_step(StepUpsert(run_id="r1", index=1), before_step=guard, now=T0 + S)
    # Updating an existing step is not a new loop: the guard is not asked.
    store.upsert_step(StepUpsert(run_id="r1", index=1, status="done"), before_step=guard,
                      now=T0 + 2 * S)
    assert seen == [(0, T0), (1, T0 + S)]
    with pytest.raises(BudgetExceeded) as info:
        store.upsert_step(StepUpsert(run_id="r1", index=2), before_step=guard, now=T0 + 3 * S)
    assert info.value.reason == "loop_budget_exceeded"
    assert info.value.run.status == "halted"
    # The halt was committed even though the call raised.
    run = store.get_run("r1")
    assert (run.status, run.halt_reason, run.usage_loops) == (
        "halted", "loop_budget_exceeded", 2)
    assert run.updated_at == T0 + 3 * S
    assert [s.index for s in store.list_steps("r1")] == [0, 1]
    # Later steps (new or updates) are refused, whatever the guard says.
    for index in (3, 1):
        with pytest.raises(BudgetExceeded) as info:
            store.upsert_step(StepUpsert(run_id="r1", index=index),
                              before_step=lambda run, now: None, now=T0 + 4 * S)
        assert info.value.reason == "loop_budget_exceeded"
    assert store.list_steps("r1")[1].status == "done"


# --- ledger -------------------------------------------------------------------------------


def test_append_ledger_one_and_many(store):
    add_run(store, "r1")
    first = store.append_ledger([entry("r1", prompt_tokens=100, completion_tokens=20,
                                       dollars=0.5, response_id="resp-1", step_index=2)],
                                now=T0 + S)
    assert len(first.entries) == 1
    e = first.entries[0]
    assert (e.run_id, e.step_index, e.provider, e.model) == ("r1", 2, "openai", "gpt-4o")
    assert (e.prompt_tokens, e.completion_tokens, e.dollars, e.priced) == (100, 20, 0.5, True)
    assert e.response_id == "resp-1"
    assert e.created_at == T0
    assert first.halted == []
    assert first.runs["r1"].usage_prompt_tokens == 100

    many = store.append_ledger([entry("r1", prompt_tokens=i, completion_tokens=1,
                                      dollars=0.001 * i, created_at=None) for i in range(1, 4)],
                               now=T0 + 2 * S)
    assert [x.prompt_tokens for x in many.entries] == [1, 2, 3]
    assert all(x.created_at == T0 + 2 * S for x in many.entries)  # default: now
    ids = [x.id for x in first.entries + many.entries]
    assert ids == sorted(ids) and len(set(ids)) == 4

    run = store.get_run("r1")
    assert (run.usage_prompt_tokens, run.usage_completion_tokens) == (106, 23)
    assert run.usage_dollars == from_nano(to_nano(0.5) + sum(to_nano(0.001 * i)
                                                             for i in range(1, 4)))
    assert run.updated_at == T0 + 2 * S
    assert many.runs["r1"] == run
    assert store.ledger_for_run("r1") == first.entries + many.entries

    totals = store.totals("r1")
    assert (totals.run_id, totals.calls, totals.prompt_tokens, totals.completion_tokens) == (
        "r1", 4, 106, 23)
    assert totals.dollars == run.usage_dollars
    assert totals.unpriced_calls == 0


def test_append_empty_list_writes_nothing(store):
    result = store.append_ledger([])
    assert result.entries == [] and result.halted == [] and result.runs == {}
    assert count(store, "ledger_entry") == 0


def test_ledger_for_run_is_in_id_order_and_per_run(store):
    add_run(store, "r1")
    add_run(store, "r2")
    # Times deliberately out of order: the ledger is in append order, not time order.
    a = store.append_ledger([entry("r1", created_at=T0 + 5 * S, model="m1"),
                             entry("r2", model="m2"),
                             entry("r1", created_at=T0, model="m3")]).entries
    b = store.append_ledger([entry("r1", created_at=T0 - S, model="m4")]).entries
    assert [x.model for x in store.ledger_for_run("r1")] == ["m1", "m3", "m4"]
    assert [x.id for x in store.ledger_for_run("r1")] == [a[0].id, a[2].id, b[0].id]
    assert [x.model for x in store.ledger_for_run("r2")] == ["m2"]
    assert store.totals("r2").calls == 1


def test_totals_zero_for_empty_run_and_not_found_for_unknown(store):
    add_run(store, "r1")
    totals = store.totals("r1")
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens,
            totals.cached_tokens, totals.dollars, totals.unpriced_calls) == (0, 0, 0, 0, 0.0, 0)
    assert store.ledger_for_run("r1") == []
    with pytest.raises(NotFound):
        store.totals("nope")
    with pytest.raises(NotFound):
        store.ledger_for_run("nope")


def test_append_for_unknown_run_writes_nothing(store):
    add_run(store, "r1")
    with pytest.raises(NotFound):
        store.append_ledger([entry("nope")])
    with pytest.raises(NotFound):
        store.append_ledger([entry("r1"), entry("r1", model="x"), entry("nope")])
    with pytest.raises(NotFound):
        store.append_ledger([entry("nope"), entry("r1")])
    assert count(store, "ledger_entry") == 0
    assert count(store, "ledger_daily") == 0
    assert store.ledger_for_run("r1") == []
    run = store.get_run("r1")
    assert (run.usage_prompt_tokens, run.usage_completion_tokens, run.usage_dollars) == (0, 0, 0)
    assert store.summarize_ledger("model").total.calls == 0


def test_halted_run_refuses_the_whole_list(store):
    add_run(store, "ok")
    add_run(store, "stopped")
    store.cancel_run("stopped", now=T0)
    with pytest.raises(BudgetExceeded) as info:
        store.append_ledger([entry("ok"), entry("stopped"), entry("ok")])
    assert info.value.run.id == "stopped"
    assert info.value.reason == "cancelled"
    assert count(store, "ledger_entry") == 0
    assert count(store, "ledger_daily") == 0
    assert store.get_run("ok").usage_prompt_tokens == 0


def test_after_usage_guard_records_whole_list_then_halts(store):
    add_run(store, "r1", budget_tokens=100)
    add_run(store, "r2", budget_tokens=100)
    calls = []

    def guard(run, now):
        calls.append((run.id, run.usage_tokens, now))
        return "token_budget_exceeded" if run.usage_tokens >= run.budget_tokens else None

    ok = store.append_ledger([entry("r1", prompt_tokens=40, completion_tokens=10)],
                             after_usage=guard, now=T0)
    assert ok.halted == []
    result = store.append_ledger(
        [entry("r1", prompt_tokens=30, completion_tokens=10),
         entry("r2", prompt_tokens=1, completion_tokens=1),
         entry("r1", prompt_tokens=30, completion_tokens=10)],
        after_usage=guard, now=T0 + S)
    assert len(result.entries) == 3  # the money is spent: recorded whole
    assert [r.id for r in result.halted] == ["r1"]
    assert (result.halted[0].status, result.halted[0].halt_reason) == (
        "halted", "token_budget_exceeded")
    assert result.runs["r1"].status == "halted"
    assert result.runs["r2"].status == "running"
    assert calls[-2:] == [("r1", 130, T0 + S), ("r2", 2, T0 + S)]
    run = store.get_run("r1")
    assert (run.status, run.halt_reason, run.usage_tokens) == (
        "halted", "token_budget_exceeded", 130)
    assert store.totals("r1").calls == 3
    with pytest.raises(BudgetExceeded):
        store.append_ledger([entry("r1")], after_usage=guard, now=T0 + 2 * S)
    assert store.totals("r1").calls == 3


def test_unpriced_entries(store):
    add_run(store, "r1")
    result = store.append_ledger([
        entry("r1", dollars=None, model="mystery"),
        entry("r1", dollars=0.75, priced=False, model="guessed"),
        entry("r1", dollars=1.0, model="known"),
        entry("r1", dollars=0.0, model="free"),
    ])
    by_model = {e.model: e for e in result.entries}
    assert (by_model["mystery"].dollars, by_model["mystery"].priced) == (0.0, False)
    assert (by_model["guessed"].dollars, by_model["guessed"].priced) == (0.75, False)
    assert (by_model["known"].dollars, by_model["known"].priced) == (1.0, True)
    assert (by_model["free"].dollars, by_model["free"].priced) == (0.0, True)
    totals = store.totals("r1")
    assert (totals.calls, totals.unpriced_calls, totals.dollars) == (4, 2, 1.75)
    summary = store.summarize_ledger("model")
    assert summary.unpriced_calls == 2
    assert summary.total.dollars == 1.75
    # The window path (raw rows) counts them the same way.
    assert store.summarize_ledger("model", since=T0, until=T0 + S).unpriced_calls == 2


def test_iter_ledger_streams_every_row_in_id_order(store):
    add_run(store, "r1")
    add_run(store, "r2")
    appended = []
    for i in range(5):
        appended += store.append_ledger(
            [entry("r1" if (i + j) % 3 else "r2", prompt_tokens=i * 10 + j) for j in range(7)]
        ).entries
    streamed = list(store.iter_ledger(batch=4))
    assert streamed == appended
    assert [e.id for e in streamed] == sorted(e.id for e in appended)
    assert list(store.iter_ledger("r2", batch=3)) == [e for e in appended if e.run_id == "r2"]
    assert list(store.iter_ledger("nope")) == []


# --- summarize_ledger ------------------------------------------------------------------------


def seed_summary_data(store: Store) -> None:
    add_run(store, "r1", name="alpha", metadata={"team": "core", "env": "prod"})
    add_run(store, "r2", name="beta", metadata={"team": "ml"})
    add_run(store, "r3", name="gamma")
    d = DAY0
    store.append_ledger([
        entry("r1", provider="openai", model="gpt-4o", prompt_tokens=100, completion_tokens=10,
              dollars=1.0, created_at=d + timedelta(hours=1)),
        entry("r1", provider="openai", model="gpt-4o", prompt_tokens=200, completion_tokens=20,
              dollars=2.0, created_at=d + timedelta(days=1, hours=2)),
        entry("r2", provider="anthropic", model="claude", prompt_tokens=50,
              completion_tokens=5, dollars=3.0, created_at=d + timedelta(hours=3)),
        entry("r2", provider="openai", model="gpt-4o-mini", prompt_tokens=10,
              completion_tokens=1, dollars=0.5, created_at=d + timedelta(days=2, hours=4)),
        entry("r3", provider="google", model="gemini", prompt_tokens=1, completion_tokens=1,
              dollars=None, created_at=d + timedelta(days=2, hours=5)),
        entry("r3", provider="anthropic", model="claude", prompt_tokens=5,
              completion_tokens=5, dollars=0.5, created_at=d + timedelta(days=1, hours=6)),
    ])


@pytest.mark.parametrize(("by", "expected"), [
    ("model", [("claude", 2, 55, 10, 3.5), ("gpt-4o", 2, 300, 30, 3.0),
               ("gpt-4o-mini", 1, 10, 1, 0.5), ("gemini", 1, 1, 1, 0.0)]),
    # anthropic and openai tie at $3.50: key order breaks the tie.
    ("provider", [("anthropic", 2, 55, 10, 3.5), ("openai", 3, 310, 31, 3.5),
                  ("google", 1, 1, 1, 0.0)]),
    ("day", [("2026-03-10", 2, 150, 15, 4.0), ("2026-03-11", 2, 205, 25, 2.5),
             ("2026-03-12", 2, 11, 2, 0.5)]),
    ("name", [("beta", 2, 60, 6, 3.5), ("alpha", 2, 300, 30, 3.0),
              ("gamma", 2, 6, 6, 0.5)]),
    ("metadata.team", [("ml", 2, 60, 6, 3.5), ("core", 2, 300, 30, 3.0),
                       ("(none)", 2, 6, 6, 0.5)]),
    ("metadata.env", [("(none)", 4, 66, 12, 4.0), ("prod", 2, 300, 30, 3.0)]),
    ("metadata.absent", [("(none)", 6, 366, 42, 7.0)]),
])
def test_summarize_by_every_dimension(store, by, expected):
    seed_summary_data(store)
    summary = store.summarize_ledger(by)
    assert summary.by == by
    assert summary.since is None and summary.until is None
    assert [(g.key, g.calls, g.prompt_tokens, g.completion_tokens, g.dollars)
            for g in summary.groups] == expected
    total = summary.total
    assert (total.key, total.calls, total.prompt_tokens, total.completion_tokens,
            total.dollars) == ("total", 6, 366, 42, 7.0)
    assert summary.unpriced_calls == 1
    assert_matches_reference(store, by, None, None)


def test_summarize_default_is_by_model(store):
    seed_summary_data(store)
    assert store.summarize_ledger().by == "model"
    assert keys(store.summarize_ledger()) == ["claude", "gpt-4o", "gpt-4o-mini", "gemini"]


def test_summarize_ties_are_ordered_by_key(store):
    add_run(store, "r1")
    store.append_ledger([entry("r1", model=m, dollars=d) for m, d in (
        ("m-c", 1.0), ("m-a", 1.0), ("m-d", 2.0), ("m-b", 1.0), ("m-f", 0.0), ("m-e", 0.0))])
    assert keys(store.summarize_ledger("model")) == ["m-d", "m-a", "m-b", "m-c", "m-e", "m-f"]
    # The same order when answered from raw rows (a window inside one day).
    assert keys(store.summarize_ledger("model", since=T0, until=T0 + S)) == [
        "m-d", "m-a", "m-b", "m-c", "m-e", "m-f"]


@pytest.mark.parametrize("by", ["model", "provider", "day", "name", "metadata.team"])
def test_summarize_with_no_data(store, by):
    summary = store.summarize_ledger(by)
    assert summary.groups == []
    assert (summary.total.key, summary.total.calls, summary.total.prompt_tokens,
            summary.total.completion_tokens, summary.total.dollars) == ("total", 0, 0, 0, 0.0)
    assert summary.unpriced_calls == 0
    add_run(store, "r1")
    windowed = store.summarize_ledger(by, since=T0, until=T0 + timedelta(days=3))
    assert windowed.groups == []
    assert windowed.total.calls == 0


@pytest.mark.parametrize("by", ["team", "metadata.", "metadata.bad key", "metadata.a.b",
                                "metadata.x/y", "Model", "", "metadata", "day "])
def test_summarize_rejects_invalid_by(store, by):
    with pytest.raises(InvalidArgument):
        store.summarize_ledger(by)


def edge_rows(since: datetime, until: datetime) -> list[tuple[str, datetime]]:
    return [
        ("at-since", since),
        ("before-since", since - US),
        ("since+0.5s", since + timedelta(milliseconds=500)),
        ("since+0.123456s", since + timedelta(microseconds=123_456)),
        ("since+1s", since + S),
        ("before-until", until - US),
        ("at-until", until),
        ("after-until", until + timedelta(milliseconds=500)),
    ]


WINDOWS = {
    "same-day": (DAY0 + timedelta(hours=10), DAY0 + timedelta(hours=18)),
    "partial-both-edges": (DAY0 + timedelta(hours=10, seconds=0.25),
                           DAY0 + timedelta(days=3, hours=8, microseconds=17)),
    "since-midnight": (DAY0, DAY0 + timedelta(days=2, hours=5)),
    "until-midnight": (DAY0 + timedelta(hours=22), DAY0 + timedelta(days=2)),
    "both-midnight": (DAY0, DAY0 + timedelta(days=2)),
    "one-whole-day": (DAY0, DAY0 + timedelta(days=1)),
    "across-one-midnight": (DAY0 + timedelta(hours=23, minutes=59, seconds=59),
                            DAY0 + timedelta(days=1, seconds=1)),
}


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_summarize_window_edges(store, window):
    since, until = WINDOWS[window]
    add_run(store, "r1")
    store.append_ledger([entry("r1", model=name, created_at=at, dollars=1.0)
                         for name, at in edge_rows(since, until)])
    summary = store.summarize_ledger("model", since=since, until=until)
    assert sorted(keys(summary)) == sorted(
        ["at-since", "since+0.5s", "since+0.123456s", "since+1s", "before-until"])
    assert summary.since == since and summary.until == until
    for by in ("model", "day", "name"):
        assert_matches_reference(store, by, since, until)
    # Open-ended windows on the same rows.
    assert "before-since" not in keys(store.summarize_ledger("model", since=since))
    assert "at-since" in keys(store.summarize_ledger("model", since=since))
    assert "at-until" not in keys(store.summarize_ledger("model", until=until))
    assert "before-until" in keys(store.summarize_ledger("model", until=until))


def test_summarize_row_half_a_second_after_since(store):
    """The seed compared variable-width text and dropped these rows."""
    add_run(store, "r1")
    since = datetime(2026, 3, 10, 9, 30, 0, tzinfo=UTC)
    store.append_ledger([
        entry("r1", model="half", created_at=since + timedelta(milliseconds=500)),
        entry("r1", model="odd", created_at=since + timedelta(microseconds=123_456)),
    ])
    until = since + timedelta(minutes=1)
    assert sorted(keys(store.summarize_ledger("model", since=since, until=until))) == [
        "half", "odd"]
    assert sorted(keys(store.summarize_ledger("model", since=since))) == ["half", "odd"]


def spread_rows(store: Store) -> None:
    """Rows every ~7 h over six days across three runs, with sub-second jitter."""
    add_run(store, "r1", name="alpha", metadata={"team": "core"})
    add_run(store, "r2", name="beta", metadata={"team": "ml", "env": "prod"})
    add_run(store, "r3", name="gamma")
    rng = random.Random(7)
    entries = []
    at = DAY0 - timedelta(hours=3)
    while at < DAY0 + timedelta(days=6):
        entries.append(entry(
            rng.choice(["r1", "r2", "r3"]), provider=rng.choice(["openai", "anthropic"]),
            model=rng.choice(["m1", "m2", "m3"]), prompt_tokens=rng.randrange(1000),
            completion_tokens=rng.randrange(100),
            dollars=rng.choice([None, 0.0, 0.001, 0.5, 1.25, rng.random()]),
            created_at=at))
        at += timedelta(hours=7, microseconds=rng.randrange(1_000_000))
    # Some rows exactly at midnights, too.
    entries += [entry("r1", created_at=DAY0 + timedelta(days=d), dollars=0.5) for d in range(5)]
    store.append_ledger(entries)


SPREAD_WINDOWS = [
    (None, None),
    (DAY0 + timedelta(hours=10), DAY0 + timedelta(days=3, hours=8)),
    (DAY0 + timedelta(hours=10, microseconds=1), DAY0 + timedelta(days=4, microseconds=1)),
    (DAY0, DAY0 + timedelta(days=3)),
    (DAY0 + timedelta(days=1), DAY0 + timedelta(days=1, hours=12)),
    (DAY0 + timedelta(days=1, hours=3), DAY0 + timedelta(days=1, hours=20)),
    (DAY0 + timedelta(hours=23, minutes=59), DAY0 + timedelta(days=1, minutes=1)),
    (None, DAY0 + timedelta(days=2, hours=13)),
    (None, DAY0 + timedelta(days=2)),
    (DAY0 + timedelta(days=1, hours=5, milliseconds=500), None),
    (DAY0 + timedelta(days=1), None),
    (DAY0 - timedelta(days=30), DAY0 + timedelta(days=30)),
]


@pytest.mark.parametrize(("since", "until"), SPREAD_WINDOWS)
def test_summarize_windows_match_raw_rows(store, since, until):
    spread_rows(store)
    for by in ("provider", "model", "day", "name", "metadata.team", "metadata.env"):
        assert_matches_reference(store, by, since, until)


def test_summarize_empty_when_since_not_before_until(store):
    spread_rows(store)
    for since, until in ((T0, T0), (T0 + S, T0), (DAY0 + timedelta(days=2), DAY0)):
        summary = store.summarize_ledger("day", since=since, until=until)
        assert summary.groups == []
        assert summary.total.calls == 0
        assert summary.unpriced_calls == 0


def test_summarize_naive_datetimes_are_utc(store):
    spread_rows(store)
    since, until = DAY0 + timedelta(hours=10), DAY0 + timedelta(days=3, hours=8)
    naive = store.summarize_ledger("day", since=since.replace(tzinfo=None),
                                   until=until.replace(tzinfo=None))
    assert naive.groups == store.summarize_ledger("day", since=since, until=until).groups


# --- summarize_ledger against SQL, on random data ------------------------------------------

BASE = datetime(2026, 5, 1, tzinfo=UTC)
SPAN_US = 5 * 86_400 * 1_000_000
BYS = ["provider", "model", "day", "name", "metadata.team", "metadata.env",
       "metadata.x-y", "metadata.missing"]

names = st.sampled_from(["", "alpha", "Alpha", "beta", "b-2", "_z"])
metadata = st.dictionaries(st.sampled_from(["team", "env", "x-y"]),
                           st.sampled_from(["", "core", "Core", "ml", "ops-1", "(none)"]),
                           max_size=3)
offsets = st.one_of(
    st.integers(0, SPAN_US),
    st.integers(0, 5).map(lambda d: d * 86_400 * 1_000_000),  # exact midnights
    st.integers(0, 5 * 86_400).map(lambda s: s * 1_000_000),  # whole seconds
)
dollars = st.one_of(st.none(), st.sampled_from([0.0, 0.25, 1.5, 0.000001, 2.0]),
                    st.floats(0, 5, allow_nan=False, allow_infinity=False))
ledger_rows = st.tuples(
    st.integers(0, 9), st.sampled_from(["openai", "anthropic", "", "google"]),
    st.sampled_from(["gpt-4o", "claude", "gemini", "m-1"]), st.integers(0, 10_000),
    st.integers(0, 10_000), dollars, st.booleans(), offsets)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(runs=st.lists(st.tuples(names, metadata), min_size=1, max_size=4),
       rows=st.lists(ledger_rows, max_size=60), data=st.data())
def test_summarize_matches_sql_group_by(store, runs, rows, data):
    wipe(store)
    run_ids = [f"run-{i}" for i in range(len(runs))]
    for run_id, (name, meta) in zip(run_ids, runs, strict=True):
        add_run(store, run_id, name=name, metadata=meta)
    entries = [
        NewLedgerEntry(run_id=run_ids[r % len(run_ids)], provider=provider, model=model,
                       prompt_tokens=p, completion_tokens=c, dollars=d, priced=priced,
                       created_at=BASE + timedelta(microseconds=off))
        for r, provider, model, p, c, d, priced, off in rows
    ]
    split = data.draw(st.integers(0, len(entries)), label="split")
    for part in (entries[:split], entries[split:]):
        store.append_ledger(part)

    row_times = [e.created_at for e in entries]
    instants = st.one_of(
        st.none(),
        st.integers(-86_400 * 1_000_000, SPAN_US + 86_400 * 1_000_000).map(
            lambda us: BASE + timedelta(microseconds=us)),
        st.integers(-1, 6).map(lambda d: BASE + timedelta(days=d)),
        *([st.sampled_from(row_times)] if row_times else []),
    )
    for _ in range(2):
        since = data.draw(instants, label="since")
        until = data.draw(instants, label="until")
        for by in BYS:
            assert_matches_reference(store, by, since, until)


# --- tool calls ---------------------------------------------------------------------------


def test_tool_calls(store):
    add_run(store, "r1")
    add_run(store, "r2")
    c1 = store.append_tool_call(NewToolCall(run_id="r1", step_index=1, tool="shell",
                                            side_effect="fs.write",
                                            arguments={"cmd": "ls", "n": [1, 2]}),
                                now=T0 + 2 * S)
    assert c1.id.startswith("tc_") and len(c1.id) > 3
    assert (c1.run_id, c1.step_index, c1.tool, c1.side_effect) == ("r1", 1, "shell", "fs.write")
    assert c1.arguments == {"cmd": "ls", "n": [1, 2]}
    assert (c1.status, c1.approval_id, c1.created_at) == ("recorded", None, T0 + 2 * S)
    c2 = store.append_tool_call(NewToolCall(run_id="r1", id="b-call", step_index=0,
                                            tool="http"), now=T0 + 5 * S)
    assert c2.id == "b-call"
    assert c2.arguments == {}
    assert raw(store, "SELECT arguments FROM tool_call WHERE id = ?", ("b-call",)) == [("{}",)]
    c3 = store.append_tool_call(NewToolCall(run_id="r1", id="a-call", step_index=1,
                                            tool="shell"), now=T0 + 2 * S)
    c4 = store.append_tool_call(NewToolCall(run_id="r1", id="0-call", step_index=1,
                                            tool="shell"), now=T0 + S)
    store.append_tool_call(NewToolCall(run_id="r2", id="other", tool="x"), now=T0)
    # Order: step index, then time, then id.
    listed = store.list_tool_calls("r1")
    assert [c.id for c in listed] == ["b-call", "0-call",
                                      *sorted([c1.id, "a-call"])]
    assert store.get_tool_call(c1.id) == c1
    assert c3 in listed and c4 in listed
    assert [c.id for c in store.list_tool_calls("r2")] == ["other"]

    updated = store.set_tool_call_status(c1.id, "pending_approval", approval_id="ap1")
    assert (updated.status, updated.approval_id) == ("pending_approval", "ap1")
    updated = store.set_tool_call_status(c1.id, "approved")
    assert (updated.status, updated.approval_id) == ("approved", "ap1")
    assert store.get_tool_call(c1.id) == updated

    with pytest.raises(NotFound):
        store.get_tool_call("nope")
    with pytest.raises(NotFound):
        store.set_tool_call_status("nope", "x")
    with pytest.raises(NotFound):
        store.list_tool_calls("nope")
    with pytest.raises(NotFound):
        store.append_tool_call(NewToolCall(run_id="nope", tool="x"), now=T0)
    with pytest.raises(Conflict):
        store.append_tool_call(NewToolCall(run_id="r1", id="b-call", tool="x"), now=T0)


def test_tool_call_on_halted_run_is_refused(store):
    add_run(store, "r1")
    store.cancel_run("r1", now=T0)
    with pytest.raises(BudgetExceeded) as info:
        store.append_tool_call(NewToolCall(run_id="r1", tool="shell"), now=T0)
    assert info.value.reason == "cancelled"
    assert count(store, "tool_call") == 0


# --- facts and policies -------------------------------------------------------------------


def test_facts(store):
    f = store.put_fact("ns", "b", {"x": 1}, now=T0)
    assert (f.namespace, f.key, f.value, f.created_at, f.updated_at) == (
        "ns", "b", {"x": 1}, T0, T0)
    store.put_fact("ns", "a", "text", now=T0 + S)
    store.put_fact("ns", "c", [1, None, "z"], now=T0 + S)
    store.put_fact("other", "a", 42, now=T0)
    f = store.put_fact("ns", "b", {"x": 2}, now=T0 + 10 * S)
    assert (f.value, f.created_at, f.updated_at) == ({"x": 2}, T0, T0 + 10 * S)
    assert store.get_fact("ns", "b") == f
    assert store.get_fact("other", "a").value == 42
    assert [(x.key, x.value) for x in store.list_facts("ns")] == [
        ("a", "text"), ("b", {"x": 2}), ("c", [1, None, "z"])]
    assert store.list_facts("empty") == []
    with pytest.raises(NotFound):
        store.get_fact("ns", "zzz")
    with pytest.raises(NotFound):
        store.get_fact("nope", "a")


def test_facts_need_no_run(store):
    assert store.put_fact("run-that-does-not-exist", "k", None, now=T0).value is None


def test_policies(store):
    rules = [ApprovalRule(tool="shell"), ApprovalRule(side_effect="fs.*")]
    p = store.upsert_policy(PolicyUpsert(name="strict", budget_tokens=100, budget_dollars=1.5,
                                         budget_loops=3, budget_seconds=60,
                                         tool_allowlist=["shell", "http"],
                                         approval_rules=rules, default_safe=True), now=T0)
    assert (p.name, p.budget_tokens, p.budget_dollars, p.budget_loops, p.budget_seconds) == (
        "strict", 100, 1.5, 3, 60)
    assert p.tool_allowlist == ["shell", "http"]
    assert p.approval_rules == rules
    assert p.default_safe is True
    assert p.created_at == p.updated_at == T0
    assert store.get_policy("strict") == p
    stored_rules = raw(store, "SELECT approval_rules FROM policy WHERE name = ?", ("strict",))
    assert json.loads(stored_rules[0][0]) == [{"tool": "shell"}, {"side_effect": "fs.*"}]

    store.upsert_policy(PolicyUpsert(name="lenient"), now=T0 + S)
    p2 = store.upsert_policy(PolicyUpsert(name="strict", budget_tokens=5,
                                          approval_rules=[ApprovalRule(tool="rm")]),
                             now=T0 + 10 * S)
    assert (p2.created_at, p2.updated_at) == (T0, T0 + 10 * S)
    assert (p2.budget_tokens, p2.budget_dollars, p2.tool_allowlist, p2.default_safe) == (
        5, 0.0, [], False)
    assert p2.approval_rules == [ApprovalRule(tool="rm")]
    store.upsert_policy(PolicyUpsert(name="newest"), now=T0 + 20 * S)
    assert [x.name for x in store.list_policies()] == ["newest", "lenient", "strict"]
    with pytest.raises(NotFound):
        store.get_policy("nope")


def test_list_policies_empty(store):
    assert store.list_policies() == []


# --- checkpoints --------------------------------------------------------------------------


def test_checkpoints(store):
    add_run(store, "r1")
    add_run(store, "r2")
    with pytest.raises(NotFound):
        store.latest_checkpoint("r1")
    assert store.list_checkpoints("r1") == []

    store.upsert_step(StepUpsert(run_id="r1", index=0), now=T0)
    store.append_ledger([entry("r1", prompt_tokens=10, completion_tokens=2, dollars=0.5)])
    cp1 = store.save_checkpoint(NewCheckpoint(run_id="r1", step_index=0, name="one",
                                              payload={"cursor": 1}), now=T0 + S)
    assert (cp1.run_id, cp1.step_index, cp1.name, cp1.payload) == ("r1", 0, "one", {"cursor": 1})
    assert (cp1.usage_prompt_tokens, cp1.usage_completion_tokens, cp1.usage_dollars,
            cp1.usage_loops) == (10, 2, 0.5, 1)
    assert cp1.created_at == T0 + S

    store.upsert_step(StepUpsert(run_id="r1", index=1), now=T0 + 2 * S)
    cp2 = store.save_checkpoint(NewCheckpoint(run_id="r1", step_index=1), now=T0 + 2 * S)
    assert cp2.id > cp1.id
    assert cp2.payload == {}
    assert cp2.usage_loops == 2
    store.save_checkpoint(NewCheckpoint(run_id="r2", name="other"), now=T0)
    assert store.latest_checkpoint("r1") == cp2
    assert store.list_checkpoints("r1") == [cp1, cp2]

    # A checkpoint never resets usage: later usage stays counted.
    store.append_ledger([entry("r1", prompt_tokens=99, completion_tokens=1, dollars=2.0)])
    run = store.get_run("r1")
    assert (run.usage_prompt_tokens, run.usage_dollars) == (109, 2.5)
    assert store.latest_checkpoint("r1").usage_prompt_tokens == 10
    with pytest.raises(NotFound):
        store.list_checkpoints("nope")
    with pytest.raises(NotFound):
        store.latest_checkpoint("nope")


# --- foreign keys ---------------------------------------------------------------------------


def test_store_operations_reject_unknown_runs(store):
    with pytest.raises(NotFound):
        store.upsert_step(StepUpsert(run_id="ghost", index=0), now=T0)
    with pytest.raises(NotFound):
        store.append_ledger([entry("ghost")])
    with pytest.raises(NotFound):
        store.append_tool_call(NewToolCall(run_id="ghost", tool="x"), now=T0)
    with pytest.raises(NotFound):
        store.save_checkpoint(NewCheckpoint(run_id="ghost"), now=T0)
    with pytest.raises(NotFound):
        store.create_approval(new_approval(run_id="ghost"), now=T0)
    with pytest.raises(NotFound):
        store.create_approval(new_approval(tool_call_id="ghost"), now=T0)
    for table in ("step", "ledger_entry", "ledger_daily", "tool_call", "checkpoint",
                  "approval", "approval_message"):
        assert count(store, table) == 0, table


@pytest.mark.parametrize("model", [StepRow, LedgerRow, LedgerDailyRow, ToolCallRow,
                                   CheckpointRow, ApprovalRow, ApprovalMessageRow],
                         ids=lambda m: m._meta.table_name)
def test_database_enforces_foreign_keys(store, model):
    """The schema itself refuses orphans (SQLite: foreign_keys pragma on)."""
    values = {
        StepRow: {"run": "ghost", "index": 0, "started_at": T0},
        LedgerRow: {"run": "ghost", "model": "m", "created_at": T0},
        LedgerDailyRow: {"run": "ghost", "day": "2026-03-10", "model": "m"},
        ToolCallRow: {"id": "tc", "run": "ghost", "tool": "x", "created_at": T0},
        CheckpointRow: {"run": "ghost", "created_at": T0},
        ApprovalRow: {"id": "ap", "agent": "a", "kind": "k", "summary": "s", "run": "ghost",
                      "callback_data": "appr:ap", "created_at": T0, "expires_at": T0},
        ApprovalMessageRow: {"approval": "ghost", "chat_id": 1, "updated_at": T0},
    }[model]
    store.db.connect(reuse_if_open=True)
    with pytest.raises(NotFound), translated_errors(), store.db.atomic():
        model.insert(**values).execute()
    assert count(store, model._meta.table_name) == 0


# --- approvals ----------------------------------------------------------------------------


def test_create_approval(store):
    add_run(store, "r1")
    a, created = store.create_approval(new_approval(run_id="r1", ttl_seconds=90), now=T0)
    assert created is True
    assert re.fullmatch(r"[A-Za-z0-9_-]{6,16}", a.id)
    assert len(f"appr:{a.id}:approve".encode()) <= 64
    assert len(f"appr:{a.id}:deny".encode()) <= 64
    assert a.callback_prefix == f"appr:{a.id}"
    assert (a.agent, a.kind, a.summary, a.payload) == (
        "builder", "shell", "rm -rf build/", {"cmd": "rm -rf build/"})
    assert (a.status, a.reason, a.decided_by, a.decided_at) == ("pending", None, None, None)
    assert (a.run_id, a.tool_call_id) == ("r1", None)
    assert a.created_at == T0
    assert a.expires_at == T0 + timedelta(seconds=90)
    assert not a.is_final
    assert store.get_approval(a.id) == a
    ids = {store.create_approval(new_approval(), now=T0)[0].id for _ in range(50)}
    assert len(ids) == 50


def test_approval_with_tool_call(store):
    add_run(store, "r1")
    call = store.append_tool_call(NewToolCall(run_id="r1", tool="shell"), now=T0)
    a, _ = store.create_approval(new_approval(run_id="r1", tool_call_id=call.id), now=T0)
    assert a.tool_call_id == call.id


@pytest.mark.parametrize("payload", [
    None, "plain text", "", 0, 3.5, True, [1, "two", None], {"a": {"b": [1, 2, {"c": None}]}},
    {"unicode": "héllo ✅ — 😀", "quote": "\"'<b>&"},
    {"big": "x" * 60_000, "tail": list(range(100))},
    "y" * 60_000,
], ids=lambda p: type(p).__name__ + str(len(json.dumps(p))))
def test_approval_payload_round_trips_in_full(store, payload):
    a, _ = store.create_approval(new_approval(payload=payload), now=T0)
    assert a.payload == payload
    assert store.get_approval(a.id).payload == payload
    assert store.list_approvals()[0].payload == payload


def test_idempotency_key(store):
    first, created = store.create_approval(new_approval(idempotency_key="k1", chat_ids=[1]),
                                           now=T0)
    assert created is True
    again, created = store.create_approval(new_approval(idempotency_key="k1", chat_ids=[1]),
                                           now=T0 + S)
    assert created is False
    assert again == first
    with pytest.raises(Conflict) as info:
        store.create_approval(new_approval(idempotency_key="k1", summary="something else"),
                              now=T0 + S)
    assert not isinstance(info.value, AlreadyFinal)
    with pytest.raises(Conflict):
        store.create_approval(new_approval(idempotency_key="k1", payload="other"), now=T0)
    other, created = store.create_approval(new_approval(idempotency_key="k2"), now=T0)
    assert created is True and other.id != first.id
    assert count(store, "approval") == 2
    assert len(store.approval_messages(first.id)) == 1
    # A final approval is still the answer to its key.
    store.resolve_approval(first.id, "denied", "bob", now=T0 + S)
    again, created = store.create_approval(new_approval(idempotency_key="k1", chat_ids=[1]),
                                           now=T0 + 2 * S)
    assert (again.id, again.status, created) == (first.id, "denied", False)


def test_get_unknown_approval(store):
    with pytest.raises(NotFound):
        store.get_approval("nope")
    with pytest.raises(NotFound):
        store.get_approval_by_callback("appr:nope:approve")
    with pytest.raises(NotFound):
        store.resolve_approval("nope", "approved", "alice", now=T0)
    with pytest.raises(NotFound):
        store.cancel_approval("nope", "alice", now=T0)


def test_get_approval_by_callback(store):
    a, _ = store.create_approval(new_approval(), now=T0)
    assert store.get_approval_by_callback(f"appr:{a.id}:approve") == (a, "approved")
    assert store.get_approval_by_callback(f"appr:{a.id}:deny") == (a, "denied")
    for bad in ("", "appr:", f"appr:{a.id}", f"appr:{a.id}:maybe", f"appr:{a.id}:approve:x",
                f"apr:{a.id}:approve", "appr::approve", f"appr:{a.id}:APPROVE",
                f"appr:{a.id} :deny", f"appr:{'x' * 41}:approve", "appr:a/b:deny"):
        with pytest.raises(InvalidArgument):
            store.get_approval_by_callback(bad)


def test_list_approvals(store):
    made = [store.create_approval(new_approval(summary=f"n{i}"), now=T0 + i * S)[0]
            for i in range(5)]
    store.resolve_approval(made[1].id, "approved", "alice", now=T0 + 10 * S)
    store.resolve_approval(made[3].id, "denied", "bob", now=T0 + 10 * S)
    ids = [a.id for a in made]
    assert [a.id for a in store.list_approvals()] == ids[::-1]
    assert [a.id for a in store.list_approvals(status="pending")] == [ids[4], ids[2], ids[0]]
    assert [a.id for a in store.list_approvals(status="pending", oldest_first=True)] == [
        ids[0], ids[2], ids[4]]
    assert [a.id for a in store.list_approvals(status="pending", limit=2)] == [ids[4], ids[2]]
    assert [a.id for a in store.list_approvals(status="pending", limit=2,
                                               oldest_first=True)] == [ids[0], ids[2]]
    assert [a.id for a in store.list_approvals(status="approved")] == [ids[1]]
    assert store.list_approvals(status="expired") == []
    assert store.count_approvals("pending") == 3
    assert store.count_approvals("denied") == 1


def test_resolve_approval(store):
    a, _ = store.create_approval(new_approval(), now=T0)
    b, _ = store.create_approval(new_approval(), now=T0)
    when = T0 + 5 * S
    approved = store.resolve_approval(a.id, "approved", "telegram:1 (@alice)", now=when)
    assert (approved.status, approved.decided_by, approved.decided_at, approved.reason) == (
        "approved", "telegram:1 (@alice)", when, None)
    assert approved.is_final
    denied = store.resolve_approval(b.id, "denied", "cli", reason="too risky", now=when)
    assert (denied.status, denied.decided_by, denied.reason) == ("denied", "cli", "too risky")
    assert store.get_approval(a.id) == approved
    assert store.get_approval(b.id) == denied

    with pytest.raises(AlreadyFinal) as info:
        store.resolve_approval(a.id, "denied", "bob", now=when + S)
    assert info.value.approval == approved
    assert info.value.expired_now is False
    with pytest.raises(AlreadyFinal) as info:
        store.cancel_approval(b.id, "api", now=when + S)
    assert info.value.approval == denied
    assert store.get_approval(a.id) == approved
    with pytest.raises(InvalidArgument):
        store.resolve_approval(a.id, "expired", "x", now=when)


def test_cancel_approval(store):
    a, _ = store.create_approval(new_approval(), now=T0)
    cancelled = store.cancel_approval(a.id, "api", reason="withdrawn", now=T0 + S)
    assert (cancelled.status, cancelled.decided_by, cancelled.reason, cancelled.decided_at) == (
        "cancelled", "api", "withdrawn", T0 + S)
    with pytest.raises(AlreadyFinal) as info:
        store.resolve_approval(a.id, "approved", "alice", now=T0 + 2 * S)
    assert info.value.approval.status == "cancelled"


@pytest.mark.parametrize("action", ["approve", "deny", "cancel"])
def test_transition_after_expiry_expires_it(store, action):
    a, _ = store.create_approval(new_approval(ttl_seconds=60), now=T0)

    def act(now):
        if action == "cancel":
            return store.cancel_approval(a.id, "api", now=now)
        return store.resolve_approval(a.id, "approved" if action == "approve" else "denied",
                                      "alice", now=now)

    with pytest.raises(AlreadyFinal) as info:
        act(T0 + timedelta(seconds=60))  # exactly at expires_at: already too late
    assert info.value.expired_now is True
    expired = info.value.approval
    assert (expired.status, expired.decided_by, expired.decided_at) == (
        "expired", "expiry", a.expires_at)
    with pytest.raises(AlreadyFinal) as info:
        act(T0 + timedelta(seconds=61))
    assert info.value.expired_now is False
    assert info.value.approval == expired
    assert store.get_approval(a.id) == expired
    assert store.expire_due(now=T0 + timedelta(hours=1)) == []


def test_transition_just_before_expiry_succeeds(store):
    a, _ = store.create_approval(new_approval(ttl_seconds=60), now=T0)
    done = store.resolve_approval(a.id, "approved", "alice",
                                  now=T0 + timedelta(seconds=60) - US)
    assert done.status == "approved"


def test_expire_due_and_next_expiry(store):
    assert store.next_expiry() is None
    a, _ = store.create_approval(new_approval(ttl_seconds=10), now=T0)
    b, _ = store.create_approval(new_approval(ttl_seconds=20), now=T0)
    c, _ = store.create_approval(new_approval(ttl_seconds=30), now=T0)
    d, _ = store.create_approval(new_approval(ttl_seconds=5), now=T0)
    store.resolve_approval(d.id, "approved", "alice", now=T0 + S)
    assert store.next_expiry() == T0 + 10 * S
    assert store.expire_due(now=T0 + 9 * S) == []
    expired = store.expire_due(now=T0 + 20 * S)  # b is due exactly now
    assert sorted(x.id for x in expired) == sorted([a.id, b.id])
    for x in expired:
        assert (x.status, x.decided_by, x.decided_at) == ("expired", "expiry", x.expires_at)
        assert store.get_approval(x.id) == x
    assert store.expire_due(now=T0 + 20 * S) == []  # idempotent
    assert store.next_expiry() == T0 + 30 * S
    assert store.get_approval(c.id).status == "pending"
    assert store.get_approval(d.id).status == "approved"
    assert [x.id for x in store.expire_due(now=T0 + timedelta(days=1))] == [c.id]
    assert store.next_expiry() is None


def test_store_clock_is_used_when_now_is_not_given(db_url):
    current = [T0]
    store = Store.from_url(db_url, clock=lambda: current[0])
    try:
        a, _ = store.create_approval(new_approval(ttl_seconds=30))
        assert (a.created_at, a.expires_at) == (T0, T0 + 30 * S)
        assert store.expire_due() == []
        current[0] = T0 + 30 * S
        assert [x.id for x in store.expire_due()] == [a.id]
        run = store.upsert_run(RunUpsert(id="r1"))
        assert run.created_at == T0 + 30 * S
        e = store.append_ledger([NewLedgerEntry(run_id="r1", model="m")]).entries[0]
        assert e.created_at == T0 + 30 * S
    finally:
        store.close()


def test_message_refs(store):
    a, _ = store.create_approval(new_approval(chat_ids=[111, -222, 111]), now=T0)
    b, _ = store.create_approval(new_approval(chat_ids=[111]), now=T0 + S)
    store.create_approval(new_approval(), now=T0)  # no chats: no refs
    refs = store.approval_messages(a.id)
    assert [(r.chat_id, r.message_id, r.shown) for r in refs] == [(111, None, None),
                                                                  (-222, None, None)]
    assert all(r.approval_id == a.id and r.updated_at == T0 for r in refs)
    owed = store.messages_owed()  # pending requests: newest first
    assert [(ref.id, ap.id) for ref, ap in owed] == [(store.approval_messages(b.id)[0].id, b.id),
                                                     (refs[1].id, a.id), (refs[0].id, a.id)]
    assert owed[2][1] == a
    assert len(store.messages_owed(limit=1)) == 1
    assert [ref.id for ref, _ in store.messages_owed(chat_id=-222)] == [refs[1].id]

    store.record_message(refs[0].id, "pending", message_id=9001, now=T0 + 2 * S)
    posted = store.find_message(111, 9001)
    assert (posted.id, posted.approval_id, posted.message_id, posted.shown) == (
        refs[0].id, a.id, 9001, "pending")
    assert posted.updated_at == T0 + 2 * S
    assert store.find_message(111, 9002) is None
    assert store.find_message(-222, 9001) is None
    assert refs[0].id not in [ref.id for ref, _ in store.messages_owed()]

    store.resolve_approval(a.id, "approved", "alice", now=T0 + 3 * S)
    owed = {ref.id: ap for ref, ap in store.messages_owed()}
    assert owed[refs[0].id].status == "approved"  # owed an edit now
    store.record_message(refs[0].id, "approved", now=T0 + 4 * S)
    store.record_message(refs[1].id, "approved", now=T0 + 4 * S)
    assert [ap.id for _, ap in store.messages_owed()] == [b.id]
    msg = store.find_message(111, 9001)
    assert (msg.message_id, msg.shown) == (9001, "approved")  # message_id kept
    assert store.approval_messages("nope") == []


# --- concurrency ----------------------------------------------------------------------------


def test_fifty_threads_resolve_one_request(store):
    a, _ = store.create_approval(new_approval(ttl_seconds=3600), now=T0)
    wins, losses = [], []

    def worker(i, barrier):
        try:
            barrier.wait(timeout=30)
            decision = "approved" if i % 2 else "denied"
            try:
                wins.append(store.resolve_approval(a.id, decision, f"user{i}", now=T0 + S))
            except AlreadyFinal as exc:
                losses.append(exc)
        finally:
            store.close_thread_connection()

    run_threads(50, worker)
    assert len(wins) == 1
    assert len(losses) == 49
    winner = wins[0]
    assert winner.decided_by.startswith("user")
    for exc in losses:
        assert exc.approval == winner
        assert exc.expired_now is False
    assert store.get_approval(a.id) == winner


def test_racing_resolve_cancel_and_expiry(store):
    approvals = [store.create_approval(new_approval(summary=f"n{i}", ttl_seconds=60), now=T0)[0]
                 for i in range(12)]
    ids = [a.id for a in approvals]
    transitions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    lock = threading.Lock()

    def record(approval, who):
        with lock:
            transitions[approval.id].append((approval.status, who))

    def worker(i, barrier):
        rng = random.Random(i)
        order = ids[:]
        rng.shuffle(order)
        role = i % 5
        try:
            barrier.wait(timeout=30)
            if role == 4:
                for expired in store.expire_due(now=T0 + 90 * S):
                    record(expired, "sweep")
                return
            for approval_id in order:
                try:
                    if role == 0:
                        done = store.resolve_approval(approval_id, "approved", f"u{i}",
                                                      now=T0 + 30 * S)
                    elif role == 1:
                        done = store.resolve_approval(approval_id, "denied", f"u{i}",
                                                      now=T0 + 30 * S)
                    elif role == 2:
                        done = store.cancel_approval(approval_id, f"u{i}", now=T0 + 30 * S)
                    else:  # too late: these expire the request if it is still pending
                        done = store.resolve_approval(approval_id, "approved", f"u{i}",
                                                      now=T0 + 90 * S)
                    record(done, f"u{i}")
                except AlreadyFinal as exc:
                    if exc.expired_now:
                        record(exc.approval, f"late{i}")
        finally:
            store.close_thread_connection()

    run_threads(50, worker)
    for approval_id in ids:
        assert len(transitions[approval_id]) == 1, transitions[approval_id]
        status, who = transitions[approval_id][0]
        final = store.get_approval(approval_id)
        assert final.status == status
        if status == "expired":
            assert final.decided_by == "expiry"
        else:
            assert final.decided_by == who
    assert store.count_approvals("pending") == 0


def test_concurrent_run_upserts_and_steps(store):
    add_run(store, "r1")

    def worker(i, barrier):
        try:
            barrier.wait(timeout=30)
            for j in range(5):
                store.upsert_step(StepUpsert(run_id="r1", index=i * 5 + j), now=T0)
                store.upsert_step(StepUpsert(run_id="r1", index=(i * 5 + j + 1) % 100,
                                             status="done"), now=T0)
        finally:
            store.close_thread_connection()

    run_threads(20, worker)
    assert store.get_run("r1").usage_loops == 100
    assert [s.index for s in store.list_steps("r1")] == list(range(100))


async def test_concurrent_async_appends_add_up(store):
    runs = ["a", "b", "c", "d"]
    for run_id in runs:
        add_run(store, run_id)
    rng = random.Random(3)
    batches = []
    for i in range(60):
        order = runs[:]
        rng.shuffle(order)  # each list touches the runs in a different order
        batches.append([
            NewLedgerEntry(run_id=order[j % len(order)], provider="openai", model=f"m{j % 3}",
                           prompt_tokens=rng.randrange(1000), completion_tokens=j,
                           dollars=rng.choice([None, 0.001, 0.5, rng.random()]),
                           created_at=DAY0 + timedelta(hours=i, seconds=j))
            for j in range(rng.randrange(1, 12))
        ])
    results = await asyncio.gather(*(store.run(store.append_ledger, b, now=T0)
                                     for b in batches))
    assert [len(r.entries) for r in results] == [len(b) for b in batches]
    expected: dict[str, list[int]] = {r: [0, 0, 0, 0] for r in runs}
    for b in batches:
        for e in b:
            s = expected[e.run_id]
            s[0] += 1
            s[1] += e.prompt_tokens
            s[2] += e.completion_tokens
            s[3] += to_nano(e.dollars) if e.dollars is not None else 0
    for run_id, (calls, prompt, completion, nano) in expected.items():
        totals = await store.run(store.totals, run_id)
        assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (
            calls, prompt, completion)
        assert totals.dollars == from_nano(nano)
        run = await store.run(store.get_run, run_id)
        assert (run.usage_prompt_tokens, run.usage_completion_tokens, run.usage_dollars) == (
            prompt, completion, from_nano(nano))
    summary = await store.run(store.summarize_ledger, "metadata.none")
    assert summary.total.calls == sum(len(b) for b in batches)
    assert summary.total.dollars == from_nano(sum(s[3] for s in expected.values()))
    ids = [e.id for r in results for e in r.entries]
    assert len(set(ids)) == len(ids)


def test_close_twice_is_harmless(db_url):
    from storage.store import Store

    s = Store.from_url(db_url)
    s.close()
    s.close()


def test_an_approval_id_never_starts_like_an_option_or_a_formula(monkeypatch):
    """``token_urlsafe`` starts with ``-`` or ``_`` once in 32 draws; such an id is drawn again.

    An id like ``-Xk2…`` would read as an option to ``tapgate`` and as a formula in the CSV
    export (which quotes it, so the exported id would not match).
    """
    import storage.approvals as approvals

    draws = iter(["-Xk2abcdefg", "_Xk2abcdefg", "Xk2abcdefg-"])
    monkeypatch.setattr(approvals.secrets, "token_urlsafe", lambda n: next(draws))
    assert approvals.new_approval_id() == "Xk2abcdefg-"
    monkeypatch.undo()
    assert all(approvals.new_approval_id()[0].isalnum() for _ in range(2000))
