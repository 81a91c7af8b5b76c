"""Webhook mode: the updates already taken, so a redelivered one is handled once.

- ``telegram_update``: one row per (bot, update_id) a webhook listener accepted.
  Telegram redelivers an update until some listener answers 2xx, and behind a load
  balancer the redelivery may reach another instance: the unique index makes the
  first INSERT win and every later one conflict. Rows older than a day are deleted
  (Telegram keeps an undelivered update for 24 hours at most).
"""

from peewee import BigIntegerField, CharField, Model


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class TelegramUpdate(Base):
        bot_id = BigIntegerField()
        update_id = BigIntegerField()
        seen_at = CharField(max_length=27, index=True)

        class Meta:
            table_name = "telegram_update"
            primary_key = False
            indexes = ((("bot_id", "update_id"), True),)

    db.create_tables([TelegramUpdate])
