"""Telegram update handlers: small, and deciding nothing themselves.

Each checks who is asking and where (:mod:`bot.telegram.gate`), calls the
approval manager or the store, and answers with a text from
:mod:`bot.telegram.render`. Every callback query is answered, even for forged
data, strangers, other chats and errors; an answer Telegram refuses (the query
is too old because the tap came while the bot was down) does not undo the
decision, which is already committed. Every handler is wrapped by
:func:`guarded`: a failure is logged and the user gets a short error instead
of silence.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from telegram import Update, User
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.approvals import ApprovalManager
from bot.telegram import render
from bot.telegram.chart import daily_spend_png
from bot.telegram.fit import clip
from bot.telegram.gate import Access, Gate, Refusals
from bot.telegram.notifier import TelegramNotifier
from bot.window import describe as window_label
from bot.window import parse_instant
from storage.approvals import parse_callback_data
from storage.errors import AlreadyFinal, AlreadyVoted, InvalidArgument, NotFound, VoteRefused
from storage.store import Store

log = logging.getLogger(__name__)

Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


@dataclass
class FrontEnd:
    """What the handlers need, kept in ``application.bot_data["tapgate"]``."""

    manager: ApprovalManager
    store: Store
    notifier: TelegramNotifier
    gate: Gate
    refusals: Refusals = field(default_factory=Refusals)
    extras: dict[str, Any] = field(default_factory=dict)
    session_rule_ttl: float = 8 * 3600.0  # TAPGATE_SESSION_RULE_TTL
    digest: Any = None  # bot.telegram.rule_digest.RuleDigest, once wired
    router: Any = None  # bot.routing.Router: which chats see which requests


def front(context: ContextTypes.DEFAULT_TYPE) -> FrontEnd:
    return context.application.bot_data["tapgate"]


def describe(user: User) -> str:
    """``telegram:<id> (@username)`` — what ``decided_by`` records."""
    name = f"@{user.username}" if user.username else (user.full_name or str(user.id))
    return f"telegram:{user.id} ({name})"


async def _answer(query, text: str, alert: bool = False) -> None:
    try:
        await query.answer(text, show_alert=alert)
    except TelegramError as exc:  # e.g. "query is too old": the decision still counts
        log.info("could not answer callback query %s: %s", query.id, exc)


async def _reply(update: Update, text: str, markup=None) -> None:
    await update.effective_message.reply_text(text, parse_mode=render.PARSE_MODE,
                                              reply_markup=markup)


def guarded(handler: Handler) -> Handler:
    """``handler``, but a failure is logged and answered with a short error."""

    @functools.wraps(handler)
    async def run(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            await handler(update, context)
        except Exception:
            log.exception("%s failed on update %s", handler.__name__,
                          getattr(update, "update_id", "?"))
            try:
                if update.callback_query is not None:
                    await _answer(update.callback_query, render.FAILED)
                elif update.effective_message is not None:
                    await _reply(update, render.FAILED)
            except Exception as exc:  # Telegram unreachable too: the log has the failure
                log.warning("could not report the failure to the user: %s", exc)

    return run


async def tap_allowed(query, fe: FrontEnd) -> bool:
    """True if the tapper may decide in this chat; otherwise the query is answered with
    a refusal (and the refusal logged). Every button goes through this first
    (:func:`bot.telegram.decisions.on_callback`)."""
    user = query.from_user
    message = query.message
    access = fe.gate.check(user, message.chat if message is not None else None)
    if access is Access.ALLOWED:
        return True
    log.warning("refused tap by %s in chat %s (%s) on %r", user and describe(user),
                message and message.chat.id, access.value, query.data)
    text = (render.REFUSE_TAP_STRANGER if access is Access.STRANGER
            else render.REFUSE_TAP_ELSEWHERE)
    await _answer(query, text, alert=True)
    return False


async def answer_already(query, fe: FrontEnd, approval) -> None:
    """A tap on a request that is already final: say how it ended, and repair the
    tapped message if it still shows buttons."""
    await _answer(query, render.already_answer(approval))
    message = query.message
    if message is not None and getattr(message, "reply_markup", None) is not None:
        fe.notifier.repair(message.chat.id, message.message_id, approval)


@dataclass
class Decided:
    """What one tap's decision on one request came to: ``decided`` (this tap decided
    it), ``voted`` (counted; more approvers needed), ``already`` (final before),
    ``refused`` (a vote that does not count: ``error`` says why), ``unknown``."""

    result: str
    approval: Any = None
    error: Exception | None = None


async def decide_request(fe: FrontEnd, approval_id: str, status: str, user: User) -> Decided:
    """The one path every tap decides a request by (its own buttons, a digest's line
    or its Approve all): one compare-and-set, or a vote, through the manager."""
    try:
        approval = await fe.manager.resolve(approval_id, status, describe(user))
    except NotFound:
        return Decided("unknown")
    except AlreadyFinal as exc:
        return Decided("already", exc.approval)
    except (AlreadyVoted, VoteRefused) as exc:  # a second vote, the requester's, a stranger's
        return Decided("refused", exc.approval, exc)
    return Decided("voted" if approval.status == "pending" else "decided", approval)


async def decide_by_tap(query, fe: FrontEnd) -> None:
    """A tap on Approve or Deny (``appr:<id>:approve|deny``), by an allowed user."""
    user = query.from_user
    try:
        approval_id, status = parse_callback_data(query.data or "")
        decided = await decide_request(fe, approval_id, status, user)
    except InvalidArgument:
        log.warning("malformed callback data %r from %s", query.data, describe(user))
        await _answer(query, render.INVALID_BUTTON)
        return
    if decided.result == "unknown":
        await _answer(query, render.UNKNOWN_REQUEST)
    elif decided.result == "already":
        await answer_already(query, fe, decided.approval)
    elif decided.result == "refused":
        await _answer(query, render.vote_refused(decided.error), alert=True)
    else:
        await asyncio.sleep(0)  # let the woken agents' waits return before we answer
        await _answer(query, render.decided_answer(decided.approval))


def _admitted(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """True if the sender may use commands in this chat. Otherwise a refusal is offered
    (rate-limited, sent in the background: never awaited here) and False returned."""
    fe = front(context)
    user, chat, message = update.effective_user, update.effective_chat, update.effective_message
    access = fe.gate.check(user, chat)
    if access is Access.ALLOWED:
        return True
    uid = user.id if user else None
    if message is not None:
        text = render.refusal(access is Access.STRANGER, uid)
        started = fe.refusals.offer(uid, lambda: message.reply_text(
            text, parse_mode=render.PARSE_MODE))
        if started:  # one line per refusal sent, not per message of a flood
            log.warning("refused command %r from %s in chat %s (%s)",
                        clip(message.text or "", 60), describe(user) if user else "?",
                        chat.id if chat else "?", access.value)
    return False


async def on_any_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every message, before the commands: a chat the notifier is backing off from
    (it refused the bot) is retried at once. Decides and answers nothing."""
    chat = update.effective_chat
    if chat is not None:
        front(context).notifier.heard_from(chat.id)


