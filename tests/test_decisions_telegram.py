"""Issue 10 in Telegram, end to end: the real bot against the fake Bot API server.

🔁 This session, ♾️ Always (and widening it), 💬 Deny with reason, ✏️ Edit, rules that
approve by themselves (no message, a digest line edited in place), /rules, /revoke —
and everything that must decide nothing: strangers, other chats, unsolicited replies.
On SQLite and PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bot.service import Service
from tests.fake_telegram import FakeTelegram, Message
from tests.test_telegram import (
    ALICE,
    BOB,
    CHAT_A,
    CHAT_B,
    EVE,
    answer_of,
    edited_to,
    posted,
    served_on_a_socket,
    settings_for,
    socket_client,
    submit,
)

OTHER_GROUP = -100555  # a group the bot is in that is not an approver chat
DIGEST = "approved"


# --- helpers ----------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0):
    """Await ``check()`` until it returns something truthy (the database, which the fake
    cannot wake us for); fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def button(msg: Message, text: str) -> dict:
    found = [b for b in msg.buttons if b.get("text") == text]
    assert found, f"no button {text!r} in {msg.button_texts}"
    return found[0]


async def sent(fake: FakeTelegram, chat_id: int, needle: str, timeout: float = 10.0) -> Message:
    """The bot's message in ``chat_id`` containing ``needle``, once it is sent."""
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and needle in str(c.params["text"]), timeout=timeout)
    return fake.message(chat_id, call.response["result"]["message_id"])


async def prompt(fake: FakeTelegram, service: Service, chat_id: int, needle: str) -> Message:
    """The ForceReply prompt containing ``needle``, once its prompt row is stored."""
    msg = await sent(fake, chat_id, needle)
    store = service.store
    await eventually(lambda: store.run(store.find_prompt, chat_id, msg.message_id),
                     "the prompt to be stored")
    return msg


async def reply_text(fake: FakeTelegram, chat_id: int, needle: str) -> str:
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and needle in str(c.params["text"]))
    return str(call.params["text"])


async def run(service: Service, run_id: str) -> None:
    await service.governance.upsert_run(run_id, {"name": run_id})


def digest_of(service: Service):
    return service.app.bot_data["tapgate"].digest


async def live_rules(service: Service):
    return await service.store.run(service.store.list_rules, True)


# --- the request's keyboard -----------------------------------------------------------


async def test_every_button_of_a_request(fake, service):
    await run(service, "sess-1")
    approval = await submit(service, kind="Bash", summary="git status -s", run_id="sess-1",
                            payload={"tool_input": {"command": "git status -s"}})
    msg = await posted(fake, CHAT_A, approval.id)
    rows = msg.reply_markup["inline_keyboard"]
    assert [[b["text"] for b in row] for row in rows] == [
        ["✅ Approve", "❌ Deny"], ["🔁 This session", "♾️ Always"],
        ["💬 Deny with reason", "✏️ Edit"]]
    assert [b.get("style") for b in rows[0]] == ["success", "danger"]
    actions = [b["callback_data"] for row in rows for b in row]
    assert actions == [f"appr:{approval.id}:{a}" for a in
                       ("approve", "deny", "session", "always", "reason", "edit")]
    assert all(len(a.encode()) <= 64 for a in actions)
    # No run: no session button; nothing editable: no edit button.
    plain = await submit(service, summary="deploy", payload=[1, 2])
    msg = await posted(fake, CHAT_A, plain.id)
    assert msg.button_texts == ["✅ Approve", "❌ Deny", "♾️ Always", "💬 Deny with reason"]


async def test_a_budget_alert_keeps_its_two_buttons(fake, service):
    approval = await submit(service, agent="tapgate", kind="budget.grant",
                            summary="Run “x” passed 80 % of its budget.",
                            payload={"run_id": "x", "raise": ["budget_dollars"]})
    msg = await posted(fake, CHAT_A, approval.id)
    assert msg.button_texts == ["➕ Grant +50% budget", "✋ Keep as is"]
    query = fake.tap(CHAT_A, msg.message_id, ALICE, data=f"appr:{approval.id}:always")
    assert "can't be made" in await answer_of(fake, query)
    assert (await service.manager.get(approval.id)).status == "pending"
    assert not await live_rules(service)


# --- 🔁 This session ------------------------------------------------------------------


