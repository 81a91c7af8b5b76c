"""Turns approval events into sent and edited Telegram messages.

The database is the outbox: each approval has one row per approver chat
saying which message was posted and which status it shows, and ``owed`` while
it lags. One worker per chat pays what is owed, so a 429, a network failure or
a restart delays a message but never loses it, and a group chat paced at 20
messages a minute never holds up a private chat.

Within a chat, still-pending requests go first (newest first), then edits of
posted copies, then requests decided before their copy was ever posted: more
than ``DIGEST_MIN`` of those become one digest message instead of a replay.
A chat that refuses the bot (403) is retried with its own backoff; a copy
Telegram refuses for good (400) is given up alone; a refused text falls back
to plain text so every copy still ends up showing its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from telegram import Bot, InlineKeyboardMarkup, Message
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter, TelegramError

from bot.telegram import render
from bot.telegram.failures import (
    QUIET_EDIT_ERRORS,
    TEXT_ERRORS,
    THREAD_ERRORS,
    NotLeading,
    backoff_kind,
    plain_text,
    says,
    seconds_of,
    without_tags,
)
from storage.copies import UnpostedOutcome
from storage.records import Approval, MessageRef
from storage.store import Store

log = logging.getLogger(__name__)

DIGEST_MIN = 3


class TelegramNotifier:
    """Posts new requests to every approver chat and edits every copy to its outcome.

    Backoff after failed rounds, per chat, doubling from base to cap: database
    errors ``storage_base``/``storage_max`` (≤ 2 s: the bot must be caught up
    within seconds of the database returning); a chat refusing the bot
    ``refusal_base``/``refusal_max``; network and Telegram outages
    ``retry_base``/``retry_max``. ``page`` is how many owed copies one round reads.
    """

    def __init__(self, bot: Bot, store: Store, chat_ids: list[int],
                 retry_base: float = 0.5, retry_max: float = 30.0,
                 refusal_base: float = 1.0, refusal_max: float = 300.0,
                 storage_base: float = 0.1, storage_max: float = 1.0, page: int = 200,
                 digest_threshold: int = 0):
        self.bot = bot
        self.store = store
        self.chat_ids = list(dict.fromkeys(chat_ids))
        self.retry_base, self.retry_max = retry_base, retry_max
        self.refusal_base, self.refusal_max = refusal_base, refusal_max
        self.storage_base, self.storage_max = storage_base, storage_max
        self.page = page
        self._dirty: dict[int, bool] = {}
        self._failures: dict[int, dict[str, int]] = {}
        # Per chat: records of what Telegram already shows that the database has not
        # taken yet (it failed); written before anything else, so nothing is sent twice.
        self._unrecorded: dict[int, list[Callable[[], object]]] = {}
        self._workers: dict[int, asyncio.Task] = {}
        self._repairs: set[asyncio.Task] = set()
        self._wake: dict[int, asyncio.Event] = {}
        self._running = False
        # Several instances: before every post or edit, whether this instance still
        # leads (bot.cluster's lease); None: always (a single instance).
        self.fence: Callable[[], Awaitable[bool]] | None = None
        # Routes (bot.routing.Router): more chats to serve than chat_ids, learnt while
        # running (routes applied by a policy file); None: chat_ids only.
        self.router = None
        # Forum topics (bot.topics.Topics): the thread of a chat a request is posted in;
        # None: no topics (every message goes to the chat's main thread).
        self.topics = None
        from bot.telegram.digest import DigestOutbox  # bursts; it builds on this module

        self.digests = DigestOutbox(self, digest_threshold)  # 0: no new digests

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start paying what is owed (also what a previous run left unfinished)."""
        self._running = True
        self.kick()

    async def stop(self, grace: float = 2.0) -> None:
        """Let workers finish the message in hand (up to ``grace`` s), then cancel them.

        Whatever is unfinished stays owed in the database and is paid at the next start.
        """
        self._running = False
        tasks = [*self._workers.values(), *self._repairs]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        self._repairs.clear()

    def on_approval(self, approval: Approval, created: bool) -> None:
        """Approval-manager listener: something changed, go and sync."""
        self.kick()

    def kick(self) -> None:
        """Mark every chat as having work and make sure its worker runs."""
        if not self._running:
            return
        for chat_id in self._served():
            self._dirty[chat_id] = True
            worker = self._workers.get(chat_id)
            if worker is None or worker.done():
                self._workers[chat_id] = asyncio.create_task(
                    self._work(chat_id), name=f"tapgate-notify-{chat_id}")

    def _served(self) -> list[int]:
        """The chats to serve: chat_ids, and every chat the router may post to or still
        owes copies in."""
        if self.router is None:
            return self.chat_ids
        return list(dict.fromkeys([*self.chat_ids, *self.router.served_chat_ids()]))

    def heard_from(self, chat_id: int) -> None:
        """A message came from ``chat_id``: if its worker is backing off because the chat
        refused the bot (blocked it, or never pressed /start), retry it now."""
        if chat_id not in self._failures and chat_id not in self._wake:
            return
        self._failures.pop(chat_id, None)
        wake = self._wake.get(chat_id)
        if wake is not None:
            wake.set()

    @property
    def running(self) -> bool:
        """True between start() and stop(): this instance posts (it leads)."""
        return self._running

    @property
    def idle(self) -> bool:
        """True when no worker or repair is running (everything owed was paid or given up)."""
        return all(t.done() for t in [*self._workers.values(), *self._repairs])

    def backoff(self, kind: str, failures: int) -> float:
        """Seconds to wait after ``failures`` failed rounds in a row of this kind."""
        base, cap = {"storage": (self.storage_base, self.storage_max),
                     "refused": (self.refusal_base, self.refusal_max)
                     }.get(kind, (self.retry_base, self.retry_max))
        return min(cap, base * 2 ** min(failures - 1, 20))

    # --- the per-chat worker ----------------------------------------------------------

    async def _work(self, chat_id: int) -> None:
        while self._running and self._dirty.get(chat_id):
            self._dirty[chat_id] = False
            try:
                await self._flush(chat_id)
                await self._pay_owed(chat_id)
            except asyncio.CancelledError:
                raise
            except RetryAfter as exc:
                self._dirty[chat_id] = True
                log.warning("Telegram asks to wait %.0f s (chat %s)", seconds_of(exc.retry_after),
                            chat_id)
                await asyncio.sleep(seconds_of(exc.retry_after))
            except Exception as exc:  # refused, network down, Telegram 5xx, database hiccup
                self._dirty[chat_id] = True
                kind = backoff_kind(exc)
                failures = self._failures.setdefault(chat_id, {})
                failures[kind] = failures.get(kind, 0) + 1
                delay = self.backoff(kind, failures[kind])
                log.warning("could not sync chat %s (%s: %s); retrying in %.1f s",
                            chat_id, type(exc).__name__, exc, delay)
                wake = self._wake[chat_id] = asyncio.Event()
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                finally:
                    self._wake.pop(chat_id, None)

    async def _pay_owed(self, chat_id: int) -> None:
        """Pay one page of the chat's owed copies, in the store's priority order. Returns
        early (to read again) when something changed: a new request goes first. A burst
        is folded into digests first; a digest is paid once per round (one message)."""
        posting = await self._posts_to(chat_id)
        owed = await self.store.run(self.store.messages_owed, chat_id, self.page)
        if posting and self.digests.may_open(owed) and await self.digests.open_new(chat_id):
            owed = await self.store.run(self.store.messages_owed, chat_id, self.page)
        backlog: list[UnpostedOutcome] | None = None
        paid: set[int] = set()
        for ref, approval in owed:
            if not self._running:
                return
            if ref.digest_id in paid:
                continue
            if not posting and ref.message_id is None and ref.digest_id is None:
                # Taken out of the settings or routes before its copy was posted: a chat
                # someone removed gets edits of what it shows, never a new message.
                log.warning("chat %s is no longer one requests go to: request %s is not "
                            "posted there", chat_id, approval.id)
                await self.store.run(self.store.give_up_message, ref.id, approval.shown_as)
            elif ref.digest_id is not None:
                paid.add(ref.digest_id)
                await self.digests.pay(chat_id, ref.digest_id)
            else:
                if approval.is_final and ref.message_id is None:
                    # Only the backlog is left (the order puts it last): fold it into one
                    # digest instead of replaying old requests one by one.
                    if backlog is None:
                        backlog = await self.store.run(self.store.unposted_outcomes, chat_id)
                    if len(backlog) > DIGEST_MIN:
                        await self._digest(chat_id, backlog)
                        self._failures.pop(chat_id, None)
                        self._dirty[chat_id] = True
                        return
                await self._pay(ref, approval)
            self._failures.pop(chat_id, None)
            if self._dirty.get(chat_id):
                return  # kicked meanwhile: read again, so a new request is not queued behind
        if owed:
            self._dirty[chat_id] = True  # there may be more than one page

    async def _posts_to(self, chat_id: int) -> bool:
        """Whether new messages may go to ``chat_id``: a configured chat or a route's (the
        routes read afresh before saying no: another process may have just added it)."""
        if chat_id in self.chat_ids or self.router is None \
                or self.router.is_route_chat(chat_id):
            return True
        await self.router.refresh()
        return self.router.is_route_chat(chat_id)

    async def _pay(self, ref: MessageRef, approval: Approval) -> None:
        """Bring one copy in line with its approval."""
        if ref.message_id is not None:
            await self._edit(ref.chat_id, ref.message_id, approval, ref)
            return
        # A request decided before its copy reached this chat (a paced group, an
        # outage) is still posted, showing its outcome and no buttons.
        try:
            message = await self._send(ref.chat_id, approval)
        except BadRequest as exc:
            await self._give_up(ref, approval, exc)
            return
        await self._record(ref.chat_id, lambda: self.store.record_message(
            ref.id, approval.shown_as, message.message_id))

    async def _fenced(self) -> None:
        if self.fence is not None and not await self.fence():
            raise NotLeading("this instance no longer leads: it sends nothing")

    async def _thread(self, chat_id: int, approval: Approval) -> int | None:
        """The forum topic of ``chat_id`` that ``approval`` is posted in (None: none)."""
        if self.topics is None:
            return None
        return await self.topics.thread_for(chat_id, approval)

    async def _in_topic(self, chat_id: int, approval: Approval,
                        post: Callable[[int | None], Awaitable[Message]]) -> Message:
        """``post(thread)`` in the forum topic ``approval`` goes to in ``chat_id``. A topic
        someone deleted is forgotten and the post retried once, in a new topic."""
        thread = await self._thread(chat_id, approval)
        try:
            return await post(thread)
        except BadRequest as exc:
            if thread is None or not says(exc, THREAD_ERRORS):
                raise
            log.warning("topic %s of chat %s is gone (%s); posting %s in a new one",
                        thread, chat_id, exc, approval.id)
        await self.topics.forget(chat_id, thread)
        self._dirty[chat_id] = True  # the requests still pending in it are owed again
        return await post(await self._thread(chat_id, approval))

    async def _send(self, chat_id: int, approval: Approval) -> Message:
        await self._fenced()
        markup = None if approval.is_final else render.request_keyboard(approval)
        return await self._in_topic(chat_id, approval, lambda thread: self.send_text(
            chat_id, render.request_text(approval), plain_text(approval), markup, thread))

    async def send_text(self, chat_id: int, text: str, plain: str,
                        markup: InlineKeyboardMarkup | None = None,
                        thread: int | None = None) -> Message:
        """Send ``text`` (HTML); if Telegram refuses the text itself, ``plain`` instead
        (no entities), so the message still gets through. The caller has fenced."""
        try:
            return await self.bot.send_message(chat_id, text, parse_mode=render.PARSE_MODE,
                                               reply_markup=markup, message_thread_id=thread)
        except BadRequest as exc:
            if not says(exc, TEXT_ERRORS):
                raise
            log.warning("Telegram refused a text for chat %s (%s); sending plain text",
                        chat_id, exc)
        return await self.bot.send_message(chat_id, plain, reply_markup=markup,
                                           message_thread_id=thread)

    async def edit_text(self, chat_id: int, message_id: int, text: str, plain: str,
                        markup: InlineKeyboardMarkup | None = None) -> None:
        """:meth:`send_text` for an edit of ``message_id`` (no ``markup``: no buttons)."""
        try:
            await self.bot.edit_message_text(text, chat_id=chat_id, message_id=message_id,
                                             parse_mode=render.PARSE_MODE, reply_markup=markup)
            return
        except BadRequest as exc:
            if not says(exc, TEXT_ERRORS):
                raise
            log.warning("Telegram refused the text of %s/%s (%s); editing to plain text",
                        chat_id, message_id, exc)
        await self.bot.edit_message_text(plain, chat_id=chat_id, message_id=message_id,
                                         reply_markup=markup)

    async def _edit(self, chat_id: int, message_id: int, approval: Approval,
                    ref: MessageRef | None) -> None:
        # Without reply_markup Telegram removes the buttons, which is what a final state wants.
        markup = None if approval.is_final else render.request_keyboard(approval)
        try:
            await self._edit_text(chat_id, message_id, approval, markup)
        except BadRequest as exc:
            if not says(exc, QUIET_EDIT_ERRORS):
                if ref is None:
                    raise
                await self._give_up(ref, approval, exc)
                return
            log.debug("edit of %s/%s: %s", chat_id, message_id, exc)
        if ref is not None:
            await self.store.run(self.store.record_message, ref.id, approval.shown_as)

    async def _edit_text(self, chat_id: int, message_id: int, approval: Approval,
                         markup: InlineKeyboardMarkup | None) -> None:
        await self._fenced()
        await self.edit_text(chat_id, message_id, render.request_text(approval),
                             plain_text(approval), markup)

    async def _digest(self, chat_id: int, backlog: list[UnpostedOutcome]) -> None:
        """One message listing the requests decided before their copy was posted here;
        their copies are then settled without a message of their own."""
        text = render.outcomes_digest([(b.approval_id, b.kind, b.status) for b in backlog])
        await self._fenced()
        await self.send_text(chat_id, text, without_tags(text))
        ref_ids = [b.ref_id for b in backlog]
        await self._record(chat_id, lambda: self.store.settle_unposted(ref_ids))

    async def _record(self, chat_id: int, write: Callable[[], object]) -> None:
        """Write what Telegram now shows. Shielded: once Telegram has the message, the
        record must be made even if we are being stopped; kept and retried first if the
        database fails, or the next round would post the message again."""
        self._unrecorded.setdefault(chat_id, []).append(write)
        await asyncio.shield(self._flush(chat_id))

    async def _flush(self, chat_id: int) -> None:
        pending = self._unrecorded.get(chat_id, [])
        while pending:
            write = pending[0]
            await self.store.run(write)
            with contextlib.suppress(ValueError):  # a shielded flush may have taken it
                pending.remove(write)

    async def _give_up(self, ref: MessageRef, approval: Approval, exc: TelegramError) -> None:
        """Telegram refuses this one copy for good: stop owing it (unless its approval
        moved on meanwhile), so it never holds up the copies behind it."""
        log.error("Telegram refused message %s of approval %s in chat %s: %s",
                  ref.id, ref.approval_id, ref.chat_id, exc)
        await self.store.run(self.store.give_up_message, ref.id, approval.shown_as)

    # --- repairs ----------------------------------------------------------------------

    def repair(self, chat_id: int, message_id: int, approval: Approval) -> None:
        """Re-render a request's message that still shows buttons although the request is
        final (in a task). Only the request's own copies are touched: a ``/pending``
        listing is a snapshot and stays as it is."""
        if not self._running:
            return

        async def _repair() -> None:
            for attempt in range(5):
                try:
                    ref = await self.store.run(self.store.find_message, chat_id, message_id)
                    if ref is not None and ref.digest_id is not None:  # its digest line
                        if await self.store.run(self.store.owe_digest, ref.digest_id,
                                                approval.id):
                            self.kick()
                        return
                    if ref is None or ref.approval_id != approval.id:
                        return
                    await self._edit(chat_id, message_id, approval, ref)
                    return
                except (Forbidden, ChatMigrated) as exc:
                    log.warning("could not repair %s/%s: %s", chat_id, message_id, exc)
                    return
                except RetryAfter as exc:
                    await asyncio.sleep(seconds_of(exc.retry_after))
                except Exception as exc:  # network or database: a few quick retries
                    await asyncio.sleep(self.backoff(backoff_kind(exc), attempt + 1))

        task = asyncio.create_task(_repair(), name=f"tapgate-repair-{chat_id}-{message_id}")
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)
