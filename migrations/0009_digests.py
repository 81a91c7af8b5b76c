"""Bursts: many requests owed to one chat at once are posted as digest messages.

- ``digest``: one message listing up to 100 requests of one chat (``message_id``
  null until it is posted; ``page`` is the page of 20 lines it shows; ``thread_id``
  the forum topic it went to, if any).
- ``approval_message.digest_id``: the digest a copy is listed in (null: the copy is
  a message of its own). Copies of a digest share the digest's ``message_id``.
"""

from peewee import SQL, AutoField, BigIntegerField, CharField, IntegerField, Model


def up(migrator, db):
    from playhouse.migrate import migrate

    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Digest(Base):
        id = AutoField()
        chat_id = BigIntegerField()
        message_id = BigIntegerField(null=True)
        thread_id = BigIntegerField(null=True)
        page = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
        created_at = CharField(max_length=27)

        class Meta:
            table_name = "digest"

    db.create_tables([Digest])
    migrate(migrator.add_column("approval_message", "digest_id", IntegerField(null=True)))
    db.execute_sql('CREATE INDEX "approval_message_digest" ON "approval_message" ("digest_id") '
                   'WHERE "digest_id" IS NOT NULL')