async def test_session_approves_and_later_requests_of_the_run_need_no_tap(fake, service):
    await run(service, "sess-1")
    await run(service, "sess-2")
    approval = await submit(service, kind="Bash", summary="pytest -q", run_id="sess-1")
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="🔁 This session")
    answer = await answer_of(fake, query)
    assert answer.startswith("✅ Approved. 🔁 Rule #")
    decided = await service.manager.get(approval.id)
    assert (decided.status, decided.decided_by) == ("approved", "telegram:1001 (@alice)")
    await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
    [rule] = await live_rules(service)
    assert (rule.run_id, rule.match, rule.agent, rule.kind) == ("sess-1", "pytest -q",
                                                                "builder", "Bash")
    assert rule.expires_at is not None and rule.chat_id == CHAT_A
    # The same request in the same run: approved at once, no message of its own.
    again = await submit(service, kind="Bash", summary="pytest -q", run_id="sess-1")
    assert again.status == "approved"
    assert again.decided_by == f"rule:{rule.id} (@alice)"
    # Another run, or another command: asked as usual.
    other_run = await submit(service, kind="Bash", summary="pytest -q", run_id="sess-2")
    other_cmd = await submit(service, kind="Bash", summary="pytest -x", run_id="sess-1")
    assert other_run.status == other_cmd.status == "pending"
    await posted(fake, CHAT_A, other_cmd.id)
    assert not [c for c in fake.calls_of("sendMessage") if again.id in str(c.params["text"])]
    # The run ends: so does its session rule.
    await service.governance.cancel_run("sess-1")
    assert not await live_rules(service)
    assert (await service.store.run(service.store.get_rule, rule.id)).revoked_at is not None


async def test_session_needs_a_run(fake, service):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, data=f"appr:{approval.id}:session")
    assert "no session" in await answer_of(fake, query)
    assert (await service.manager.get(approval.id)).status == "pending"


def _late(manager, name: str, seconds: float) -> None:
    """Hold ``manager.<name>`` back a little: the other tap of a race gets a head start."""
    method = getattr(manager, name)

    async def late(*args, **kwargs):
        await asyncio.sleep(seconds)
        return await method(*args, **kwargs)

    setattr(manager, name, late)


@pytest.mark.parametrize("attempt", range(6))
async def test_session_and_deny_race_exactly_one_outcome(fake, service, attempt):
    # Unskewed, Deny (one compare-and-set) tends to win; holding Deny back a little lets
    # the Session tap win too, so both outcomes are raced. Either way: exactly one.
    if attempt % 3 == 1:
        _late(service.manager, "resolve", 0.05)
    elif attempt % 3 == 2:
        _late(service.manager, "resolve", 0.008)  # a close race
    await run(service, "race")
    approval = await submit(service, kind="Bash", summary=f"make race{attempt}", run_id="race")
    msg_a = await posted(fake, CHAT_A, approval.id)
    msg_b = await posted(fake, CHAT_B, approval.id)
    taps = [(CHAT_A, msg_a, ALICE, "🔁 This session"), (CHAT_B, msg_b, BOB, "❌ Deny")]
    if attempt % 2:
        taps.reverse()
    queries = [fake.tap(chat, msg.message_id, user, button_text=text)
               for chat, msg, user, text in taps]
    answers = [await answer_of(fake, q) for q in queries]
    final = await service.manager.get(approval.id)
    rules = await service.store.run(service.store.list_rules, False)
    made = [r for r in rules if r.source_approval_id == approval.id]
    if final.status == "approved":
        assert final.decided_by == "telegram:1001 (@alice)"
        assert len(made) == 1
        assert sorted(answers)[0].startswith("Already approved by @alice")
    else:
        assert (final.status, final.decided_by) == ("denied", "telegram:1002 (@bob)")
        assert made == []  # the session tap lost: no rule
        assert any(a.startswith("Already denied by @bob") for a in answers)
    outcome = "Approved by @alice" if final.status == "approved" else "Denied by @bob"
    for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
        await edited_to(fake, chat, msg.message_id, outcome)


# --- ♾️ Always, widened, kept, revoked ---------------------------------------------------


