"""Turns approval events into sent and edited Telegram messages.

The database is the outbox: each approval has one row per approver chat
saying which message was posted and which status it shows. Whatever lags
(never posted; showing an old status) is owed, and one worker per chat pays
it, in order. So a 429, a network failure or a restart delays a message but
never loses it, and a group chat paced at 20 messages a minute never holds up
a private chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from telegram import Bot
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.telegram import render
from storage.records import Approval, MessageRef
from storage.store import Store

log = logging.getLogger(__name__)

QUIET_EDIT_ERRORS = ("message is not modified", "message to edit not found",
                     "message can't be edited", "message_id_invalid")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramNotifier:
    """Posts new requests to every approver chat and edits every copy to its outcome."""

    def __init__(self, bot: Bot, store: Store, chat_ids: list[int],
                 retry_base: float = 0.5, retry_max: float = 30.0):
        self.bot = bot
        self.store = store
        self.chat_ids = list(dict.fromkeys(chat_ids))
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._dirty: dict[int, bool] = {}
        self._workers: dict[int, asyncio.Task] = {}
        self._skip: set[int] = set()  # refs Telegram refuses for good (until restart)
        self._repairs: set[asyncio.Task] = set()
        self._running = False

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
        for chat_id in self.chat_ids:
            self._dirty[chat_id] = True
            worker = self._workers.get(chat_id)
            if worker is None or worker.done():
                self._workers[chat_id] = asyncio.create_task(
                    self._work(chat_id), name=f"tapgate-notify-{chat_id}")

    @property
    def idle(self) -> bool:
        """True when no worker or repair is running (everything owed was paid or skipped)."""
        return all(t.done() for t in [*self._workers.values(), *self._repairs])

    # --- the per-chat worker ----------------------------------------------------------

    async def _work(self, chat_id: int) -> None:
        failures = 0
        while self._running and self._dirty.get(chat_id):
            self._dirty[chat_id] = False
            try:
                owed = await self.store.run(self.store.messages_owed, chat_id)
                for ref, approval in owed:
                    if not self._running:
                        return
                    if ref.id in self._skip:
                        continue
                    await self._pay(ref, approval)
                    failures = 0
                if any(ref.id not in self._skip for ref, _ in owed):
                    self._dirty[chat_id] = True  # there may be more than one page
            except asyncio.CancelledError:
                raise
            except RetryAfter as exc:
                self._dirty[chat_id] = True
                log.warning("Telegram asks to wait %.0f s (chat %s)", _seconds(exc.retry_after),
                            chat_id)
                await asyncio.sleep(_seconds(exc.retry_after))
            except Exception as exc:  # network down, Telegram 5xx, database hiccup
                self._dirty[chat_id] = True
                failures += 1
                delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 10))
                log.warning("could not sync chat %s (%s: %s); retrying in %.1f s",
                            chat_id, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _pay(self, ref: MessageRef, approval: Approval) -> None:
        """Bring one copy in line with its approval."""
        if ref.message_id is None:
            # A request decided before its copy reached this chat (a paced group, an
            # outage) is still posted, showing its outcome and no buttons: the chat's
            # history keeps every request.
            markup = None if approval.is_final else render.request_keyboard(approval)
            try:
                message = await self.bot.send_message(
                    ref.chat_id, render.request_text(approval), parse_mode=render.PARSE_MODE,
                    reply_markup=markup)
            except (BadRequest, Forbidden) as exc:
                self._give_up(ref, exc)
                return
            # Shielded: once Telegram has the message, its id must be recorded even if
            # we are being stopped, or the next start would post it again.
            await asyncio.shield(self.store.run(self.store.record_message, ref.id,
                                                approval.status, message.message_id))
            return
        await self._edit(ref.chat_id, ref.message_id, approval, ref)

    async def _edit(self, chat_id: int, message_id: int, approval: Approval,
                    ref: MessageRef | None) -> None:
        text = render.request_text(approval)
        markup = None if approval.is_final else render.request_keyboard(approval)
        try:
            # Without reply_markup Telegram removes the buttons, which is what a final state wants.
            await self.bot.edit_message_text(text, chat_id=chat_id, message_id=message_id,
                                             parse_mode=render.PARSE_MODE, reply_markup=markup)
        except BadRequest as exc:
            if not any(q in str(exc).lower() for q in QUIET_EDIT_ERRORS):
                if ref is not None:
                    self._give_up(ref, exc)
                    return
                raise
            log.debug("edit of %s/%s: %s", chat_id, message_id, exc)
        except Forbidden as exc:
            if ref is not None:
                self._give_up(ref, exc)
                return
            raise
        if ref is not None:
            await self.store.run(self.store.record_message, ref.id, approval.status)

    def _give_up(self, ref: MessageRef, exc: TelegramError) -> None:
        self._skip.add(ref.id)
        log.error("Telegram refused message %s of approval %s in chat %s: %s",
                  ref.id, ref.approval_id, ref.chat_id, exc)

    # --- repairs ----------------------------------------------------------------------

    def repair(self, chat_id: int, message_id: int, approval: Approval) -> None:
        """Re-render a request's message that still shows buttons although the request is
        final (in a task). Only the request's own copies are touched: a ``/pending``
        listing is a snapshot and stays as it is."""
        if not self._running:
            return

        async def _repair() -> None:
            ref = await self.store.run(self.store.find_message, chat_id, message_id)
            if ref is None or ref.approval_id != approval.id:
                return
            for attempt in range(5):
                try:
                    await self._edit(chat_id, message_id, approval, ref)
                    return
                except BadRequest as exc:
                    log.warning("could not repair %s/%s: %s", chat_id, message_id, exc)
                    return
                except RetryAfter as exc:
                    await asyncio.sleep(_seconds(exc.retry_after))
                except NetworkError:
                    await asyncio.sleep(self.retry_base * 2 ** attempt)

        task = asyncio.create_task(_repair(), name=f"tapgate-repair-{chat_id}-{message_id}")
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)
