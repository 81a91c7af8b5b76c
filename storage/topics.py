"""Forum topics: which topic of a chat gathers an agent's (or a run's) requests.

A topic is created in Telegram once per (chat, key) and remembered here, so a
restart (or the next leader) posts into the same topic instead of making another.
A topic someone deleted is forgotten by its thread id; the next request creates a
new one, and :meth:`TopicStore.save_topic` replaces the row of that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.base import StoreBase, unit_of_work
from storage.clock import to_text
from storage.models import ForumTopicRow


@dataclass(frozen=True)
class Topic:
    """A remembered topic: ``thread_id`` is Telegram's ``message_thread_id``."""

    chat_id: int
    key: str
    thread_id: int
    name: str
    created_at: datetime


def _topic(row: ForumTopicRow) -> Topic:
    return Topic(row.chat_id, row.topic_key, row.thread_id, row.name, row.created_at)


class TopicStore(StoreBase):
    """Forum-topic operations of the Store."""

    @unit_of_work
    def get_topic(self, chat_id: int, key: str) -> Topic | None:
        """The topic of ``key`` in ``chat_id``, or None if none is remembered."""
        row = (ForumTopicRow.select()
               .where((ForumTopicRow.chat_id == chat_id) & (ForumTopicRow.topic_key == key))
               .first())
        return None if row is None else _topic(row)

    @unit_of_work
    def save_topic(self, chat_id: int, key: str, thread_id: int, name: str,
                   now: datetime | None = None) -> Topic:
        """Remember ``thread_id`` as the topic of ``key`` in ``chat_id``, replacing the one
        remembered before (one INSERT ... ON CONFLICT DO UPDATE); return it."""
        now = now or self.clock()
        with self.write():
            (ForumTopicRow
             .insert(chat_id=chat_id, topic_key=key, thread_id=thread_id, name=name,
                     created_at=now)
             .on_conflict(conflict_target=[ForumTopicRow.chat_id, ForumTopicRow.topic_key],
                          update={ForumTopicRow.thread_id: thread_id,
                                  ForumTopicRow.name: name,
                                  ForumTopicRow.created_at: now})
             .execute())
        return Topic(chat_id, key, thread_id, name, now)

    @unit_of_work
    def forget_topic(self, chat_id: int, thread_id: int, per: str | None = None,
                     now: datetime | None = None) -> int:
        """Forget the topic ``thread_id`` of ``chat_id`` (someone deleted it), whatever key
        it served; the number of rows deleted. A newer topic of the same key is kept.

        With ``per`` (the topic mode, ``agent`` or ``run``), the copies of still-pending
        requests that were posted in it since it was made are owed again as new posts
        (their messages went with the topic), in the same transaction.
        """
        with self.write():
            gone = list(ForumTopicRow.select().where((ForumTopicRow.chat_id == chat_id)
                                                     & (ForumTopicRow.thread_id == thread_id)))
            if per is not None:
                for topic in gone:
                    self._owe_again(chat_id, topic.topic_key, topic.created_at, per,
                                    now or self.clock())
            return (ForumTopicRow.delete()
                    .where((ForumTopicRow.chat_id == chat_id)
                           & (ForumTopicRow.thread_id == thread_id))
                    .execute())

    def _owe_again(self, chat_id: int, key: str, since: datetime, per: str,
                   now: datetime) -> int:
        kind, _, name = key.partition(":")
        if kind == "run":
            whose = 'a."run_id" = {p}'
        elif per == "run":  # the agent's topic holds its requests without a run
            whose = 'a."agent" = {p} AND a."run_id" IS NULL'
        else:
            whose = 'a."agent" = {p}'
        p = self.db.param
        # Posted since the topic was made (a copy records its message after the send):
        # copies in the main thread from before topics were on stay as they are.
        sql = ('UPDATE "approval_message" SET "message_id" = NULL, "shown" = NULL, '
               f'"owed" = TRUE, "updated_at" = {p} WHERE "chat_id" = {p} '
               f'AND "digest_id" IS NULL AND "message_id" IS NOT NULL AND "updated_at" >= {p} '
               'AND "approval_id" IN (SELECT a."id" FROM "approval" AS a '
               f'WHERE a."status" = \'pending\' AND {whose.format(p=p)})')
        return self.db.execute_sql(sql, (to_text(now), chat_id, to_text(since),
                                         name)).rowcount