async def test_always_on_a_command_offers_to_widen_and_widening_changes_the_match(fake,
                                                                                  service):
    approval = await submit(service, agent="claude-code", kind="Bash", summary="git status -s")
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="♾️ Always")
    assert "♾️ Rule #" in await answer_of(fake, query)
    offer = await sent(fake, CHAT_A, "Widen it?")
    [rule] = await live_rules(service)
    assert f"Rule #{rule.id} always approves git status -s from claude-code (Bash)" in offer.text
    assert offer.button_texts == ["♾️ git status *", "♾️ git *", "🎯 Keep exact", "🗑 Revoke"]
    assert button(offer, "♾️ git *")["callback_data"] == f"rule:{rule.id}:w1"
    # Nothing widened silently: only the exact command is approved by itself.
    assert (await submit(service, agent="claude-code", kind="Bash",
                         summary="git status -s")).status == "approved"
    assert (await submit(service, agent="claude-code", kind="Bash",
                         summary="git log -5")).status == "pending"
    query = fake.tap(CHAT_A, offer.message_id, ALICE, button_text="♾️ git *")
    assert "now matches git *" in await answer_of(fake, query)
    assert (await service.store.run(service.store.get_rule, rule.id)).match == "git *"
    settled = await fake.wait_until(lambda: "widened by @alice" in fake.message(
        CHAT_A, offer.message_id).text and fake.message(CHAT_A, offer.message_id),
        what="the offer settled")
    assert settled.button_texts == [f"🗑 Revoke rule #{rule.id}"]
    assert (await submit(service, agent="claude-code", kind="Bash",
                         summary="git log -5")).status == "approved"
    # A chained command is never covered by a wildcard; another agent neither.
    chained = await submit(service, agent="claude-code", kind="Bash",
                           summary="git log; rm -rf ~")
    assert chained.status == "pending"
    assert (await submit(service, agent="codex", kind="Bash",
                         summary="git log -5")).status == "pending"
    await posted(fake, CHAT_A, chained.id)
    # The settled offer's Revoke ends it.
    fake.tap(CHAT_A, offer.message_id, BOB, button_text=f"🗑 Revoke rule #{rule.id}")
    await fake.wait_until(lambda: f"Rule #{rule.id} revoked by @bob" in fake.message(
        CHAT_A, offer.message_id).text, what="the offer shows the revocation")
    assert not fake.message(CHAT_A, offer.message_id).buttons
    assert not await live_rules(service)


async def test_keep_exact_and_revoke_from_the_offer(fake, service):
    first = await submit(service, kind="shell", summary="ls -la build")
    msg = await posted(fake, CHAT_A, first.id)
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="♾️ Always")
    offer = await sent(fake, CHAT_A, "Widen it?")
    query = fake.tap(CHAT_A, offer.message_id, ALICE, button_text="🎯 Keep exact")
    await answer_of(fake, query)
    await fake.wait_until(lambda: "kept exact by @alice" in fake.message(
        CHAT_A, offer.message_id).text, what="kept exact")
    [rule] = await live_rules(service)
    assert rule.match == "ls -la build"
    # A second offer's stale buttons after a revoke: answered, nothing changes.
    second = await submit(service, kind="shell", summary="du -sh build")
    msg = await posted(fake, CHAT_A, second.id)
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="♾️ Always")
    offer2 = await sent(fake, CHAT_A, "<code>du -sh build</code> from")
    rule2 = [r for r in await live_rules(service) if r.id != rule.id][0]
    query = fake.tap(CHAT_A, offer2.message_id, BOB, button_text="🗑 Revoke")
    assert f"Rule #{rule2.id} revoked" in await answer_of(fake, query)
    query = fake.tap(CHAT_A, offer2.message_id, BOB, data=f"rule:{rule2.id}:w0")
    assert "no longer live" in await answer_of(fake, query)
    assert [r.id for r in await live_rules(service)] == [rule.id]


async def test_always_without_a_shell_kind_makes_an_exact_rule_and_no_offer(fake, service):
    approval = await submit(service, kind="http", summary="GET https://example.com")
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="♾️ Always")
    await answer_of(fake, query)
    [rule] = await live_rules(service)
    assert (rule.match, rule.run_id, rule.expires_at) == ("GET https://example.com", None, None)
    await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice")
    assert not [c for c in fake.calls_of("sendMessage") if "Widen" in str(c.params["text"])]


# --- 💬 Deny with reason --------------------------------------------------------------


@pytest.fixture
async def api_service(fake, db_url):
    """The bot with its socket (what agents use)."""
    async with served_on_a_socket(fake, db_url) as svc:
        yield svc


