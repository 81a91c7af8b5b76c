"""Requests needing several approvers, in storage, on both backends: distinct approvers,
one deny decides, the requester's approval never counts, racing last approvers make one
decision, and rules never stand in for a quorum."""

from __future__ import annotations

import pytest

from storage.errors import AlreadyFinal, AlreadyVoted, SelfApproval
from storage.rule_records import NewRule
from tests.test_store import T0, new_approval, run_threads

ALICE, BOB, CAROL = "telegram:1 (@alice)", "telegram:2 (@bob)", "telegram:3 (@carol)"


def test_two_distinct_approvers_decide_and_a_double_tap_counts_once(store):
    pending, _ = store.create_approval(new_approval(required_approvals=2, chat_ids=[-1]),
                                       now=T0)
    first = store.resolve_approval(pending.id, "approved", ALICE, now=T0)
    assert first.status == "pending" and [v.by for v in first.approvals] == [ALICE]
    with pytest.raises(AlreadyVoted) as again:
        store.resolve_approval(pending.id, "approved", "telegram:1 (@alice_renamed)", now=T0)
    assert [v.by for v in again.value.approval.approvals] == [ALICE]
    read = store.get_approval(pending.id)
    assert read.required_approvals == 2 and [v.by for v in read.approvals] == [ALICE]
    # Each vote owes the copies (they show the progress).
    [(ref, owed)] = store.messages_owed()
    assert owed.approvals[0].by == ALICE
    done = store.resolve_approval(pending.id, "approved", BOB, now=T0)
    assert done.status == "approved" and done.decided_by == BOB
    assert [v.by for v in done.approvals] == [ALICE, BOB]
    with pytest.raises(AlreadyFinal):
        store.resolve_approval(pending.id, "approved", CAROL, now=T0)


def test_one_deny_decides_a_quorum_request_at_once(store):
    pending, _ = store.create_approval(new_approval(required_approvals=3), now=T0)
    store.resolve_approval(pending.id, "approved", ALICE, now=T0)
    denied = store.resolve_approval(pending.id, "denied", BOB, "not today", now=T0)
    assert denied.status == "denied" and denied.reason == "not today"
    assert [v.by for v in store.get_approval(pending.id).approvals] == [ALICE]


def test_the_requesters_own_approval_never_counts(store):
    pending, _ = store.create_approval(new_approval(required_approvals=2, requested_by=1),
                                       now=T0)
    with pytest.raises(SelfApproval):
        store.resolve_approval(pending.id, "approved", ALICE, now=T0)
    assert store.get_approval(pending.id).approvals == []
    store.resolve_approval(pending.id, "approved", BOB, now=T0)
    assert store.resolve_approval(pending.id, "approved", CAROL, now=T0).status == "approved"


def test_a_due_quorum_request_expires_instead_of_counting(store):
    from datetime import timedelta

    pending, _ = store.create_approval(new_approval(required_approvals=2, ttl_seconds=10),
                                       now=T0)
    with pytest.raises(AlreadyFinal) as lost:
        store.resolve_approval(pending.id, "approved", ALICE, now=T0 + timedelta(seconds=11))
    assert lost.value.approval.status == "expired" and lost.value.expired_now


def test_rules_never_stand_in_for_a_quorum(store):
    store.create_rule(NewRule(agent="builder", kind="shell", match="*", created_by=ALICE),
                      now=T0)
    single, _ = store.create_approval(new_approval(), now=T0)
    quorum, _ = store.create_approval(new_approval(required_approvals=2), now=T0)
    assert (single.status, quorum.status) == ("approved", "pending")


def test_racing_last_approvers_make_one_decision(store):
    for _ in range(8):
        pending, _ = store.create_approval(new_approval(required_approvals=2), now=T0)
        store.resolve_approval(pending.id, "approved", ALICE, now=T0)
        results: list = []

        def worker(i, barrier, a=pending, results=results):
            barrier.wait()
            try:
                results.append(store.resolve_approval(a.id, "approved",
                                                      (BOB, CAROL)[i], now=T0).status)
            except AlreadyFinal:
                results.append("lost")
            finally:
                store.close_thread_connection()

        run_threads(2, worker)
        assert sorted(results) == ["approved", "lost"]
        final = store.get_approval(pending.id)
        assert final.status == "approved" and len(final.approvals) in (2, 3)


