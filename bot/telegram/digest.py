"""Burst digests: many requests owed to one chat at once, posted as one message each
hundred instead of one message per request (a group gets only 20 messages a minute).

A digest (:mod:`storage.digests`) lists at most ``DIGEST_CAPACITY`` requests, shown
``PAGE_SIZE`` lines a page: a ✅/❌ pair per request of the page (the ordinary
``appr:<id>:approve|deny`` buttons), "Approve all N" / "Deny all N" for the requests
it lists that are still pending (``dg:<id>:approve|deny``, see
:mod:`bot.telegram.digest_taps`) and ◀ ▶ (``dg:<id>:page:<n>``). Once every request is
final it shows the outcome of each line and no buttons.

:class:`DigestOutbox` is the notifier's part for digests: it opens digests when more
than the threshold requests are owed to a chat as new posts, and posts or edits each
owed digest once per round, through the notifier's fence and records.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest

from bot.telegram import render
from bot.telegram.failures import QUIET_EDIT_ERRORS, says, without_tags
from bot.telegram.fit import MAX_TEXT, clip, esc, one_line, units, visible_length
from storage.digests import GRANT_KIND, Digest, DigestItem, NewPost
from storage.records import Approval, MessageRef

log = logging.getLogger(__name__)

DIGEST_CAPACITY = 100  # requests one digest lists (a page's buttons stay ≤ 100)
PAGE_SIZE = 20  # lines (and ✅/❌ pairs) per page
NEW_POSTS_READ = 1000  # new posts one round may fold into digests
# A burst still arriving is let settle (until a read finds nothing new, at most
# SETTLE_MAX s) before it is cut into digests: a group's 20 messages a minute are
# better spent on a few full digests (and their edits) than on many small ones.
SETTLE_STEP, SETTLE_MAX = 0.1, 1.0
FIELD_MAX = 24  # kind and agent on a line
ID_MAX = 16

VOTE_ICON = "🗳"


def pages(items: list[DigestItem]) -> int:
    return max(1, -(-len(items) // PAGE_SIZE))


def _pending(items: list[DigestItem]) -> list[DigestItem]:
    return [i for i in items if i.approval.status == "pending"]


def _mark(approval) -> str:
    """The state of one line: ⏳ (with votes and ⏫ when it applies) or the outcome."""
    if approval.status != "pending":
        return render.OUTCOME_ICON[approval.status]
    mark = "⏳"
    if approval.required_approvals > 1:
        mark += f" {VOTE_ICON}{len(approval.approvals)}/{approval.required_approvals}"
    if approval.escalated_at is not None:
        mark += " ⏫"
    return mark


def _counts(items: list[DigestItem]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.approval.status] = counts.get(item.approval.status, 0) + 1
    order = ("pending", "approved", "denied", "expired", "cancelled")
    return " · ".join(f"{render.OUTCOME_ICON[s]} {counts[s]} {render.OUTCOME_WORD[s].lower()}"
                      for s in order if counts.get(s))


def _page_line(n: int, approval, summary_room: int) -> str:
    """``3. ⏳ <kind> · “summary” · agent · id`` with the summary cut to ``summary_room``."""
    kind = esc(clip(one_line(approval.kind), FIELD_MAX))
    agent = esc(clip(one_line(approval.agent), FIELD_MAX))
    ident = esc(clip(approval.id, ID_MAX))
    summary = ""
    if summary_room >= 4:
        summary = f" · <i>“{esc(clip(one_line(approval.summary), summary_room - 2))}”</i>"
    return (f"{n}. {_mark(approval)} <code>{kind}</code>{summary} · agent <b>{agent}</b>"
            f" · <code>{ident}</code>")


def _final_line(n: int, approval, room: int) -> str:
    """``3. ✅ id · @alice · kind · “summary”`` cut to ``room`` units (every line fits)."""
    head = f"{n}. {render.OUTCOME_ICON[approval.status]} "
    ident = clip(approval.id, ID_MAX)
    rest = f"{clip(one_line(approval.kind), FIELD_MAX)} · “{one_line(approval.summary)}”"
    if approval.status in ("approved", "denied"):
        rest = f"{render.who(approval.decided_by)} · {rest}"
    left = room - units(head) - units(ident) - 3
    tail = f" · {esc(clip(rest, left))}" if left >= 4 else ""
    return f"{head}<code>{esc(ident)}</code>{tail}"


def digest_text(items: list[DigestItem], page: int) -> str:
    """The digest's text: at most 4096 visible characters whatever the fields hold."""
    total = len(items)
    pending = _pending(items)
    if not pending:  # every line final: all outcomes, no pages
        head = (f"🗂 <b>{total} requests at once, all decided</b>\n{_counts(items)}\n")
        room = (MAX_TEXT - visible_length(head)) // max(total, 1) - 1
        lines = [_final_line(n, i.approval, room) for n, i in enumerate(items, 1)]
        return head + "\n" + "\n".join(lines)
    last = pages(items) - 1
    page = min(max(page, 0), last)
    shown = items[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    head = (f"🗂 <b>{total} requests at once</b> (one message instead of {total})\n"
            f"{_counts(items)}\n")
    if last:
        head += f"<i>Page {page + 1} of {last + 1}.</i>\n"
    more = total - len(shown)
    foot = f"\n…and {more} more (◀ ▶ to see them)." if more else ""
    frame = visible_length(head + foot) + len(shown) + 1
    fixed = [visible_length(_page_line(page * PAGE_SIZE + k + 1, i.approval, 0))
             for k, i in enumerate(shown)]
    room = (MAX_TEXT - frame - sum(fixed)) // max(len(shown), 1)
    lines = [_page_line(page * PAGE_SIZE + k + 1, i.approval, min(room, 200))
             for k, i in enumerate(shown)]
    text = head + "\n" + "\n".join(lines) + foot
    while visible_length(text) > MAX_TEXT and room > 0:  # a backstop; the sums above fit
        room -= 8
        lines = [_page_line(page * PAGE_SIZE + k + 1, i.approval, room)
                 for k, i in enumerate(shown)]
        text = head + "\n" + "\n".join(lines) + foot
    return text


def digest_keyboard(digest_id: int, items: list[DigestItem], page: int
                    ) -> InlineKeyboardMarkup | None:
    """✅/❌ per pending line of the page, Approve all / Deny all, ◀ ▶; None once all
    are final. At most 2 × 20 + 2 + 2 buttons."""
    pending = _pending(items)
    if not pending:
        return None
    last = pages(items) - 1
    page = min(max(page, 0), last)
    rows = []
    for k, item in enumerate(items[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]):
        if item.approval.status != "pending":
            continue
        n = page * PAGE_SIZE + k + 1
        rows.append([
            InlineKeyboardButton(f"✅ {n}", callback_data=render.callback_data(
                item.approval.id, "approve")),
            InlineKeyboardButton(f"❌ {n}", callback_data=render.callback_data(
                item.approval.id, "deny"))])
    rows.append([
        InlineKeyboardButton(f"✅ Approve all {len(pending)}",
                             callback_data=f"dg:{digest_id}:approve", style="success"),
        InlineKeyboardButton(f"❌ Deny all {len(pending)}",
                             callback_data=f"dg:{digest_id}:deny", style="danger")])
    paging = []
    if page > 0:
        paging.append(InlineKeyboardButton("◀", callback_data=f"dg:{digest_id}:page:{page - 1}"))
    if page < last:
        paging.append(InlineKeyboardButton("▶", callback_data=f"dg:{digest_id}:page:{page + 1}"))
    if paging:
        rows.append(paging)
    return InlineKeyboardMarkup(rows)


class DigestOutbox:
    """The notifier's digest part: open digests for bursts, post and edit them.

    ``threshold``: more than this many new posts owed to one chat at once are folded
    into digests (0: never; digests already open are still paid)."""

    def __init__(self, notifier, threshold: int):
        self.notifier = notifier
        self.threshold = threshold

    @property
    def store(self):
        return self.notifier.store

    def may_open(self, owed: list[tuple[MessageRef, Approval]]) -> bool:
        """Whether a page of owed copies (``messages_owed``: new posts come first) holds
        more new posts than the threshold: only then is it worth looking for a burst
        (:meth:`open_new` reads again, per topic), so a lone request costs no query."""
        if self.threshold <= 0:
            return False
        new = sum(1 for ref, approval in owed if ref.message_id is None
                  and ref.digest_id is None and approval.status == "pending"
                  and approval.kind != GRANT_KIND)
        return new > self.threshold

    async def open_new(self, chat_id: int) -> int:
        """Fold the chat's new posts into digests if there are more than the threshold
        (per forum topic, when requests go to topics: a digest lives in one topic);
        returns how many digests were opened."""
        if self.threshold <= 0:
            return 0
        posts = await self.store.run(self.store.new_posts_of, chat_id, NEW_POSTS_READ)
        if len(posts) <= self.threshold or not self._bursts(posts):
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_MAX
        while loop.time() < deadline and len(posts) < NEW_POSTS_READ:
            await asyncio.sleep(SETTLE_STEP)
            more = await self.store.run(self.store.new_posts_of, chat_id, NEW_POSTS_READ)
            if len(more) <= len(posts):
                break
            posts = more
        opened = 0
        for refs in self._bursts(posts):
            for start in range(0, len(refs), DIGEST_CAPACITY):
                chunk = refs[start:start + DIGEST_CAPACITY]
                if await self.store.run(self.store.open_digest, chat_id, chunk) is not None:
                    opened += 1
        log.info("chat %s: %d requests owed at once, posted as %d digest(s)", chat_id,
                 len(posts), opened)
        return opened

    def _bursts(self, posts: list[NewPost]) -> list[list[int]]:
        """The copies of ``posts`` to fold into digests: per forum topic (a digest lives
        in one topic; without topics the chat is one), those over the threshold."""
        topics = self.notifier.topics
        groups: dict[str, list[int]] = {}
        for post in posts:
            key = topics.key_of(topics.per, post) if topics is not None else ""
            groups.setdefault(key, []).append(post.ref_id)
        return [refs for refs in groups.values() if len(refs) > self.threshold]

    async def pay(self, chat_id: int, digest_id: int) -> None:
        """Post the digest (never posted yet) or edit it to what its requests are now."""
        store, notifier = self.store, self.notifier
        digest: Digest = await store.run(store.get_digest, digest_id)
        items = await store.run(store.digest_items, digest_id)
        if not items:
            return
        text = digest_text(items, digest.page)
        markup = digest_keyboard(digest_id, items, digest.page)
        shown = {i.ref_id: i.approval.shown_as for i in items}
        if digest.message_id is None:
            try:  # in the forum topic of its first request (a deleted topic is remade)
                message = await notifier._in_topic(chat_id, items[0].approval, lambda thread:
                                                   self._send(chat_id, text, markup, thread))
            except BadRequest as exc:
                await self._give_up(digest_id, shown, exc)
                return
            await notifier._record(chat_id, lambda: store.record_digest(
                digest_id, shown, digest.page, message.message_id,
                getattr(message, "message_thread_id", None)))
            return
        try:
            await self._edit(chat_id, digest.message_id, text, markup)
        except BadRequest as exc:
            if not says(exc, QUIET_EDIT_ERRORS):
                await self._give_up(digest_id, shown, exc)
                return
            log.debug("edit of digest %s: %s", digest_id, exc)
        await store.run(store.record_digest, digest_id, shown, digest.page)

    async def _send(self, chat_id: int, text: str, markup, thread: int | None):
        await self.notifier._fenced()
        return await self.notifier.send_text(chat_id, text, without_tags(text), markup, thread)

    async def _edit(self, chat_id: int, message_id: int, text: str, markup) -> None:
        await self.notifier._fenced()
        await self.notifier.edit_text(chat_id, message_id, text, without_tags(text), markup)

    async def _give_up(self, digest_id: int, shown: dict[int, str], exc: BadRequest) -> None:
        log.error("Telegram refused digest %s: %s", digest_id, exc)
        await self.store.run(self.store.give_up_digest, digest_id, shown)