async def test_a_reason_reaches_the_agent(fake, api_service):
    svc = api_service
    async with socket_client(svc) as api:
        created = await api.post("/v1/approvals", json={
            "agent": "claude-code", "kind": "Bash", "summary": "rm -rf /tmp/cache"})
        assert created.status_code == 201, created.text
        approval_id = created.json()["id"]
        waiting = asyncio.create_task(api.get(f"/v1/approvals/{approval_id}",
                                              params={"wait": 30}))
        msg = await posted(fake, CHAT_A, approval_id)
        query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="💬 Deny with reason")
        assert "reason" in await answer_of(fake, query)
        ask = await prompt(fake, svc, CHAT_A, "Deny with a reason")
        assert ask.reply_markup["force_reply"] is True
        assert ask.reply_markup.get("selective") is True
        assert ask.reply_to_message_id == msg.message_id
        assert approval_id in ask.text and "@alice" in ask.text
        assert "rm -rf /tmp/cache" in ask.text
        # Still pending, still decidable by anyone until the reply arrives.
        assert (await svc.manager.get(approval_id)).status == "pending"
        fake.send_text(CHAT_A, ALICE, "use the cache dir <b>instead</b>", reply_to=ask.message_id)
        done = (await asyncio.wait_for(waiting, 30)).json()
        assert (done["status"], done["reason"]) == ("denied",
                                                    "use the cache dir <b>instead</b>")
        assert done["decided_by"] == "telegram:1001 (@alice)"
        await edited_to(fake, CHAT_A, msg.message_id,
                        "Denied by @alice: use the cache dir <b>instead</b>")
        await reply_text(fake, CHAT_A, f"❌ Denied: <code>{approval_id}</code>")
        # A second reply to the same prompt decides nothing more.
        fake.send_text(CHAT_A, ALICE, "again", reply_to=ask.message_id)
        await reply_text(fake, CHAT_A, "already answered")
        assert (await svc.manager.get(approval_id)).reason == "use the cache dir <b>instead</b>"


async def test_a_prompt_waits_while_another_approver_decides(fake, service):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="💬 Deny with reason")
    ask = await prompt(fake, service, CHAT_A, "Deny with a reason")
    await service.manager.resolve(approval.id, "approved", "telegram:1002 (@bob)")
    fake.send_text(CHAT_A, ALICE, "too late", reply_to=ask.message_id)
    assert "Already approved by @bob" in await reply_text(fake, CHAT_A, "Already approved")
    final = await service.manager.get(approval.id)
    assert (final.status, final.reason) == ("approved", None)


# --- ✏️ Edit --------------------------------------------------------------------------


async def test_an_edit_reaches_the_agent(fake, api_service):
    svc = api_service
    command = "rm -rf build/ && make"
    async with socket_client(svc) as api:
        created = await api.post("/v1/approvals", json={
            "agent": "claude-code", "kind": "Bash", "summary": command, "accepts_edits": True,
            "payload": {"tool_name": "Bash", "tool_input": {"command": command,
                                                            "timeout": 60}}})
        assert created.status_code == 201, created.text
        approval_id = created.json()["id"]
        msg = await posted(fake, CHAT_A, approval_id)
        query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✏️ Edit")
        assert "edited value" in await answer_of(fake, query)
        copy = await sent(fake, CHAT_A, "Tap to copy")
        assert copy.buttons == [{"text": "📋 Copy", "copy_text": {"text": command}}]
        ask = await prompt(fake, svc, CHAT_A, "Edit and approve")
        assert ask.reply_markup["force_reply"] is True
        assert any(e["type"] == "pre" for e in ask.entities) and command in ask.text
        assert (await svc.manager.get(approval_id)).status == "pending"
        # A reply to the copy message answers as well as one to the prompt.
        fake.send_text(CHAT_A, ALICE, "rm -rf build/cache", reply_to=copy.message_id)
        await edited_to(fake, CHAT_A, msg.message_id, "Approved by @alice, ✏️ edited:")
        done = (await api.get(f"/v1/approvals/{approval_id}")).json()
        assert done["status"] == "approved"
        assert done["edited_payload"] == {"tool_name": "Bash", "tool_input": {
            "command": "rm -rf build/cache", "timeout": 60}}
        assert done["payload"]["tool_input"]["command"] == command  # the original is kept
        assert "rm -rf build/cache" in fake.message(CHAT_A, msg.message_id).text
        fake.send_text(CHAT_A, ALICE, "rm -rf /", reply_to=ask.message_id)
        await reply_text(fake, CHAT_A, "Already approved by @alice (edited)")
        assert (await svc.manager.get(approval_id)).edited_payload["tool_input"]["command"] \
            == "rm -rf build/cache"