def test_racing_first_approvers_never_leave_a_quorum_unnoticed(store):
    for _ in range(8):
        pending, _ = store.create_approval(new_approval(required_approvals=2), now=T0)
        results: list = []

        def worker(i, barrier, a=pending, results=results):
            barrier.wait()
            try:
                results.append(store.resolve_approval(a.id, "approved",
                                                      (BOB, CAROL)[i], now=T0).status)
            finally:
                store.close_thread_connection()

        run_threads(2, worker)
        assert sorted(results) == ["approved", "pending"]
        assert store.get_approval(pending.id).status == "approved"


def test_escalation_happens_once_and_adds_the_escalation_chats(store):
    from datetime import timedelta

    from tests.test_store import count

    late, _ = store.create_approval(new_approval(escalate_after=60, ttl_seconds=600, chat_ids=[-1]), now=T0)
    never, _ = store.create_approval(new_approval(chat_ids=[-1]), now=T0)
    for ref, _ in store.messages_owed():
        store.record_message(ref.id, "pending", message_id=ref.id + 100)
    assert store.escalate_due([-9, -1], now=T0 + timedelta(seconds=59)) == []
    [escalated] = store.escalate_due([-9, -1], now=T0 + timedelta(seconds=61))
    assert escalated.id == late.id and escalated.escalated_at == T0 + timedelta(seconds=61)
    assert store.escalate_due([-9], now=T0 + timedelta(seconds=62)) == []  # once
    owed = {(ref.chat_id, ref.message_id is None) for ref, a in store.messages_owed()}
    assert owed == {(-1, False), (-9, True)}  # the original's edit, the new chat's post
    assert count(store, "approval_message") == 3
    assert store.get_approval(never.id).escalated_at is None
    # A decided request never escalates.
    decided, _ = store.create_approval(new_approval(escalate_after=1), now=T0)
    store.resolve_approval(decided.id, "denied", ALICE, now=T0)
    assert store.escalate_due([-9], now=T0 + timedelta(seconds=5)) == []


def test_racing_sweeps_escalate_once(store):
    from datetime import timedelta

    store.create_approval(new_approval(escalate_after=1), now=T0)
    got: list = []

    def worker(i, barrier):
        barrier.wait()
        try:
            got.extend(store.escalate_due([-9], now=T0 + timedelta(seconds=2)))
        finally:
            store.close_thread_connection()

    run_threads(4, worker)
    assert len(got) == 1


def test_a_quorum_request_takes_neither_a_rule_nor_an_edit(store):
    from bot import rules as rule_making
    from storage.errors import InvalidArgument

    pending, _ = store.create_approval(new_approval(required_approvals=2), now=T0)
    with pytest.raises(InvalidArgument):
        rule_making.always_rule(pending, ALICE, -1)
    made = NewRule(agent="builder", kind="shell", match="x", created_by=ALICE)
    with pytest.raises(InvalidArgument, match="cannot decide it"):
        store.decide_with_rule(pending.id, ALICE, made, now=T0)
    with pytest.raises(InvalidArgument, match="cannot be edited"):
        store.resolve_approval(pending.id, "approved", ALICE, now=T0, edited_payload={"a": 1})
    after = store.get_approval(pending.id)
    assert after.approvals == [] and store.list_rules(live_only=False) == []


def test_a_vote_or_an_escalation_landing_mid_send_leaves_the_copy_owed(store):
    from datetime import timedelta

    pending, _ = store.create_approval(
        new_approval(required_approvals=2, escalate_after=5, ttl_seconds=600, chat_ids=[-1]),
        now=T0)
    [(ref, shown)] = store.messages_owed()
    assert shown.shown_as == "pending/0"
    store.resolve_approval(pending.id, "approved", ALICE, now=T0)  # while the post is in flight
    assert store.record_message(ref.id, shown.shown_as, message_id=10) is False
    [(_, now_shown)] = store.messages_owed()
    assert now_shown.shown_as == "pending/1"
    assert store.record_message(ref.id, now_shown.shown_as) is True
    store.escalate_due([-9], now=T0 + timedelta(seconds=6))
    owed = {r.chat_id: a.shown_as for r, a in store.messages_owed()}
    assert owed == {-1: "pending/1/e", -9: "pending/1/e"}
