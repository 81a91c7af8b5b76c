"""The buttons of a digest message (:mod:`bot.telegram.digest`): Approve all, Deny all,
and the pages.

``dg:<digest id>:approve|deny`` decides exactly the requests that digest lists (never
one that arrived later), each by its own compare-and-set through
:func:`bot.telegram.handlers.decide_request` — the path a single tap takes, so votes
of requests needing several approvers, the requester's own approval refused and a
race with another tap or the API all behave as for single taps; the popup says what
came of it ("✅ Approved 47, 3 were already decided"). ``dg:<id>:page:<n>`` shows
another page (the notifier edits the message). The gate has run before
(:func:`bot.telegram.decisions.on_callback`): only allowed users in approver chats.
"""

from __future__ import annotations

import asyncio
import logging
import re

from bot.telegram import render
from bot.telegram.digest import pages
from bot.telegram.fit import MAX_ANSWER, clip
from bot.telegram.handlers import FrontEnd, _answer, decide_request, describe
from storage.errors import NotFound

log = logging.getLogger(__name__)

DIGEST_DATA = re.compile(r"^dg:([0-9]{1,18}):(approve|deny|page:([0-9]{1,4}))$")

UNKNOWN_DIGEST = "⚠️ This list is no longer known: use /pending to see what waits."
NOT_THIS_MESSAGE = "⚠️ This button does not belong to this message."


def is_digest_data(data: str) -> bool:
    return data.startswith("dg:")


def all_answer(status: str, counts: dict[str, int], total: int) -> str:
    """The popup after Approve all / Deny all (≤ 200 characters)."""
    word = "Approved" if status == "approved" else "Denied"
    icon = render.OUTCOME_ICON[status]
    parts = []
    if counts["decided"]:
        parts.append(f"{word.lower()} {counts['decided']}")
    if counts["voted"]:
        parts.append(f"voted on {counts['voted']} (more approvers needed)")
    if counts["refused"]:
        parts.append(f"{counts['refused']} not counted (already approved by you, acting "
                     "for you, or not yours to decide)")
    if counts["already"]:
        were = "was" if counts["already"] == 1 else "were"
        parts.append(f"{counts['already']} {were} already decided")
    if not parts:
        return f"Nothing left to decide: all {total} were already decided."
    text = ", ".join(parts)
    return clip(f"{icon} {text[0].upper()}{text[1:]}.", MAX_ANSWER)


def _button_count(message, data: str) -> int | None:
    """N of the tapped "✅ Approve all N" button, if the message carries it."""
    markup = getattr(message, "reply_markup", None)
    for row in markup.inline_keyboard if markup is not None else ():
        for button in row:
            if button.callback_data == data:
                found = re.search(r"(\d+)$", button.text or "")
                return int(found.group(1)) if found else None
    return None


async def on_digest_tap(query, fe: FrontEnd) -> None:
    """``dg:<id>:approve|deny|page:<n>`` by an allowed user in an approver chat."""
    data = query.data or ""
    match = DIGEST_DATA.match(data)
    if match is None:
        log.warning("malformed digest data %r from %s", data, describe(query.from_user))
        await _answer(query, render.INVALID_BUTTON)
        return
    digest_id, action = int(match.group(1)), match.group(2)
    try:
        digest = await fe.store.run(fe.store.get_digest, digest_id)
    except NotFound:
        await _answer(query, UNKNOWN_DIGEST, alert=True)
        return
    message = query.message
    if message is None or message.chat.id != digest.chat_id or (
            digest.message_id is not None and message.message_id != digest.message_id):
        log.warning("digest %s tapped from another message (%r) by %s", digest_id, data,
                    describe(query.from_user))
        await _answer(query, NOT_THIS_MESSAGE, alert=True)
        return
    items = await fe.store.run(fe.store.digest_items, digest_id)
    if action.startswith("page:"):
        page = int(match.group(3))
        if page >= pages(items):
            await _answer(query, render.INVALID_BUTTON)
            return
        await fe.store.run(fe.store.set_digest_page, digest_id, page)
        fe.notifier.kick()
        await _answer(query, f"Page {page + 1} of {pages(items)}")
        return
    status = "approved" if action == "approve" else "denied"
    counts = {"decided": 0, "voted": 0, "refused": 0, "already": 0, "unknown": 0}
    if all(item.approval.status != "pending" for item in items):
        await _answer(query, all_answer(status, {**counts, "already": 0}, len(items)))
        return
    for item in items:
        if item.approval.status != "pending":
            # Counted "already decided" if the message showed it pending (it was decided
            # after its last edit).
            counts["already"] += (item.shown or "pending").startswith("pending")
            continue
        decided = await decide_request(fe, item.approval.id, status, query.from_user)
        counts[decided.result] += 1
    counts["already"] += counts.pop("unknown")
    shown = _button_count(message, data)
    if shown is not None:  # what the tapped button said ("Approve all 50") is what was seen
        counts["already"] = max(0, shown - counts["decided"] - counts["voted"]
                                - counts["refused"])
    await asyncio.sleep(0)  # let the woken agents' waits return before we answer
    await _answer(query, all_answer(status, counts, len(items)))