async def test_an_agent_that_cannot_take_edits_gets_a_popup_and_stays_pending(fake, service):
    approval = await submit(service, agent="codex", payload={"command": "make deploy"})
    msg = await posted(fake, CHAT_A, approval.id)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✏️ Edit")
    call = await fake.wait_for("answerCallbackQuery",
                               lambda c: c.params["callback_query_id"] == query)
    assert call.params["text"] == ("codex can't run an edited request: approve or deny it "
                                   "as is.")
    assert call.params.get("show_alert") in (True, "true")
    await fake.wait_until(lambda: service.notifier.idle, what="notifier idle")
    assert (await service.manager.get(approval.id)).status == "pending"
    assert not await service.store.run(service.store.find_prompt, CHAT_A, msg.message_id + 1)
    assert len(fake.messages(CHAT_A)) == 1  # no prompt was sent


async def test_a_long_value_is_shown_cut_and_gets_no_copy_button(fake, service):
    value = "x" * 5000
    approval = await submit(service, payload=value, accepts_edits=True)
    msg = await posted(fake, CHAT_A, approval.id)
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✏️ Edit")
    ask = await prompt(fake, service, CHAT_A, "Edit and approve")
    assert "Value truncated" in ask.text
    assert not [m for m in fake.messages(CHAT_A) if "Tap to copy" in (m.text or "")]
    fake.send_text(CHAT_A, ALICE, "short", reply_to=ask.message_id)
    decided = await service.manager.wait(approval.id, 10)
    assert (decided.status, decided.edited_payload) == ("approved", "short")


# --- what decides nothing --------------------------------------------------------------


async def test_unsolicited_text_and_replies_decide_nothing(fake, service):
    approval = await submit(service, payload={"command": "make"}, accepts_edits=True)
    msg = await posted(fake, CHAT_A, approval.id)
    store = service.store  # the bot knows its message once the notifier has recorded it
    await eventually(lambda: store.run(store.find_message, CHAT_A, msg.message_id),
                     "the request's message recorded")
    fake.send_text(CHAT_A, ALICE, "approve")
    fake.send_text(CHAT_A, ALICE, "yes", reply_to=msg.message_id)  # a reply to the request
    assert "decides nothing" in await reply_text(fake, CHAT_A, "decides nothing")
    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="💬 Deny with reason")
    ask = await prompt(fake, service, CHAT_A, "Deny with a reason")
    mine = fake.send_text(CHAT_A, ALICE, "my own message")
    assert mine
    own = fake.messages(CHAT_A, include_users=True)[-1]
    fake.send_text(CHAT_A, ALICE, "ok", reply_to=own.message_id)  # a reply to a user's message
    # Another approver, a stranger: neither answers Alice's prompt.
    fake.send_text(CHAT_A, BOB, "deny it", reply_to=ask.message_id)
    assert "This prompt is for @alice" in await reply_text(fake, CHAT_A, "prompt is for")
    fake.send_text(CHAT_A, EVE, "deny it", reply_to=ask.message_id)
    await reply_text(fake, CHAT_A, "not an approver")
    # A command replying to the prompt is a command, not an answer.
    fake.send_text(CHAT_A, ALICE, "/pending", reply_to=ask.message_id)
    await reply_text(fake, CHAT_A, "Pending requests")
    await fake.wait_until(lambda: service.notifier.idle, what="notifier idle")
    assert (await service.manager.get(approval.id)).status == "pending"
    prompt_row = await service.store.run(service.store.find_prompt, CHAT_A, ask.message_id)
    assert prompt_row.answered_at is None
    # Alice's own reply still works afterwards.
    fake.send_text(CHAT_A, ALICE, "no", reply_to=ask.message_id)
    assert (await service.manager.wait(approval.id, 10)).reason == "no"


BUTTONS = ["🔁 This session", "♾️ Always", "💬 Deny with reason", "✏️ Edit"]


