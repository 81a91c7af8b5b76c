"""Who may use the bot where, and how strangers are answered without slowing anyone.

Commands and taps count only from an allowed user (``TAPGATE_APPROVER_USER_IDS``)
in an approver chat (``TAPGATE_APPROVER_CHAT_IDS``, a chat a route posts to, or
the private chat of an allowed user). Anything else gets at most a short
refusal, and the refusals are cheap for the bot: one per user per interval, sent
from tasks no handler waits for (a reply to a group is paced at 20 a minute by
the rate limiter, and nothing else may queue behind it), and at most a few in
flight — beyond that they are dropped, since a refusal carries no information
anyone needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from telegram import Chat, Update, User
from telegram.error import TelegramError

log = logging.getLogger(__name__)


class Access(enum.Enum):
    """What the gate says about a (user, chat) pair."""

    ALLOWED = "allowed"
    STRANGER = "non-approver"  # an approver chat, but the user may not decide
    ELSEWHERE = "not an approver chat"  # whoever the user is


class Gate:
    """The access rule: an allowed user in an approver chat."""

    def __init__(self, approver_ids: set[int], chat_ids: list[int], router=None):
        self.approver_ids = set(approver_ids)
        self.chat_ids = set(chat_ids)
        self.router = router  # bot.routing.Router: route chats are approver chats too

    def is_approver_chat(self, chat: Chat | None, user: User | None) -> bool:
        """A configured chat, a route's chat, or the private chat of an allowed user
        (chat id = user id)."""
        if chat is None:
            return False
        if chat.id in self.chat_ids or (self.router is not None
                                        and self.router.is_route_chat(chat.id)):
            return True
        return (chat.type == Chat.PRIVATE and user is not None and chat.id == user.id
                and user.id in self.approver_ids)

    def check(self, user: User | None, chat: Chat | None) -> Access:
        if not self.is_approver_chat(chat, user):
            return Access.ELSEWHERE
        if user is None or user.id not in self.approver_ids:
            return Access.STRANGER
        return Access.ALLOWED


async def learn_routes(update: Update, context) -> None:
    """Before every other handler (decides nothing): an update from a chat the router
    does not know, while its routes may be stale, waits for one refresh, so a chat that
    routes applied elsewhere (``tapgate policy apply``) just added is an approver chat."""
    gate = context.application.bot_data["tapgate"].gate
    chat = update.effective_chat
    if (chat is not None and gate.router is not None and chat.id not in gate.chat_ids
            and not gate.router.is_route_chat(chat.id) and gate.router.stale):
        await gate.router.refresh()


class Refusals:
    """Sends refusals in the background: at most one per user per ``interval`` seconds,
    at most ``max_in_flight`` at once (the rest are dropped), remembering at most
    ``max_users`` users (the oldest are forgotten first)."""

    def __init__(self, interval: float = 60.0, max_in_flight: int = 8,
                 max_users: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.max_in_flight = max_in_flight
        self.max_users = max_users
        self.clock = clock
        self._last: OrderedDict[int, float] = OrderedDict()  # user id → last refusal, oldest first
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.sent = 0
        self.dropped = 0

    def offer(self, user_id: int | None, send: Callable[[], Awaitable[object]]) -> bool:
        """Start ``send()`` in a task if this user is due a refusal and there is room;
        True if it was started. Never waits."""
        now = self.clock()
        key = 0 if user_id is None else user_id
        while self._last:  # forget users whose interval has passed (kept in time order)
            oldest, at = next(iter(self._last.items()))
            if now - at < self.interval and len(self._last) <= self.max_users:
                break
            del self._last[oldest]
        if key in self._last or self._closed or len(self._tasks) >= self.max_in_flight:
            self.dropped += 1
            return False
        self._last[key] = now
        task = asyncio.create_task(self._send(send), name=f"tapgate-refusal-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.sent += 1
        return True

    @staticmethod
    async def _send(send: Callable[[], Awaitable[object]]) -> None:
        try:
            await send()
        except TelegramError as exc:  # the bot was removed from the chat, say
            log.info("could not send a refusal: %s", exc)
        except Exception:
            log.exception("could not send a refusal")

    async def close(self) -> None:
        """Cancel refusals still waiting (on the group pacer, say); nothing new starts."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
