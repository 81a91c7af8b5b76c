"""The decisions beyond Approve/Deny, in Telegram: 🔁 This session, ♾️ Always,
💬 Deny with reason, ✏️ Edit, and the rules they make (widen, keep, revoke, ``/rules``,
``/revoke``).

Every button goes through :func:`on_callback`: the gate first (strangers and other
chats are refused exactly as for Approve/Deny), then one compare-and-set in the
store. A reason or an edit is asked for with a ForceReply message, stored as a
prompt naming the request and the approver who tapped; only that approver's reply
to that very message, in that chat, answers it (once: a compare-and-set on the
prompt) and decides. Any other text — a reply to something else, a message that
replies to nothing, a reply by someone else — decides nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re

from telegram import Message, MessageEntity, ReplyParameters, Update, User
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import rules
from bot.telegram import render
from bot.telegram import render_rules as rr
from bot.telegram.digest_taps import is_digest_data, on_digest_tap
from bot.telegram.gate import Access
from bot.telegram.handlers import (
    FrontEnd,
    _admitted,
    _answer,
    _reply,
    answer_already,
    decide_by_tap,
    describe,
    front,
    guarded,
    tap_allowed,
)
from storage.approvals import parse_action
from storage.approvers import may_decide
from storage.errors import AlreadyFinal, Conflict, InvalidArgument, NotFound, VoteRefused
from storage.records import Approval
from storage.rules import NEVER_RULED, is_shell_kind

log = logging.getLogger(__name__)

RULE_DATA = re.compile(r"^rule:([0-9]{1,18}):(revoke|keep|w[0-9])$")


def asker(user: User) -> str:
    """How a prompt names the approver it asks: ``@alice``, else the full name."""
    return f"@{user.username}" if user.username else (user.full_name or str(user.id))


@guarded
async def on_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every button: the gate, then the request's or the rule's action."""
    query = update.callback_query
    fe = front(context)
    if not await tap_allowed(query, fe):
        return
    data = query.data or ""
    try:
        approval_id, action = parse_action(data)
    except InvalidArgument:
        pass
    else:
        if action in ("approve", "deny"):
            await decide_by_tap(query, fe)
        else:
            await _request_action(query, context, fe, approval_id, action)
        return
    rule = RULE_DATA.match(data)
    if rule:
        await _rule_action(query, fe, int(rule.group(1)), rule.group(2))
        return
    if is_digest_data(data):  # Approve all / Deny all / a page of a burst digest
        await on_digest_tap(query, fe)
        return
    log.warning("malformed callback data %r from %s", data, describe(query.from_user))
    await _answer(query, render.INVALID_BUTTON)


# --- request buttons ------------------------------------------------------------------


async def _pending(query, fe: FrontEnd, approval_id: str) -> Approval | None:
    """The request if it can still be decided; otherwise the query is answered."""
    try:
        approval = await fe.manager.get(approval_id)
    except NotFound:
        await _answer(query, render.UNKNOWN_REQUEST)
        return None
    if approval.is_final or approval.expires_at <= fe.store.clock():
        await answer_already(query, fe, approval if approval.is_final else
                             approval.model_copy(update={"status": "expired"}))
        return None
    return approval


async def _request_action(query, context: ContextTypes.DEFAULT_TYPE, fe: FrontEnd,
                          approval_id: str, action: str) -> None:
    approval = await _pending(query, fe, approval_id)
    if approval is None:
        return
    if action in ("session", "always"):
        await _decide_with_rule(query, context, fe, approval, action)
    else:
        await _ask(query, context, fe, approval, action)


async def _decide_with_rule(query, context: ContextTypes.DEFAULT_TYPE, fe: FrontEnd,
                            approval: Approval, action: str) -> None:
    """Approve and make a rule, in one transaction: if the request was decided otherwise
    meanwhile, nothing is approved and no rule is made."""
    user, message = query.from_user, query.message
    if approval.kind in NEVER_RULED:
        await _answer(query, rr.NO_RULES_FOR_KIND, alert=True)
        return
    if action == "session" and approval.run_id is None:
        await _answer(query, rr.NO_SESSION, alert=True)
        return
    by = describe(user)
    chat_id = message.chat.id if message is not None else None
    try:
        if action == "session":
            new_rule = rules.session_rule(approval, by, chat_id, fe.session_rule_ttl,
                                          fe.store.clock())
        else:
            new_rule = rules.always_rule(approval, by, chat_id)
        approved, rule = await fe.manager.decide_with_rule(approval.id, by, new_rule)
    except AlreadyFinal as exc:
        await answer_already(query, fe, exc.approval)
        return
    except NotFound:
        await _answer(query, render.UNKNOWN_REQUEST)
        return
    except InvalidArgument as exc:
        await _answer(query, rr.popup(f"⚠️ {exc}"), alert=True)
        return
    except VoteRefused as exc:  # not among the route's approvers: no rule either
        await _answer(query, render.vote_refused(exc), alert=True)
        return
    await asyncio.sleep(0)  # let the woken agents' waits return before we build the answer
    await _answer(query, rr.rule_made_answer(rule))
    if action != "always" or chat_id is None or not is_shell_kind(approval.kind):
        return
    options = rules.widen_options(approval.summary, approval.kind)
    if not options:
        return
    text, markup = rr.widen_offer(rule, options)
    try:  # the query is answered: this may wait on a group's pacer without holding anyone
        await context.bot.send_message(chat_id, text, parse_mode=render.PARSE_MODE,
                                       reply_markup=markup, message_thread_id=_topic_of(message))
    except TelegramError as exc:
        log.warning("could not offer to widen rule %s in chat %s: %s", rule.id, chat_id, exc)


