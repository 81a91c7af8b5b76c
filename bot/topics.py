"""Forum topics: each agent's (or run's) requests in a topic of their own.

With ``TAPGATE_TOPIC_PER=agent`` (or ``run``), the first request of an agent (a run)
posted to a chat that has topics — a forum supergroup, or a private chat once the
bot's topic mode is on (Bot API 9.4) — creates a topic ("🤖 claude-code",
"▶ nightly-build"); the topic is remembered in the database (:mod:`storage.topics`)
and every later request of that agent (run) is posted there, also after a restart.
A request without a run goes to its agent's topic. A topic someone deleted is
forgotten when Telegram refuses a message for it, and the next request creates it again.

A chat without topics is learnt from Telegram's answer ("the chat is not a forum")
and left alone for ``recheck_after`` seconds: its requests go to the main thread and
createForumTopic is not asked again for every message.

Only the leader posts: the notifier asks :meth:`Topics.thread_for` inside its fenced
send, so topics are created by the instance that posts, never by the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable

from telegram import Bot
from telegram.error import BadRequest

from bot.telegram.fit import clip, one_line
from storage.digests import NewPost
from storage.errors import NotFound
from storage.records import Approval
from storage.store import Store

log = logging.getLogger(__name__)

MAX_NAME = 128  # Telegram's limit on a topic name
RECHECK_AFTER = 600.0  # seconds a chat that refused topics is left alone
# The six colors Telegram allows for a topic's icon; each key keeps its own.
ICON_COLORS = (0x6FB9F0, 0xFFD67E, 0xCB86DB, 0x8EEE98, 0xFF93B2, 0xFB6F5F)


class Topics:
    """Finds (or creates) the topic of a chat a request is posted in.

    ``per`` is ``agent``, ``run`` or ``none`` (:meth:`thread_for` then always says None).
    """

    def __init__(self, bot: Bot, store: Store, per: str,
                 recheck_after: float = RECHECK_AFTER,
                 clock: Callable[[], float] = time.monotonic):
        if per not in ("agent", "run", "none"):
            raise ValueError(f"per must be agent, run or none, not {per!r}")
        self.bot = bot
        self.store = store
        self.per = per
        self.recheck_after = recheck_after
        self.clock = clock
        self._threads: dict[tuple[int, str], int] = {}  # the database's rows, as read
        self._locks: dict[tuple[int, str], list] = {}  # [lock, holders and waiters]
        self._no_topics: dict[int, float] = {}  # chat -> when it was found without topics

    @staticmethod
    def key_of(per: str, approval: Approval | NewPost) -> str:
        """The topic key of a request: ``agent:<agent>``, or ``run:<run id>`` when topics
        are per run and it has a run."""
        if per == "run" and approval.run_id:
            return f"run:{approval.run_id}"
        return f"agent:{approval.agent}"

    async def thread_for(self, chat_id: int, approval: Approval) -> int | None:
        """The ``message_thread_id`` to post ``approval`` with in ``chat_id``, creating the
        topic on first use; None: the main thread (topics off, or the chat has none).

        Concurrent calls for one topic create it once. Raises what Telegram raises
        beyond a refusal of topics (flood control, network, a chat refusing the bot),
        so the caller retries as for any send.
        """
        if self.per == "none" or not self._may_have_topics(chat_id):
            return None
        key = self.key_of(self.per, approval)
        thread = self._threads.get((chat_id, key))
        if thread is not None:
            return thread
        # One lock per topic key, kept while someone holds or awaits it.
        entry = self._locks.setdefault((chat_id, key), [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._find_or_create(chat_id, key, approval)
        finally:
            entry[1] -= 1
            if not entry[1]:
                self._locks.pop((chat_id, key), None)

    async def forget(self, chat_id: int, thread_id: int) -> None:
        """Telegram says topic ``thread_id`` of ``chat_id`` is gone: forget it, so the next
        :meth:`thread_for` of its key creates a new one, and owe the requests still
        pending in it as new posts (their messages were deleted with it)."""
        for cached in [k for k, t in self._threads.items() if k[0] == chat_id and t == thread_id]:
            del self._threads[cached]
        await self.store.run(self.store.forget_topic, chat_id, thread_id, self.per)
        log.info("topic %s of chat %s is gone; the next request makes a new one, and "
                 "the requests still pending in it are posted again", thread_id, chat_id)

    # --- inside ---------------------------------------------------------------------

    def _may_have_topics(self, chat_id: int) -> bool:
        found_without = self._no_topics.get(chat_id)
        if found_without is not None:
            if self.clock() - found_without < self.recheck_after:
                return False
            del self._no_topics[chat_id]  # time to ask again (topics may be on by now)
        # getMe said the bot's topic mode is off: no private chat has topics.
        return not (chat_id > 0 and self._bot_has_topics() is False)

    def _bot_has_topics(self) -> bool | None:
        try:
            return getattr(self.bot.bot, "has_topics_enabled", None)
        except RuntimeError:  # not initialized (getMe not called yet): ask Telegram instead
            return None

    async def _find_or_create(self, chat_id: int, key: str, approval: Approval) -> int | None:
        thread = self._threads.get((chat_id, key))
        if thread is not None:  # made while this call waited for the lock
            return thread
        if chat_id in self._no_topics:  # found without topics while this call waited
            return None
        topic = await self.store.run(self.store.get_topic, chat_id, key)
        if topic is None:
            name = await self._name(approval, key)
            try:
                made = await self.bot.create_forum_topic(
                    chat_id, name, icon_color=ICON_COLORS[zlib.crc32(key.encode()) % 6])
            except BadRequest as exc:
                # "the chat is not a forum", "not enough rights to create a topic", a bot
                # whose topic mode is off: post to the main thread, ask again later.
                self._no_topics[chat_id] = self.clock()
                log.info("chat %s gets no topics (%s); asking again in %.0f s",
                         chat_id, exc, self.recheck_after)
                return None
            topic = await self.store.run(self.store.save_topic, chat_id, key,
                                         made.message_thread_id, made.name)
            log.info("created topic %r (%s) in chat %s", made.name, made.message_thread_id,
                     chat_id)
        self._threads[(chat_id, key)] = topic.thread_id
        return topic.thread_id

    async def _name(self, approval: Approval, key: str) -> str:
        """"🤖 <agent>" or "▶ <run name or id>", on one line, cut to Telegram's limit."""
        if key.startswith("run:"):
            label = approval.run_id or ""
            try:
                run = await self.store.run(self.store.get_run, label)
                label = run.name.strip() or label
            except NotFound:
                pass
            name = f"▶ {one_line(label)}"
        else:
            name = f"🤖 {one_line(approval.agent)}"
        return clip(name, MAX_NAME)