async def test_strangers_and_other_chats_can_use_no_button(fake, service):
    await run(service, "sess-1")
    approval = await submit(service, run_id="sess-1", payload={"command": "make"},
                            accepts_edits=True)
    msg = await posted(fake, CHAT_A, approval.id)
    # A stranger in an approver chat.
    for text in BUTTONS:
        query = fake.tap(CHAT_A, msg.message_id, EVE, button_text=text)
        assert "not allowed" in await answer_of(fake, query)
    # An allowed user in a chat that is not an approver chat (a copied or forged button).
    fake.send_text(OTHER_GROUP, BOB, "hi", chat_type="group")
    for action in ("session", "always", "reason", "edit"):
        query = fake.tap(OTHER_GROUP, 999, BOB, data=f"appr:{approval.id}:{action}")
        assert "approver chat" in await answer_of(fake, query)
    rule = await service.store.run(service.store.create_rule, _new_rule())
    for user, chat in ((EVE, CHAT_A), (BOB, OTHER_GROUP)):
        for action in ("revoke", "w0", "keep"):
            query = fake.tap(chat, msg.message_id, user, data=f"rule:{rule.id}:{action}")
            assert "⛔" in await answer_of(fake, query)
    # Commands too.
    fake.send_text(OTHER_GROUP, BOB, f"/revoke {rule.id}", chat_type="group")
    fake.send_text(CHAT_B, EVE, "/rules")
    await reply_text(fake, OTHER_GROUP, "not an approver chat")
    await reply_text(fake, CHAT_B, "not an approver")
    await fake.wait_until(lambda: service.notifier.idle, what="notifier idle")
    assert (await service.manager.get(approval.id)).status == "pending"
    assert [r.id for r in await live_rules(service)] == [rule.id]
    assert len(fake.messages(CHAT_A)) == 1  # no prompt was sent for anyone
    assert not [c for c in fake.calls_of("sendMessage")
                if int(c.params["chat_id"]) == OTHER_GROUP and "Rule" in str(c.params["text"])]


def _new_rule(**kw):
    from storage.rule_records import NewRule

    values = {"agent": "claude-code", "kind": "Bash", "match": "git *",
              "created_by": "telegram:1001 (@alice)", "chat_id": CHAT_A,
              "origin": "git status -s", **kw}
    return NewRule(**values)


# --- rules at work: no message, a digest line edited in place ---------------------------


async def test_a_rule_approves_without_a_message_and_the_digest_is_edited_in_place(fake,
                                                                                    service):
    digest = digest_of(service)
    digest.min_edit_interval = 0.3
    rule = await service.store.run(service.store.create_rule, _new_rule())
    first = await submit(service, agent="claude-code", kind="Bash", summary="git status")
    assert (first.status, first.decided_by) == ("approved", f"rule:{rule.id} (@alice)")
    line = await sent(fake, CHAT_A, f"Rule #{rule.id} approved 1 request from")
    assert "git *" in line.text and "claude-code" in line.text
    assert line.button_texts == [f"🗑 Revoke rule #{rule.id}"]
    for n in range(2, 6):
        approval = await submit(service, agent="claude-code", kind="Bash", summary=f"git log -{n}")
        assert approval.status == "approved"
    await fake.wait_until(lambda: "approved 5 requests" in fake.message(
        CHAT_A, line.message_id).text, what="the digest line shows 5", timeout=15)
    digest_sends = [c for c in fake.calls_of("sendMessage")
                    if f"Rule #{rule.id} approved" in str(c.params["text"])]
    assert len(digest_sends) == 1  # edited in place, not sent anew
    edits = [c for c in fake.calls_of("editMessageText")
             if int(c.params["message_id"]) == line.message_id]
    # Paced: 4 more uses took at most a few edits, each ≥ the interval apart.
    assert 1 <= len(edits) <= 4
    assert all(b.at - a.at >= 0.25 for a, b in zip(edits, edits[1:], strict=False))
    # None of the auto-approved requests got a message of its own.
    assert [m for m in fake.messages(CHAT_A) if "Request from agent" in (m.text or "")] == []
    stored = await service.store.run(service.store.get_rule, rule.id)
    assert stored.uses == 5
    await eventually(lambda: _nothing_owed(service), "every digest line settled")


async def _nothing_owed(service: Service) -> bool:
    return await service.store.run(service.store.rule_uses_owed) == []


async def test_a_cli_rule_reports_to_the_first_approver_chat(fake, service):
    digest_of(service).min_edit_interval = 0.2
    rule = await service.store.run(service.store.create_rule, _new_rule(chat_id=None))
    await submit(service, agent="claude-code", kind="Bash", summary="git diff")
    await sent(fake, CHAT_A, f"Rule #{rule.id} approved 1 request")


# --- /rules and /revoke ------------------------------------------------------------------


