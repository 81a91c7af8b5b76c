"""Decisions made by other processes, heard at once: LISTEN/NOTIFY on PostgreSQL.

The Store sends ``pg_notify('tapgate_approval', id)`` in the transaction of
every final transition. This listener wakes the agents waiting here on that
id, so a decision taken by another bot instance or the command line reaches
them in milliseconds instead of at the waiters' once-a-second re-read (which
stays as the fallback while the listener reconnects).

A notification sent while the listener is disconnected (a server restart,
``pg_terminate_backend``) is lost, so every reconnect re-reads the requests
that have waiters and wakes those that became final meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import psycopg

from bot.approvals import ApprovalManager
from storage.base import NOTIFY_CHANNEL
from storage.db import PG_CONNECT_TIMEOUT

log = logging.getLogger(__name__)


class DecisionListener:
    """Listens on its own autocommit connection; reconnects at least every ``retry_max`` s.

    The retry is capped low (1 s) on purpose: a reconnect attempt costs one
    refused TCP connection, and waiters should hear decisions again within a
    second of the server accepting connections, not after a long backoff.
    """

    def __init__(self, url: str, manager: ApprovalManager, retry_max: float = 1.0,
                 channels: Iterable[str] = ()):
        self.url = url
        self.manager = manager
        self.retry_max = retry_max
        # Decisions' channel last: it is the session's last query (tests look for it).
        self.channels = [*(c for c in channels if c != NOTIFY_CHANNEL), NOTIFY_CHANNEL]
        # ``subscriber(channel, payload)`` after every notification, and with payload
        # None after every (re)connect: something may have been missed (bot.leader).
        self._subscribers: list[Callable[[str, str | None], None]] = []
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()

    def subscribe(self, subscriber: Callable[[str, str | None], None]) -> None:
        self._subscribers.append(subscriber)

    def _tell(self, channel: str, payload: str | None) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(channel, payload)
            except Exception:
                log.exception("notification subscriber failed")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tapgate-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.1
        failing = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT) as conn:
                    for channel in self.channels:
                        await conn.execute(f"LISTEN {channel}")
                    self.listening.set()
                    delay = 0.1
                    if failing:
                        log.info("PostgreSQL LISTEN is back")
                        failing = False
                    await self._catch_up()
                    self._tell(NOTIFY_CHANNEL, None)
                    async for notice in conn.notifies():
                        if notice.channel == NOTIFY_CHANNEL:
                            await self.manager.wake(notice.payload)
                        self._tell(notice.channel, notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server restart, network: the re-read covers the gap
                self.listening.clear()
                # One warning per outage; the attempts every second after it are routine.
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "PostgreSQL LISTEN failed (%s); retrying in %.1f s", exc, delay)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def _catch_up(self) -> None:
        """Wake the waits whose request became final while nobody was listening."""
        try:
            await self.manager.wake_all()
        except Exception as exc:  # the waiters' own re-read still covers them
            log.warning("could not re-read the awaited requests after reconnecting: %s", exc)
