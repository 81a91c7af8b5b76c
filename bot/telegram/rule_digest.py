"""The rule digest: quiet but visible automatic approvals.

A request a rule approves gets no Telegram message of its own. Instead the chat
where the rule was made (the first approver chat for a rule made by the CLI or
the API) gets one line per rule per hour of use, "♾️ Rule #12 approved 37
requests from claude-code …", sent once and then edited in place as the count
grows. The database says what is owed (``store.rule_uses_owed``: windows whose
count differs from what their line shows); each line sent or edited is recorded
with a compare-and-set (``store.record_rule_use``), so a restart, a second
instance or a failure never loses a count, and a line is never sent twice.

A busy rule costs at most one edit per ``min_edit_interval`` seconds per line:
an edit that is not due yet waits (the count keeps growing meanwhile, and the
next edit shows all of it). The worker is poked when a rule-approved request is
published, and by a periodic job (on start, and for uses counted by another
instance).

Only the instance that posts (the leader: its notifier runs) posts digest lines, and
each send or edit passes the notifier's fence first (:mod:`bot.cluster`); an
instance that loses the lead stops, and what it left is owed to the next leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from telegram import Bot
from telegram.error import BadRequest, ChatMigrated, Forbidden, RetryAfter

from bot.telegram import render
from bot.telegram import render_rules as rr
from bot.telegram.failures import seconds_of
from storage.records import Approval
from storage.rule_records import RuleUse
from storage.store import Store

log = logging.getLogger(__name__)


class NotLeading(Exception):
    """The fence refused a send: another instance may lead now."""

GONE = ("message to edit not found", "message can't be edited", "message_id_invalid")
NOT_MODIFIED = "message is not modified"


class RuleDigest:
    """Pays the rule digest lines owed, from one worker task."""

    def __init__(self, bot: Bot, store: Store, chat_ids: list[int], notifier=None,
                 min_edit_interval: float = 30.0, retry_base: float = 0.5,
                 retry_max: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.bot = bot
        self.store = store
        self.chat_ids = list(chat_ids)
        self.notifier = notifier  # posts only while it runs (this instance leads)
        self.min_edit_interval = min_edit_interval
        self.retry_base, self.retry_max = retry_base, retry_max
        self.clock = clock
        self._touched: dict[tuple[int, int], float] = {}  # (chat, message) → last send/edit
        self._unrecorded: list[Callable[[], object]] = []
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._closed = False
        self.sent = 0
        self.edited = 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self.poke()

    async def stop(self, grace: float = 2.0) -> None:
        """For good (shutdown): let the line in hand finish (up to ``grace`` s); what is
        left stays owed."""
        self._closed = True
        self._running = False
        task, self._task = self._task, None
        if task is None:
            return
        self._wake.set()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    def on_approval(self, approval: Approval, created: bool) -> None:
        """Approval-manager listener: a request a rule approved means a count to show."""
        if approval.status == "approved" and (approval.decided_by or "").startswith("rule:"):
            self.poke()

    @property
    def leading(self) -> bool:
        """True if this instance posts (no notifier: always)."""
        return self.notifier is None or bool(getattr(self.notifier, "running", True))

    def poke(self) -> None:
        """Something may be owed: make sure the worker looks (if this instance posts)."""
        if self._closed or not self.leading:
            return
        self._running = True
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work(), name="tapgate-rule-digest")

    @property
    def running(self) -> bool:
        return self._running

    @property
    def idle(self) -> bool:
        return self._task is None or self._task.done()

    # --- the worker -------------------------------------------------------------------

    async def _work(self) -> None:
        failures = 0
        while self._running:
            self._wake.clear()
            if not self.leading:
                self._running = False
                return
            try:
                delay = await self._round()
                failures = 0
            except asyncio.CancelledError:
                raise
            except NotLeading:
                log.info("the rule digest stops: this instance no longer leads")
                self._running = False
                return
            except RetryAfter as exc:
                delay = seconds_of(exc.retry_after)
                log.warning("Telegram asks to wait %.0f s (rule digest)", delay)
            except Exception as exc:  # network, Telegram 5xx, database hiccup
                failures += 1
                delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 20))
                log.warning("could not post the rule digest (%s: %s); retrying in %.1f s",
                            type(exc).__name__, exc, delay)
            if delay is None and not self._wake.is_set():
                return  # nothing owed and nothing deferred: the next poke starts a worker
            if delay is not None and delay > 0:
                # A poke wakes us early (a new window may need its line); a deferred edit
                # is still held back by its own due time at the next round.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def _round(self) -> float | None:
        """Pay what is owed and due; seconds until the earliest deferred edit, or None."""
        await self._flush()
        owed = await self.store.run(self.store.rule_uses_owed)
        wait: float | None = None
        for use in owed:
            if not self._running:
                return None
            due_in = await self._pay(use)
            if due_in is not None:
                wait = due_in if wait is None else min(wait, due_in)
        return wait

    def chat_of(self, use: RuleUse) -> int | None:
        if use.chat_id is not None:
            return use.chat_id
        return self.chat_ids[0] if self.chat_ids else None

    async def _pay(self, use: RuleUse) -> float | None:
        """Send or edit one line; seconds to wait if its edit is not due yet."""
        chat_id = self.chat_of(use)
        if chat_id is None:
            return None
        text, markup = rr.digest_line(use), rr.digest_markup(use)
        if use.message_id is not None:
            key = (chat_id, use.message_id)
            last = self._touched.get(key)
            now = self.clock()
            if last is not None and now - last < self.min_edit_interval:
                return self.min_edit_interval - (now - last)
            await self._fenced()
            try:
                await self.bot.edit_message_text(text, chat_id=chat_id,
                                                 message_id=use.message_id,
                                                 parse_mode=render.PARSE_MODE,
                                                 reply_markup=markup)
                self.edited += 1
                self._touched[key] = self.clock()
                await self._record(use, use.message_id)
                return None
            except BadRequest as exc:
                text_of = str(exc).lower()
                if NOT_MODIFIED in text_of:
                    await self._record(use, use.message_id)
                    return None
                if not any(g in text_of for g in GONE):
                    log.error("Telegram refused the digest line of rule %s in chat %s: %s",
                              use.rule_id, chat_id, exc)
                    await self._record(use, use.message_id)  # give up this count
                    return None
                log.info("digest line of rule %s is gone (%s); sending it anew", use.rule_id,
                         exc)
        await self._fenced()
        try:
            message = await self.bot.send_message(chat_id, text, parse_mode=render.PARSE_MODE,
                                                  reply_markup=markup)
        except (BadRequest, Forbidden, ChatMigrated) as exc:
            # This chat refuses the line (the bot was removed, say): this count is given
            # up, so it never holds up the other lines; the next use tries again.
            log.error("cannot post the digest of rule %s in chat %s: %s", use.rule_id,
                      chat_id, exc)
            await self._record(use, use.message_id)
            return None
        self.sent += 1
        self._touched[(chat_id, message.message_id)] = self.clock()
        await self._record(use, message.message_id)
        return None

    async def _fenced(self) -> None:
        fence = getattr(self.notifier, "fence", None)
        if fence is not None and not await fence():
            raise NotLeading("this instance no longer leads: it sends nothing")

    async def _record(self, use: RuleUse, message_id: int | None) -> None:
        """Record what the line shows. Kept and retried first if the database fails, so a
        sent line is never sent again."""

        def write() -> object:
            return self.store.record_rule_use(use.rule_id, use.window_start, use.uses,
                                              message_id)

        self._unrecorded.append(write)
        await asyncio.shield(self._flush())

    async def _flush(self) -> None:
        while self._unrecorded:
            write = self._unrecorded[0]
            await self.store.run(write)
            with contextlib.suppress(ValueError):
                self._unrecorded.remove(write)
