"""Routes: which chats each agent's or kind's requests are posted to.

- ``route``: the routes of the last policy file applied with a ``routes`` section
  (``tapgate policy apply`` replaces them all in one transaction). ``position``
  orders them, first match wins; ``agent`` and ``kind`` are globs (``*``, ``?``);
  ``chat_ids`` is a JSON list of Telegram chat ids. Routes of ``TAPGATE_ROUTES``
  are not stored: the settings are read at every start.
"""

from peewee import AutoField, CharField, IntegerField, Model, TextField


def up(migrator, db):
    class Route(Model):
        id = AutoField()
        position = IntegerField(unique=True)
        agent = TextField()
        kind = TextField()
        chat_ids = TextField()
        created_at = CharField(max_length=27)

        class Meta:
            database = db
            table_name = "route"

    db.create_tables([Route])
