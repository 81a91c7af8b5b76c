"""A handler that fails answers the user with a short error (and logs it), never silence."""

from __future__ import annotations

import logging

import pytest

from tests.test_telegram import ALICE, CHAT_A, answer_of, posted, submit


def boom(*args, **kwargs):
    raise RuntimeError("the database caught fire")


async def reply_in(fake, chat_id: int, after: int):
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and fake.calls.index(c) >= after)
    return call.params["text"]


@pytest.mark.parametrize("command,target,attribute", [
    ("/spend", "store", "summarize_ledger"),
    ("/spend day 7d", "store", "summarize_ledger"),
    ("/pending", "store", "pending_in_chat"),  # a chat requests go to: its own
    ("/approve {id}", "manager", "resolve"),
    ("/deny {id} not now", "manager", "resolve"),
    ("/help", "store", "nothing"),  # control: a command that does not fail
])
async def test_a_failing_command_answers_with_an_error(fake, service, monkeypatch, caplog,
                                                      command, target, attribute):
    approval = await submit(service)
    await posted(fake, CHAT_A, approval.id)
    owner = service.store if target == "store" else service.manager
    failing = attribute != "nothing"
    if failing:
        monkeypatch.setattr(owner, attribute, boom)
    before = len(fake.calls)
    fake.send_text(CHAT_A, ALICE, command.format(id=approval.id))
    text = await reply_in(fake, CHAT_A, before)
    if not failing:
        assert "Something went wrong" not in text
        return
    assert text.startswith("⚠️ Something went wrong;")
    assert "fire" not in text  # the details are for the log, not the chat
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert any("the database caught fire" in str(r.exc_info[1]) for r in failures)


async def test_a_failing_tap_is_answered_with_an_error(fake, service, monkeypatch):
    approval = await submit(service)
    msg = await posted(fake, CHAT_A, approval.id)

    async def broken(*args, **kwargs):
        raise RuntimeError("resolve exploded")

    monkeypatch.setattr(service.manager, "resolve", broken)
    query = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
    assert (await answer_of(fake, query)).startswith("⚠️ Something went wrong")