@guarded
async def on_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start and /help."""
    if _admitted(update, context):
        await _reply(update, render.HELP)


@guarded
async def on_pending(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/pending: the oldest pending requests with their buttons; in a chat requests are
    posted to, only those with a copy there (routed or escalated there)."""
    if not _admitted(update, context):
        return
    fe = front(context)
    store, chat_id = fe.store, update.effective_chat.id
    if fe.router is not None and fe.router.is_route_chat(chat_id):
        listed = await store.run(store.pending_in_chat, chat_id, render.PENDING_LISTED + 1)
        count = functools.partial(store.count_pending_in_chat, chat_id)
    else:  # an allowed user's private chat that no route posts to: everything
        listed = await store.run(store.list_approvals, "pending", render.PENDING_LISTED + 1,
                                 True)
        count = functools.partial(store.count_approvals, "pending")
    total = await store.run(count) if len(listed) > render.PENDING_LISTED else len(listed)
    shown = listed[: render.PENDING_LISTED]
    text, markup = render.pending_listing(shown, total - len(shown))
    await _reply(update, text, markup)


async def _decide(update: Update, context: ContextTypes.DEFAULT_TYPE, status: str) -> None:
    if not _admitted(update, context):
        return
    args = context.args or []
    if not args:
        await _reply(update, render.usage("approve" if status == "approved" else "deny"))
        return
    approval_id = args[0]
    reason = " ".join(args[1:]) or None
    fe = front(context)
    try:
        approval = await fe.manager.resolve(approval_id, status, describe(update.effective_user),
                                            reason)
    except NotFound:
        await _reply(update, render.no_such_request(approval_id))
        return
    except AlreadyFinal as exc:
        await _reply(update, render.already_reply(exc.approval))
        return
    except (AlreadyVoted, VoteRefused) as exc:
        await _reply(update, render.esc(render.vote_refused(exc)))
        return
    await _reply(update, render.decided_reply(approval))


@guarded
async def on_approve(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/approve <id>."""
    await _decide(update, context, "approved")


@guarded
async def on_deny(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/deny <id> [reason]."""
    await _decide(update, context, "denied")


SPEND_DIMENSIONS = ("provider", "model", "day", "name")


def parse_spend_args(args: list[str], now) -> tuple[str, Any, Any]:
    """``/spend [by] [since] [until]`` → (by, since, until); InvalidArgument if not."""
    by = "model"
    rest = list(args)
    if rest and (rest[0] in SPEND_DIMENSIONS or rest[0].startswith("metadata.")):
        by = rest.pop(0)
    if len(rest) > 2:
        raise InvalidArgument("too many arguments")
    since = parse_instant(rest[0], now) if rest else None
    until = parse_instant(rest[1], now) if len(rest) > 1 else None
    return by, since, until


@guarded
async def on_spend(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/spend [by] [since] [until]: a table of what the agents cost (+ a chart by day)."""
    if not _admitted(update, context):
        return
    store = front(context).store
    try:
        by, since, until = parse_spend_args(context.args or [], store.clock())
        summary = await store.run(store.summarize_ledger, by, since, until)
    except InvalidArgument as exc:
        await _reply(update, render.spend_error(str(exc)))
        return
    label = window_label(since, until)
    await _reply(update, render.spend_table(summary, label))
    if by == "day" and summary.groups:
        # Drawn on a thread: only this chat's lane waits for it (bot.telegram.updates).
        png = await asyncio.get_running_loop().run_in_executor(
            None, daily_spend_png, summary, f"Daily spend, {label}")
        await update.effective_message.reply_photo(
            png, caption=render.spend_caption(label, summary.total.dollars),
            parse_mode=render.PARSE_MODE)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log errors PTB reports outside the handlers (they answer their own); no crash."""
    log.error("error while handling an update: %s", context.error,
              exc_info=context.error if log.isEnabledFor(logging.DEBUG) else None)