def _topic_of(message: Message | None) -> int | None:
    """The forum topic a tapped message is in (bot/topics.py): what the bot says about it
    goes there too. None: the main thread (also for an inaccessible message)."""
    return message.message_thread_id if getattr(message, "is_topic_message", False) else None


async def _ask(query, context: ContextTypes.DEFAULT_TYPE, fe: FrontEnd, approval: Approval,
               action: str) -> None:
    """💬 or ✏️: ask the tapper, by ForceReply in this chat, for a reason or an edit. The
    request stays pending (and decidable by anyone) until the reply comes."""
    user, message = query.from_user, query.message
    if message is None:
        await _answer(query, render.INVALID_BUTTON)
        return
    if not may_decide(approval.approvers, approval.escalated_at is not None, describe(user)):
        # Asking would be a promise the reply could not keep (its decision is refused).
        await _answer(query, render.NOT_AN_APPROVER, alert=True)
        return
    chat_id = message.chat.id
    reply_to = ReplyParameters(message.message_id, allow_sending_without_reply=True)
    if action == "edit":
        if not approval.accepts_edits:
            await _answer(query, rr.cannot_edit_answer(approval), alert=True)
            return
        found = rules.editable_field(approval.payload)
        if found is None:
            await _answer(query, rr.NOTHING_TO_EDIT, alert=True)
            return
        path, value = found
        await _answer(query, rr.EDIT_ASKED)
        copy = rr.copy_markup(value)
        if copy is not None:
            # A reply to this message answers too (it is the one the value comes from).
            copied = await context.bot.send_message(chat_id, rr.COPY_TEXT, reply_markup=copy,
                                                    message_thread_id=_topic_of(message))
            await fe.store.run(fe.store.create_prompt, chat_id, copied.message_id, approval.id,
                               action, user.id)
        text = rr.edit_prompt(approval, path, value, asker(user))
        markup = rr.edit_markup(path)
    else:
        await _answer(query, rr.REASON_ASKED)
        text, markup = rr.reason_prompt(approval, asker(user)), rr.reason_markup()
    sent = await context.bot.send_message(chat_id, text, parse_mode=render.PARSE_MODE,
                                          reply_markup=markup, reply_parameters=reply_to,
                                          message_thread_id=_topic_of(message))
    await fe.store.run(fe.store.create_prompt, chat_id, sent.message_id, approval.id, action,
                       user.id)


# --- replies to a prompt --------------------------------------------------------------


def _named_in(message: Message) -> str | None:
    """Whom a prompt asks: the first mention in the bot's own message, if any."""
    for entity, text in message.parse_entities([MessageEntity.MENTION,
                                                MessageEntity.TEXT_MENTION]).items():
        if entity.type == MessageEntity.TEXT_MENTION and entity.user is not None:
            return asker(entity.user)
        return text
    match = re.search(r"\n(@[A-Za-z0-9_]{3,32}), reply to this message", message.text or "")
    return match.group(1) if match else None