async def test_rules_lists_and_revokes(fake, service):
    await run(service, "sess-9")
    store = service.store
    fake.send_text(CHAT_A, ALICE, "/rules")
    await reply_text(fake, CHAT_A, "No live rules")
    first = await store.run(store.create_rule, _new_rule())
    second = await store.run(store.create_rule, _new_rule(
        agent="<b>codex</b>", kind="shell", match="npm test", run_id="sess-9"))
    await submit(service, agent="claude-code", kind="Bash", summary="git status")
    fake.send_text(CHAT_A, ALICE, "/rules")
    listing = await sent(fake, CHAT_A, "Live rules")
    assert "Live rules (2)" in listing.text
    assert "<b>codex</b>" in listing.text  # the agent's words, escaped
    assert "uses 1" in listing.text and "session sess-9" in listing.text
    assert listing.button_texts == [f"🗑 Revoke #{first.id}", f"🗑 Revoke #{second.id}"]
    query = fake.tap(CHAT_A, listing.message_id, BOB, button_text=f"🗑 Revoke #{first.id}")
    assert "revoked" in await answer_of(fake, query)
    await fake.wait_until(lambda: "Live rules (1)" in fake.message(
        CHAT_A, listing.message_id).text, what="the listing re-rendered")
    assert fake.message(CHAT_A, listing.message_id).button_texts == [
        f"🗑 Revoke #{second.id}"]
    revoked = await store.run(store.get_rule, first.id)
    assert revoked.revoked_by == "telegram:1002 (@bob)"
    assert (await submit(service, agent="claude-code", kind="Bash",
                         summary="git status")).status == "pending"
    # /revoke <id>, twice, and an unknown id.
    fake.send_text(CHAT_B, BOB, f"/revoke {second.id}")
    assert "npm test" in await reply_text(fake, CHAT_B, f"Rule #{second.id} revoked")
    fake.send_text(CHAT_B, BOB, f"/revoke {second.id}")
    await reply_text(fake, CHAT_B, "already revoked or ended")
    fake.send_text(CHAT_B, BOB, "/revoke 9999")
    await reply_text(fake, CHAT_B, "No rule")
    fake.send_text(CHAT_B, BOB, "/revoke")
    await reply_text(fake, CHAT_B, "Usage: /revoke")
    assert not await live_rules(service)


async def test_many_rules_fit_one_message(fake, service):
    store = service.store
    for n in range(30):
        await store.run(store.create_rule, _new_rule(agent="a" * 200, kind="k" * 200,
                                                     match=f"{n} " + "m" * 490))
    fake.send_text(CHAT_A, ALICE, "/rules")
    listing = await sent(fake, CHAT_A, "Live rules")
    assert "Live rules (30)" in listing.text and "more (tapgate rules list)" in listing.text
    assert len(listing.text.encode("utf-16-le")) // 2 <= 4096
    assert len(listing.buttons) <= 100


async def test_commands_are_registered(fake, service):
    call = await fake.wait_for("setMyCommands")
    assert {"rules", "revoke"} <= {c["command"] for c in _commands(call.params["commands"])}


