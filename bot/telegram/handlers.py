"""Telegram update handlers: small, and deciding nothing themselves.

Each checks who is asking, calls the approval manager, and answers with a
text from :mod:`bot.telegram.render`. Every callback query is answered, even
for forged data, strangers and errors; an answer Telegram refuses (the query
is too old because the tap came while the bot was down) does not undo the
decision, which is already committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from telegram import Update, User
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.approvals import ApprovalManager
from bot.telegram import render
from bot.telegram.chart import daily_spend_png
from bot.telegram.notifier import TelegramNotifier
from bot.window import describe as window_label
from bot.window import parse_instant
from storage.approvals import parse_callback_data
from storage.errors import AlreadyFinal, InvalidArgument, NotFound
from storage.store import Store

log = logging.getLogger(__name__)


@dataclass
class FrontEnd:
    """What the handlers need, kept in ``application.bot_data["tapgate"]``."""

    manager: ApprovalManager
    store: Store
    notifier: TelegramNotifier
    approver_ids: set[int]
    extras: dict[str, Any] = field(default_factory=dict)


def front(context: ContextTypes.DEFAULT_TYPE) -> FrontEnd:
    return context.application.bot_data["tapgate"]


def describe(user: User) -> str:
    """``telegram:<id> (@username)`` — what ``decided_by`` records."""
    name = f"@{user.username}" if user.username else (user.full_name or str(user.id))
    return f"telegram:{user.id} ({name})"


async def _answer(query, text: str, alert: bool = False) -> None:
    try:
        await query.answer(text[: render.MAX_ANSWER], show_alert=alert)
    except TelegramError as exc:  # e.g. "query is too old": the decision still counts
        log.info("could not answer callback query %s: %s", query.id, exc)


async def on_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A tap on Approve or Deny."""
    query = update.callback_query
    fe = front(context)
    user = query.from_user
    if user is None or user.id not in fe.approver_ids:
        log.warning("refused tap by non-approver %s on %r", user and describe(user), query.data)
        await _answer(query, "⛔ You are not allowed to decide on requests.", alert=True)
        return
    try:
        approval_id, status = parse_callback_data(query.data or "")
        approval = await fe.manager.resolve(approval_id, status, describe(user))
    except InvalidArgument:
        log.warning("malformed callback data %r from %s", query.data, describe(user))
        await _answer(query, "⚠️ This button is not valid.")
        return
    except NotFound:
        await _answer(query, "⚠️ Unknown request.")
        return
    except AlreadyFinal as exc:
        await _answer(query, render.already_answer(exc.approval))
        message = query.message
        if message is not None and getattr(message, "reply_markup", None) is not None:
            fe.notifier.repair(message.chat.id, message.message_id, exc.approval)
        return
    except Exception:
        log.exception("could not decide on %r", query.data)
        await _answer(query, "⚠️ Something went wrong; please try again.")
        return
    await asyncio.sleep(0)  # let the woken agents' waits return before we build the answer
    await _answer(query, render.decided_answer(approval))


async def _allowed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    user = update.effective_user
    if user is not None and user.id in front(context).approver_ids:
        return True
    who = describe(user) if user else "unknown"
    log.warning("refused command %r from non-approver %s",
                update.effective_message and update.effective_message.text, who)
    if update.effective_message is not None:
        uid = user.id if user else "?"
        await update.effective_message.reply_text(
            f"⛔ You are not an approver here. Your Telegram user id is <code>{uid}</code>; "
            "the bot's owner can add it to TAPGATE_APPROVER_USER_IDS.",
            parse_mode=render.PARSE_MODE)
    return False


async def _reply(update: Update, text: str, markup=None) -> None:
    await update.effective_message.reply_text(text, parse_mode=render.PARSE_MODE,
                                              reply_markup=markup)


async def on_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start and /help."""
    if await _allowed(update, context):
        await _reply(update, render.HELP)


async def on_pending(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/pending: the oldest pending requests with their buttons."""
    if not await _allowed(update, context):
        return
    store = front(context).store
    listed = await store.run(store.list_approvals, "pending", render.PENDING_LISTED + 1, True)
    total = await store.run(store.count_approvals, "pending") if len(listed) > \
        render.PENDING_LISTED else len(listed)
    shown = listed[: render.PENDING_LISTED]
    text, markup = render.pending_listing(shown, total - len(shown))
    await _reply(update, text, markup)


async def _decide(update: Update, context: ContextTypes.DEFAULT_TYPE, status: str) -> None:
    if not await _allowed(update, context):
        return
    args = context.args or []
    verb = "approve" if status == "approved" else "deny"
    if not args:
        usage = "/approve &lt;id&gt;" if verb == "approve" else "/deny &lt;id&gt; [reason]"
        await _reply(update, f"Usage: {usage}")
        return
    approval_id = args[0]
    reason = " ".join(args[1:]) or None
    fe = front(context)
    try:
        approval = await fe.manager.resolve(approval_id, status, describe(update.effective_user),
                                            reason)
    except NotFound:
        await _reply(update, f"⚠️ No request <code>{render.esc(approval_id)}</code>.")
        return
    except AlreadyFinal as exc:
        await _reply(update, render.esc(render.already_answer(exc.approval)))
        return
    await _reply(update, f"{render.decided_answer(approval)}: <code>{render.esc(approval.id)}"
                         f"</code> {render.esc(approval.summary[:200])}")


async def on_approve(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/approve <id>."""
    await _decide(update, context, "approved")


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


async def on_spend(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/spend [by] [since] [until]: a table of what the agents cost (+ a chart by day)."""
    if not await _allowed(update, context):
        return
    store = front(context).store
    try:
        by, since, until = parse_spend_args(context.args or [], store.clock())
        summary = await store.run(store.summarize_ledger, by, since, until)
    except InvalidArgument as exc:
        await _reply(update, f"⚠️ {render.esc(exc)}\nUsage: /spend [by] [since] [until] — by: "
                             "model, provider, day, name or metadata.KEY; since/until: today, "
                             "7d, 30d, YYYY-MM-DD or RFC 3339")
        return
    label = window_label(since, until)
    await _reply(update, render.spend_table(summary, label))
    if by == "day" and summary.groups:
        png = await asyncio.get_running_loop().run_in_executor(
            None, daily_spend_png, summary, f"Daily spend, {label}")
        await update.effective_message.reply_photo(
            png, caption=f"Daily spend · {render.esc(label)} · total "
                         f"${summary.total.dollars:,.2f}", parse_mode=render.PARSE_MODE)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log handler errors without a crash; the update is not retried."""
    log.error("error while handling an update: %s", context.error,
              exc_info=context.error if log.isEnabledFor(logging.DEBUG) else None)