@guarded
async def on_reply(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text message that replies to one of the bot's messages. Only the reply of the
    approver who was asked, to the prompt itself, decides; everything else nothing."""
    message, chat, user = update.effective_message, update.effective_chat, update.effective_user
    target = message.reply_to_message if message is not None else None
    if target is None or chat is None or user is None or target.from_user is None \
            or target.from_user.id != context.bot.id:
        return
    fe = front(context)
    prompt = await fe.store.run(fe.store.find_prompt, chat.id, target.message_id)
    if prompt is None:
        # A reply to a request's own message reads like a decision; it is not one.
        if fe.gate.check(user, chat) is Access.ALLOWED and await fe.store.run(
                fe.store.find_message, chat.id, target.message_id) is not None:
            await _reply(update, rr.REPLIES_DECIDE_NOTHING)
        return
    if not _admitted(update, context):
        return
    if prompt.user_id != user.id:
        await _reply(update, rr.prompt_for_other(_named_in(target)))
        return
    if prompt.answered_at is not None:
        await _reply(update, rr.PROMPT_ANSWERED)
        return
    text = message.text or ""
    if not text.strip():
        await _reply(update, rr.EMPTY_REPLY)
        return
    try:
        approval = await fe.manager.get(prompt.approval_id)
    except NotFound:
        await _reply(update, render.no_such_request(prompt.approval_id))
        return
    if approval.is_final:
        await _reply(update, render.already_reply(approval))
        return
    edited = None
    if prompt.action == "edit":
        found = rules.editable_field(approval.payload)
        if found is None or not approval.accepts_edits:
            await _reply(update, render.esc(rr.NOTHING_TO_EDIT))
            return
        edited = rules.with_edit(approval.payload, found[0], text)
    if not await fe.store.run(fe.store.answer_prompt, prompt.id):
        await _reply(update, rr.PROMPT_ANSWERED)
        return
    by = describe(user)
    try:
        if prompt.action == "edit":
            decided = await fe.manager.resolve(approval.id, "approved", by,
                                               edited_payload=edited)
        else:
            decided = await fe.manager.resolve(approval.id, "denied", by, reason=text)
    except AlreadyFinal as exc:
        await _reply(update, render.already_reply(exc.approval))
        return
    except InvalidArgument as exc:
        await _reply(update, render.esc(f"⚠️ {exc}"))
        return
    except VoteRefused as exc:  # the prompt's tap was checked; kept for any refusal
        await _reply(update, render.esc(render.vote_refused(exc)))
        return
    await _reply(update, render.decided_reply(decided))


# --- rules ----------------------------------------------------------------------------


async def _rule_action(query, fe: FrontEnd, rule_id: int, action: str) -> None:
    """``rule:<id>:revoke|keep|w<n>`` from a widen offer, ``/rules`` or a digest line."""
    by = describe(query.from_user)
    message = query.message
    try:
        rule = await fe.store.run(fe.store.get_rule, rule_id)
        if action == "revoke":
            rule = await fe.store.run(fe.store.revoke_rule, rule_id, by)
        elif action.startswith("w"):
            options = rules.widen_options(rule.origin or "", rule.kind)
            n = int(action[1:])
            if n >= len(options):
                await _answer(query, render.INVALID_BUTTON)
                return
            rule = await fe.store.run(fe.store.widen_rule, rule_id, options[n], by)
        elif not rule.is_live(fe.store.clock()):
            raise Conflict(f"rule {rule_id} is not live")
    except NotFound:
        await _answer(query, rr.popup(f"⚠️ No rule #{rule_id}."))
        return
    except Conflict:
        await _answer(query, rr.rule_gone(rule_id))
        if message is not None and getattr(message, "reply_markup", None) is not None \
                and not rr.is_rules_listing(message.text):
            await _edit(message, message.text_html, None)
        return
    if action == "revoke":
        await _answer(query, rr.popup(f"🗑 Rule #{rule_id} revoked."))
        if message is None:
            return
        if rr.is_rules_listing(message.text):
            live = await fe.store.run(fe.store.list_rules, True)
            await _edit(message, *rr.rules_listing(live))
        else:
            await _edit(message, f"{message.text_html}\n\n{rr.rule_revoked_line(rule_id, render.who(by))}",
                        None)
        return
    widened = action != "keep"
    await _answer(query, rr.popup(f"♾️ Rule #{rule_id} now matches {rule.match}"))
    if message is not None:
        await _edit(message, rr.rule_settled(rule, render.who(by), widened),
                    rr.revoke_markup(rule))


async def _edit(message, text: str, markup) -> None:
    """Best effort: the rule changed already; a message that can't show it is logged."""
    try:
        await message.edit_text(text, parse_mode=render.PARSE_MODE, reply_markup=markup)
    except TelegramError as exc:
        log.info("could not edit message %s in chat %s: %s", message.message_id,
                 message.chat.id, exc)


@guarded
async def on_rules(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/rules: live rules, a Revoke button each."""
    if not _admitted(update, context):
        return
    store = front(context).store
    live = await store.run(store.list_rules, True)
    text, markup = rr.rules_listing(live)
    await _reply(update, text, markup)


@guarded
async def on_revoke(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/revoke <rule id>."""
    if not _admitted(update, context):
        return
    args = context.args or []
    if len(args) != 1:
        await _reply(update, rr.REVOKE_USAGE)
        return
    raw = args[0].lstrip("#")
    if not raw.isdigit() or len(raw) > 18:
        await _reply(update, rr.no_such_rule(args[0]))
        return
    store = front(context).store
    try:
        rule = await store.run(store.revoke_rule, int(raw), describe(update.effective_user))
    except NotFound:
        await _reply(update, rr.no_such_rule(args[0]))
        return
    except Conflict:
        await _reply(update, rr.rule_not_live(int(raw)))
        return
    await _reply(update, rr.revoked_reply(rule))
