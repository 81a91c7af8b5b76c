"""How updates are scheduled: taps at once, each chat's messages in order, chats apart.

PTB handles updates one at a time by default, so anything slow in one chat (a
reply held by the 20-a-minute group pacer, a chart being drawn, a stranger's
flood) delayed every tap behind it. PTB's own concurrent mode bounds the
number of updates in flight with one semaphore, and handlers stuck on a group
pacer can fill it. Here instead:

* a callback query (a tap) runs at once: it decides, answers (not paced per
  chat) and leaves the message edits to the notifier's own workers;
* messages run one after another per chat (a chat's commands answer in the
  order they were sent), different chats at the same time; so at most one
  handler per chat waits on that chat's pacer;
* a chat's backlog is bounded (updates past it are dropped and logged), so a
  flood into a chat whose lane is held cannot grow without bound.

``close()`` at shutdown gives running handlers a grace period, then cancels
them (a reply waiting minutes for the pacer is not worth holding shutdown),
and handlers of updates that arrive after the grace are cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

log = logging.getLogger(__name__)

# PTB creates a task per update before the processor sees it, so its semaphore bounds
# nothing that matters here; lanes do. This only keeps PTB's own bookkeeping finite.
UNBOUNDED = 1 << 30


@dataclass
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: int = 0  # updates waiting for or holding the lock


class ChatLanes(BaseUpdateProcessor):
    """A :class:`BaseUpdateProcessor`: taps unserialized, messages serialized per chat."""

    def __init__(self, backlog_per_chat: int = 100):
        super().__init__(UNBOUNDED)
        self.backlog_per_chat = backlog_per_chat
        self._lanes: dict[int, _Lane] = {}
        self._running: set[asyncio.Task] = set()
        self._deadline: float | None = None
        self.dropped = 0

    async def initialize(self) -> None:
        """Nothing to set up: lanes are made on demand."""

    async def shutdown(self) -> None:
        """Nothing left to free after :meth:`close` (lanes go away when empty)."""

    @staticmethod
    def lane_of(update: object) -> int | None:
        """The chat whose lane ``update`` waits in; None to run it at once (a tap)."""
        if not isinstance(update, Update) or update.callback_query is not None:
            return None
        chat = update.effective_chat
        return chat.id if chat is not None else None

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        """Run ``coroutine`` at once or in its chat's lane (see the module docstring)."""
        key = self.lane_of(update)
        if key is None:
            await self._run(coroutine)
            return
        lane = self._lanes.setdefault(key, _Lane())
        if lane.queued >= self.backlog_per_chat:
            self.dropped += 1
            log.warning("chat %s has %d updates waiting; dropped one", key, lane.queued)
            coroutine.close()  # type: ignore[attr-defined]
            return
        lane.queued += 1
        try:
            async with lane.lock:
                await self._run(coroutine)
        finally:
            lane.queued -= 1
            if lane.queued == 0 and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _run(self, coroutine: Awaitable[Any]) -> None:
        # A task of our own, so close() can cancel it without cancelling PTB's wrapper
        # (which must still mark the update done for Application.stop()).
        task = asyncio.ensure_future(coroutine)
        self._running.add(task)
        try:
            timeout = None
            if self._deadline is not None:
                timeout = max(0.0, self._deadline - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        finally:
            self._running.discard(task)
        if task.cancelled():
            log.info("an update's handler was cancelled at shutdown")
        elif task.exception() is not None:  # PTB routes handler errors to its error handler
            log.error("update processing failed: %r", task.exception())

    @property
    def busy(self) -> int:
        """Handlers running now."""
        return len(self._running)

    async def close(self, grace: float = 2.0) -> None:
        """Let running handlers finish for up to ``grace`` seconds, then cancel them; from
        then on every new handler is cancelled before it runs."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + grace
        running = set(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