def _commands(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


async def test_callback_data_fits_for_the_longest_ids():
    from datetime import UTC, datetime, timedelta

    from bot.telegram import render
    from bot.telegram import render_rules as rr
    from storage.records import Approval
    from storage.rule_records import Rule

    now = datetime(2026, 11, 29, tzinfo=UTC)
    approval = Approval(id="x" * 40, agent="a", kind="Bash", summary="git status -s",
                        status="pending", run_id="r", created_at=now,
                        expires_at=now + timedelta(hours=1), payload={"command": "git"})
    rule = Rule(id=10**18 - 1, agent="a", kind="Bash", match="git status -s", created_by="x",
                created_at=now, origin="git status -s")
    markups = [render.request_keyboard(approval), rr.widen_offer(rule, ["a *", "b *"])[1],
               rr.rules_listing([rule])[1], rr.revoke_markup(rule)]
    data = [b.callback_data for m in markups for row in m.inline_keyboard for b in row]
    assert len(data) == 6 + 4 + 1 + 1
    assert max(len(d.encode()) for d in data) <= 64
    decided = approval.model_copy(update={"status": "approved", "decided_at": now,
                                          "decided_by": "rule:12 (@alice)"})
    assert "Approved by rule #12 (made by @alice)" in render.outcome_line(decided)


# --- the fake Bot API checks what these messages use ---------------------------------


async def test_the_fake_checks_force_reply_copy_text_styles_and_carries_replies(fake):
    from telegram import Bot, CopyTextButton, ForceReply, InlineKeyboardButton, InlineKeyboardMarkup
    from telegram.error import BadRequest

    def one(**kw) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup([[InlineKeyboardButton("b", **kw)]])

    async with Bot(fake.token, base_url=f"{fake.url}/bot",
                   base_file_url=f"{fake.url}/file/bot") as bot:
        asked = await bot.send_message(CHAT_A, "why?", reply_markup=ForceReply(
            selective=True, input_field_placeholder="p" * 64))
        assert fake.message(CHAT_A, asked.message_id).reply_markup == {
            "force_reply": True, "selective": True, "input_field_placeholder": "p" * 64}
        with pytest.raises(BadRequest, match="placeholder"):
            await bot.send_message(CHAT_A, "x", reply_markup=ForceReply(
                input_field_placeholder="p" * 65))
        await bot.send_message(CHAT_A, "x", reply_markup=one(copy_text=CopyTextButton("c" * 256)))
        for bad in ("", "c" * 257):
            with pytest.raises(BadRequest, match="(?i)copy_text"):
                await bot.send_message(CHAT_A, "x", reply_markup=one(copy_text=CopyTextButton(bad)))
        for style in ("danger", "success", "primary"):
            await bot.send_message(CHAT_A, "x", reply_markup=one(callback_data="d", style=style))
        with pytest.raises(BadRequest, match="(?i)style"):
            await bot.send_message(CHAT_A, "x", reply_markup=one(callback_data="d", style="red"))
        with pytest.raises(BadRequest, match="(?i)text buttons"):
            await bot.send_message(CHAT_A, "x", reply_markup=one(style="danger"))
        answer = await bot.send_message(CHAT_A, "see above", reply_to_message_id=asked.message_id)
        assert fake.message(CHAT_A, answer.message_id).reply_to_message_id == asked.message_id
    fake.send_text(CHAT_A, ALICE, "because", reply_to=asked.message_id)
    fake.send_text(CHAT_A, ALICE, "to nothing", reply_to=12345)
    replied, unknown = [u["message"] for u in fake.pending_updates[-2:]]
    assert replied["reply_to_message"]["message_id"] == asked.message_id
    assert replied["reply_to_message"]["text"] == "why?"
    assert "reply_to_message" not in replied["reply_to_message"]
    assert "reply_to_message" not in unknown


async def test_uses_counted_while_the_bot_was_down_get_their_line_at_start(fake, db_url):
    from storage.records import NewApproval
    from storage.store import Store

    store = Store.from_url(db_url)
    try:
        rule = store.create_rule(_new_rule())
        for n in range(3):
            approval, _ = store.create_approval(NewApproval(
                agent="claude-code", kind="Bash", summary=f"git show {n}", ttl_seconds=60,
                chat_ids=[CHAT_A, CHAT_B]))
            assert approval.status == "approved"
    finally:
        store.close()
    svc = Service(settings_for(fake, db_url), with_socket=False)
    await svc.start()
    try:
        line = await sent(fake, CHAT_A, f"Rule #{rule.id} approved 3 requests")
        assert line.button_texts == [f"🗑 Revoke rule #{rule.id}"]
        assert not [m for m in fake.messages(CHAT_B)]  # neither a line nor the requests
    finally:
        await svc.stop()


def test_an_edited_outcome_fits_whatever_the_lengths():
    from datetime import UTC, datetime, timedelta

    from bot.telegram import render
    from bot.telegram.fit import visible_length

    now = datetime(2026, 11, 29, tzinfo=UTC)
    big = {"tool_input": {"command": "<&>" * 20_000}}
    approval = render.Approval(
        id="a" * 11, agent="x" * 200, kind="Bash", summary="s" * 500, status="approved",
        payload=big, decided_by="telegram:1 (@" + "u" * 300 + ")", decided_at=now,
        created_at=now, expires_at=now + timedelta(hours=1), reason="r" * 4000,
        edited_payload={"tool_input": {"command": "<b>&" * 10_000}})
    text = render.request_text(approval)
    assert visible_length(text) <= 4096
    assert "✏️ <b>edited</b>" in text and "&lt;b&gt;&amp;" in text
    assert render.already_answer(approval).startswith("Already approved by @uuu")
