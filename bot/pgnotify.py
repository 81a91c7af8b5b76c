"""Decisions made by other processes, heard at once: LISTEN/NOTIFY on PostgreSQL.

The Store sends ``pg_notify('tapgate_approval', id)`` in the transaction of
every final transition. This listener wakes the agents waiting here on that
id, so a decision taken by another bot instance or the command line reaches
them in milliseconds instead of at the waiters' once-a-second re-read (which
stays as the fallback while the listener reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from bot.approvals import ApprovalManager
from storage.base import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class DecisionListener:
    """Listens on its own autocommit connection; reconnects with backoff."""

    def __init__(self, url: str, manager: ApprovalManager, retry_max: float = 30.0):
        self.url = url
        self.manager = manager
        self.retry_max = retry_max
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tapgate-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url,
                                                                 autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    async for notice in conn.notifies():
                        await self.manager.wake(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server restart, network: the re-read covers the gap
                self.listening.clear()
                log.warning("PostgreSQL LISTEN failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
