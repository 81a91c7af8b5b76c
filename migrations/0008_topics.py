"""Forum topics: the topic each agent's (or run's) requests are posted in, per chat.

- ``forum_topic``: one row per (chat, topic key), unique on the pair. The key says
  what the topic gathers (``agent:<agent>``, ``run:<run id>``); ``thread_id`` is
  Telegram's ``message_thread_id``. A topic someone deleted is forgotten (by chat and
  thread id) and the next request makes a new one, which replaces the row.
"""

from peewee import BigIntegerField, CharField, Model, TextField


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class ForumTopic(Base):
        chat_id = BigIntegerField()
        topic_key = TextField()
        thread_id = BigIntegerField()
        name = TextField()
        created_at = CharField(max_length=27)

        class Meta:
            table_name = "forum_topic"
            indexes = ((("chat_id", "topic_key"), True), (("chat_id", "thread_id"), False))

    db.create_tables([ForumTopic])
