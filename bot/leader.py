"""The leader's duties: started when this instance gains the lead, stopped when it loses it.

The leader (:mod:`bot.cluster`) alone consumes Telegram's updates (polling, or
registering the webhook), pays the outbox (every owed post and edit, fenced by
its lease), delivers the budget alerts on schedule and settles what was decided
anywhere. Every instance serves its own socket, wakes its own waiters and runs
the expiry compare-and-set; those need no leader.

Decisions and requests made on other instances reach the leader by
LISTEN/NOTIFY (:class:`bot.pgnotify.DecisionListener`): a final transition
(``tapgate_approval``) makes it edit the copies and settle tool calls and grants
(idempotent: the store's compare-and-set applies a grant once); a new request
made elsewhere (``tapgate_owed``, sent by the instance that took it) makes it
post. A sweep every ``SWEEP_SECONDS`` and a catch-up after every reconnect cover
notifications lost while a connection was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, ApplicationHandlerStop, TypeHandler

from bot.approvals import ApprovalManager
from bot.cluster import Role
from bot.config import Settings
from bot.governance import Governance
from bot.telegram import webhook
from bot.telegram.app import ALLOWED_UPDATES, BOT_COMMANDS, POLL_TIMEOUT
from bot.telegram.notifier import TelegramNotifier
from storage.base import NOTIFY_CHANNEL
from storage.db import is_postgres
from storage.instances import OWED_CHANNEL
from storage.records import Approval
from storage.store import Store

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
RECENT = 10_000  # final transitions made here, remembered so their NOTIFY is not redone


class LeaderDuties:
    """Starts and stops the leader's work as :class:`bot.cluster.Role` says."""

    def __init__(self, role: Role, app: Application, notifier: TelegramNotifier,
                 governance: Governance, manager: ApprovalManager, store: Store,
                 settings: Settings):
        self.role = role
        self.app = app
        self.notifier = notifier
        self.governance = governance
        self.manager = manager
        self.store = store
        self.settings = settings
        self.active = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._gaining: asyncio.Task | None = None
        self._sweeping: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._mine: OrderedDict[str, None] = OrderedDict()
        self._hinting = False
        self._hint_again = False
        self._clustered = is_postgres(store.db)
        notifier.fence = role.confirm
        manager.subscribe(self._on_local)
        role.subscribe(lambda leading: self._changed.set())
        # Before every handler: updates a paused leader fetched before it lost the lead
        # are dropped unhandled (it never confirms them: the new leader gets them again).
        app.add_handler(TypeHandler(Update, self._gate), group=-2)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the election; if this instance leads at once, its duties run on return."""
        await self.role.start()
        if self.role.leading:
            self._changed.clear()
            self.active = True
            await self._gain()
        self._task = asyncio.create_task(self._follow(), name="tapgate-leader-duties")

    async def stop(self) -> None:
        """Stop the duties (gracefully: this instance still leads), then leave the lead."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.active:
            await self._lose(graceful=True)
        await self.role.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self.role.leading and not self.active:
                self.active = True
                self._gaining = asyncio.create_task(self._gain(), name="tapgate-gain")
                self._gaining.add_done_callback(_log_failure)
            elif not self.role.leading and self.active:
                await self._lose(graceful=False)
            if not (self.role.leading or self.role.stranded) and self.app.updater.running:
                await self._stop_polling(graceful=False)

    async def _gain(self) -> None:
        log.info("leader duties start: %s", "webhook" if self.settings.webhook_mode
                 else "polling")
        await self.notifier.start()
        if self.settings.webhook_mode:
            await webhook.register(self.app.bot, self.settings)
        elif not self.app.updater.running:  # it may have kept polling (Role.stranded)
            # Pending updates are kept (taps made while nobody polled still count).
            await self.app.updater.start_polling(
                timeout=POLL_TIMEOUT, poll_interval=0.0, allowed_updates=ALLOWED_UPDATES,
                drop_pending_updates=False, bootstrap_retries=-1)
        self._sweeping = self._spawn(self._sweep())
        with contextlib.suppress(TelegramError):
            await self.app.bot.set_my_commands(BOT_COMMANDS)
        # What others decided while nobody led, or unheard: settle it; post owed alerts.
        await self.governance.recover()

    async def _lose(self, graceful: bool) -> None:
        """At once when the lead is lost: no more polling, posting or alerts."""
        self.active = False
        for task in (self._gaining, self._sweeping):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._gaining = self._sweeping = None
        if graceful or not self.role.stranded:  # stranded: taps are still answered
            await self._stop_polling(graceful)
        await self.notifier.stop(**({} if graceful else {"grace": 0.0}))
        log.info("leader duties stopped")

    async def _stop_polling(self, graceful: bool) -> None:
        if self.app.updater.running:
            if not graceful:
                # PTB confirms the fetched updates with one more getUpdates on stop:
                # the new leader owns them now (and would see a 409 Conflict).
                self.app.updater._Updater__polling_cleanup_cb = None
            await self.app.updater.stop()
            if not graceful:
                # What it fetched but did not confirm is fetched again if it leads again.
                self.app.updater._last_update_id = 0

    # --- hearing about work -------------------------------------------------------------

    def on_notice(self, channel: str, payload: str | None) -> None:
        """DecisionListener subscriber: a NOTIFY (None: reconnected, anything missed)."""
        if not self.active:
            return
        self.notifier.kick()
        if payload is None:
            self._spawn(self.governance.recover())
        elif channel == NOTIFY_CHANNEL and payload not in self._mine:
            self._spawn(self._settle(payload))
        elif channel == OWED_CHANNEL:
            pass  # the kick above posts it

    async def _settle(self, approval_id: str) -> None:
        try:
            approval = await self.manager.get(approval_id)
        except Exception as exc:  # the sweep and the next catch-up cover it
            log.warning("could not read approval %s decided elsewhere: %s", approval_id, exc)
            return
        self.governance.on_approval(approval, False)  # settles tool calls and grants

    def _on_local(self, approval: Approval, created: bool) -> None:
        """Manager listener: remember finals made here; tell the leader of new requests
        and of copies owed without a decision (an escalation or a vote made here; a
        decision reaches it through its own notification)."""
        if approval.is_final:
            self._mine[approval.id] = None
            if len(self._mine) > RECENT:
                self._mine.popitem(last=False)
        elif self._clustered and not self.active:
            self._hint()

    def _hint(self) -> None:
        if self._hinting:
            self._hint_again = True
            return
        self._hinting = True
        self._spawn(self._send_hints())

    async def _send_hints(self) -> None:
        try:
            while True:
                self._hint_again = False
                try:
                    await self.store.run(self.store.notify_owed)
                except Exception as exc:  # the leader's sweep finds the copy anyway
                    log.debug("could not notify the leader of a new request: %s", exc)
                if not self._hint_again:
                    return
        finally:
            self._hinting = False

    async def _sweep(self) -> None:
        """Look for owed copies every SWEEP_SECONDS (a NOTIFY may have been lost)."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.notifier.kick()

    async def deliver_alerts(self) -> None:
        """The alert job's body: only the leader delivers on schedule."""
        if self.active and self.role.valid():
            await self.governance.deliver_alerts()

    async def _gate(self, update: Update, context) -> None:
        if self.settings.webhook_mode or self.role.stranded:
            return  # webhook: every instance handles what it receives
        if not await self.role.confirm():
            log.info("update %s dropped: this instance no longer leads", update.update_id)
            raise ApplicationHandlerStop

    def fence_updates(self) -> bool:
        """May this instance call getUpdates now (see bot.telegram.fence)?"""
        return self.role.valid() or self.role.stranded

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not take up the leader's duties", exc_info=task.exception())
