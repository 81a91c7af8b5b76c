"""``tapgate run``: migrate, then serve Telegram polling, the socket API and expiry.

Python-telegram-bot's ``run_polling`` would own the event loop and the
signals; Tapgate drives the Application's lifecycle itself so the aiohttp
socket server shares the loop, and stops everything in reverse order on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Iterable

from telegram.error import InvalidToken, NetworkError, RetryAfter

from bot import places, redact
from bot.approvals import ApprovalManager
from bot.cluster import Leadership, SoleLeadership, cluster_health
from bot.config import ConfigError, Settings
from bot.expiry import schedule_expiry, sweep
from bot.governance import Governance
from bot.leader import LeaderDuties
from bot.pgnotify import DecisionListener
from bot.routing import Router
from bot.sqlite_lock import SqliteLock
from bot.telegram import webhook
from bot.telegram.app import UPDATES_REQUEST, build_application, stop_handling
from storage.db import is_postgres
from storage.instances import OWED_CHANNEL
from storage.records import Budgets
from storage.store import Store

log = logging.getLogger("tapgate")


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Log to stderr at ``level``; ``secrets`` (the bot token) never appear in any line.

    PTB logs its API URLs, which contain the token, at DEBUG; the filter sits on the
    root handlers so it covers every logger, level, argument and traceback.
    """
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install(secrets)
    # httpx logs every request URL at INFO, and the URL contains the bot token.
    for noisy in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tune_gc() -> None:
    """After start-up: keep the start-up heap out of collections and collect less often.

    The price data, schemas and handlers are never garbage, yet every young
    collection would walk them again; a 2,000-entry ledger list otherwise
    spends about a fifth of its time in the collector.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class Service:
    """Everything ``tapgate run`` serves, startable and stoppable inside one event loop."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 with_socket: bool = True):
        settings.require_for_run()
        self.settings = settings
        self.store = store or Store.from_url(settings.database_url)
        self._own_store = store is None
        self.router = Router.from_settings(self.store, settings)  # which chats see what
        self.manager = ApprovalManager(
            self.store, settings.approver_chat_ids, settings.default_ttl,
            required_approvals=settings.default_required_approvals,
            escalate_after=settings.escalate_after,
            escalation_chat_ids=settings.escalation_chat_ids, router=self.router)
        self.governance = Governance(self.store, self.manager, Budgets(
            budget_tokens=settings.default_budget_tokens,
            budget_dollars=settings.default_budget_dollars,
            budget_loops=settings.default_budget_loops,
            budget_seconds=settings.default_budget_seconds))
        self.app = build_application(settings, self.manager, self.store)
        self.with_socket = with_socket
        self.socket = None
        self.webhook: webhook.WebhookServer | None = None  # webhook mode: our listener
        self._init_cluster()

    def _init_cluster(self) -> None:
        """Who leads (bot/cluster.py) and what the leader does (bot/leader.py). SQLite: this
        instance, alone (a lock file refuses a second); PostgreSQL: an advisory lock."""
        url = self.settings.database_url
        clustered = is_postgres(self.store.db)
        self.role = (Leadership(url, self.settings.failover_seconds) if clustered
                     else SoleLeadership())
        self.duties = LeaderDuties(self.role, self.app, self.notifier, self.governance,
                                   self.manager, self.store, self.settings)
        self.app.bot_data[UPDATES_REQUEST].fence = self.duties.fence_updates
        self.listener = (DecisionListener(url, self.manager, channels=[OWED_CHANNEL])
                         if clustered else None)
        if self.listener is not None:
            self.listener.subscribe(self.duties.on_notice)
        db_file = places.sqlite_file(url)
        self._sqlite_lock = SqliteLock(db_file) if db_file is not None else None

    @property
    def notifier(self):
        return self.app.bot_data["tapgate"].notifier

    async def start(self) -> None:
        """Migrate, expire what passed while down, connect to Telegram, start serving."""
        # The database runs on executor threads: a 5 ms GIL switch interval would let a
        # busy event loop hold a finished commit back for that long; decisions are latency-bound.
        sys.setswitchinterval(0.0005)
        # The well-known places (~/.local/state/tapgate, $XDG_RUNTIME_DIR/tapgate) may not
        # exist yet; SQLite and bind() need their directories, private to this user.
        places.prepare_dirs(self.settings.socket_path if self.with_socket else None,
                            self.settings.database_url)
        if self._sqlite_lock is not None:
            self._sqlite_lock.acquire()  # SQLite is single-instance: refuse a second one
        applied = await self.store.run(self.store.migrate)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        await self.router.refresh()  # the stored routes, before anything is posted
        await sweep(self.manager)
        # Agents can submit and wait while Telegram is still unreachable: requests are
        # kept as owed messages and posted once the notifier runs.
        await self._start_extras()
        await self._initialize_telegram()
        schedule_expiry(self.app, self.manager, self.settings.expiry_interval)
        self._schedule_alert_delivery()
        await self.app.start()
        if self.settings.webhook_mode:  # webhook mode: see _start_webhook
            await self._start_webhook()
        if self.listener is not None:
            await self.listener.start()
        # The leader polls (or registers the webhook), pays the outbox, delivers alerts and
        # settles what others decided; this returns once the first election is over.
        await self.duties.start()
        log.info("Tapgate is serving: %d approver chat(s), %d route(s), database %s",
                 len(self.settings.approver_chat_ids), self.router.routes,
                 "postgresql" if is_postgres(self.store.db) else "sqlite")

    # --- webhook mode (bot/telegram/webhook.py) -------------------------------------
    async def _start_webhook(self) -> None:
        """Every instance listens for webhook updates and none polls; the leader
        registers the webhook. Nothing deletes it at shutdown."""
        self.webhook = await webhook.start(self.app, self.settings, self.store)
        # The leader registers it (bot/leader.py), again at every change of leader.
    # --- end of webhook mode ------------------------------------------------------------

    def _schedule_alert_delivery(self) -> None:
        """Post owed budget alerts on the expiry job's schedule (a delivery that failed
        after a ledger append committed is retried here)."""

        async def job(context) -> None:
            await self.duties.deliver_alerts()  # the leader's

        interval = self.settings.expiry_interval
        self.app.job_queue.run_repeating(job, interval=interval, first=interval,
                                         name="tapgate-alerts",
                                         job_kwargs={"max_instances": 1, "coalesce": True})

    async def _initialize_telegram(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.app.initialize()
                return
            except InvalidToken:
                # PTB's message quotes the token; the token is never printed or logged.
                raise ConfigError("TAPGATE_TELEGRAM_TOKEN: rejected by Telegram (check the "
                                  "token from @BotFather)") from None
            except (NetworkError, RetryAfter) as exc:
                log.warning("Telegram unreachable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _start_extras(self) -> None:
        """The socket API and governance hooks (absent pieces are skipped)."""
        if self.with_socket:
            from bot.api.server import CLUSTER, SocketServer

            self.socket = SocketServer(self.settings.socket_path, self.settings.allowed_uids,
                                       self.store, self.manager, **self._socket_kwargs())
            self.socket.app[CLUSTER] = lambda: cluster_health(self.role, self.store)
            await self.socket.start()

    def _socket_kwargs(self) -> dict:
        from bot.pricing import Pricer

        return {"pricer": Pricer(), "governance": self.governance,
                "admin_uids": self.settings.admin_uids}

    async def stop(self) -> None:
        """Stop in reverse order; unfinished Telegram edits stay owed for the next start."""
        if self.socket is not None:
            await self.socket.stop()
        await self.governance.drain()
        if self.listener is not None:
            await self.listener.stop()
        await self.duties.stop()  # stops polling and paying, then leaves the lead
        await self.notifier.stop()
        await webhook.stop(self.webhook)  # webhook mode: stop listening (webhook stays set)
        self.webhook = None
        if self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await stop_handling(self.app)  # handlers held by a group's pacer must not hold this
            await self.app.stop()
        await self.app.shutdown()
        # A start that failed in getMe leaves the Bot's HTTP clients open; this closes
        # them (and does nothing when app.shutdown() already did).
        await self.app.bot.shutdown()
        await self.router.close()  # a refresh in flight reads the Store
        if self._own_store:
            self.store.close()
        if self._sqlite_lock is not None:
            self._sqlite_lock.release()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = Service(settings)
    try:
        # A signal during start-up (say, while Telegram is unreachable and start
        # retries) must stop the bot too, not wait for the start to finish.
        starting = asyncio.create_task(service.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            stopping.cancel()
            starting.result()  # a failed start raises here
            tune_gc()
            await stop.wait()
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log.info("stopping")
    finally:
        await service.stop()


def run_service(settings: Settings) -> int:
    """Entry point of ``tapgate run``; returns the exit code."""
    configure_logging(settings.log_level, redact.token_secrets(
        settings.telegram_token.get_secret_value() if settings.telegram_token else None))
    asyncio.run(serve(settings))
    return 0
