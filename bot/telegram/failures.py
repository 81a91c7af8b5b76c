"""What Telegram's failures mean to the outbox (:mod:`bot.telegram.notifier`): which
refusals are harmless, which are about the text (plain text gets through), which say
a forum topic is gone, and which backoff a failed round takes."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from telegram.error import ChatMigrated, Forbidden, TelegramError

from bot.telegram import render
from bot.telegram.fit import clip, one_line
from storage.errors import StorageError
from storage.records import Approval

QUIET_EDIT_ERRORS = ("message is not modified", "message to edit not found",
                     "message can't be edited", "message_id_invalid")
# Telegram refuses the text, not the message: the same request as plain text gets through.
TEXT_ERRORS = ("can't parse entities", "message is too long", "text is too long",
               "entities_too_long", "message_too_long")
# The forum topic of a send is gone (someone deleted it): bot.topics makes a new one.
THREAD_ERRORS = ("message thread not found", "topic_deleted")


class NotLeading(Exception):
    """The fence refused a send: another instance may lead now (see bot.cluster)."""


def seconds_of(value: float | timedelta) -> float:
    """A ``retry_after`` in seconds (PTB gives a timedelta or a number, by setting)."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def says(exc: TelegramError, needles: tuple[str, ...]) -> bool:
    """Whether Telegram's error text holds one of ``needles`` (lower case)."""
    text = str(exc).lower()
    return any(n in text for n in needles)


def plain_text(approval: Approval) -> str:
    """The minimal text of a copy whose full text Telegram refuses: outcome, id and kind,
    without entities (nothing left to parse) and far below 4096 characters."""
    status = approval.status
    line = f"{render.OUTCOME_ICON[status]} {render.OUTCOME_WORD[status]}"
    if status in ("approved", "denied"):
        line += f" by {render.who(approval.decided_by)}"
    return f"{line} · request {approval.id} ({clip(one_line(approval.kind), 64)})"


def backoff_kind(exc: BaseException) -> str:
    """Which backoff a failed round takes: the database comes back within seconds (and
    must be caught up at once), a chat that refuses the bot may take hours, anything
    else (network, Telegram 5xx) is an outage."""
    if isinstance(exc, StorageError):
        return "storage"
    if isinstance(exc, Forbidden | ChatMigrated):
        return "refused"
    return "outage"


_TAG = re.compile(r"<[^>]+>")


def without_tags(text: str) -> str:
    """An HTML text as plain text (tags dropped, entities unescaped): what is sent when
    Telegram refuses to parse the HTML."""
    return html.unescape(_TAG.sub("", text))
