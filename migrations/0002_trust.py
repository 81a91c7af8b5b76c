"""Trust: who submitted what, budget alerts as an outbox, and an index for owed messages.

- ``approval.submitter_uid``: the socket peer uid that submitted the request
  (NULL for requests the bot itself made); an agent may cancel only its own.
- ``run.owner_uid``: the socket peer uid that created the run; an agent may
  cancel only its own runs.
- ``budget_alert``: the bot's own record of a budget alert. It is written in
  the same transaction as the usage that triggered it, so a crash cannot lose
  it; ``approval_id`` is set once the alert was posted as an approval, and the
  grant's effect comes from ``fields`` (never from an approval's payload).
- ``approval_message.owed``: true while a Telegram copy lags its approval;
  a partial index makes finding the owed copies independent of history size.
- Two indexes that duplicated others are dropped, so every submission maintains
  fewer: ``approval_callback_data`` (the data is ``appr:<id>`` and ``id`` is the
  primary key) and ``approval_message_approval_id`` (a prefix of the unique
  ``(approval_id, chat_id)`` index).
"""

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def _ts(**kwargs):
    return CharField(max_length=27, **kwargs)


def up(migrator, db):
    from playhouse.migrate import migrate

    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Run(Base):
        id = CharField(primary_key=True, max_length=200)

        class Meta:
            table_name = "run"

    class BudgetAlert(Base):
        id = AutoField()
        run = ForeignKeyField(Run, column_name="run_id")
        key = CharField(max_length=64)
        fields = TextField(default="[]")
        what = TextField(default="")
        approval_id = CharField(max_length=40, null=True, index=True)
        settled_at = _ts(null=True)
        created_at = _ts()

        class Meta:
            table_name = "budget_alert"
            indexes = ((("run", "id"), False),)

    migrate(
        migrator.add_column("approval", "submitter_uid", IntegerField(null=True)),
        migrator.add_column("run", "owner_uid", IntegerField(null=True)),
        migrator.add_column("approval_message", "owed", BooleanField(default=True)),
    )
    db.create_tables([BudgetAlert])
    # Copies that already show their approval's status are not owed.
    db.execute_sql(
        'UPDATE "approval_message" SET "owed" = ('
        '"shown" IS NULL OR "shown" <> (SELECT "status" FROM "approval" '
        'WHERE "approval"."id" = "approval_message"."approval_id"))')
    db.execute_sql('CREATE INDEX "approval_message_owed" ON "approval_message" '
                   '("chat_id", "id") WHERE "owed"')
    db.execute_sql('DROP INDEX IF EXISTS "approval_callback_data"')
    db.execute_sql('DROP INDEX IF EXISTS "approval_message_approval_id"')
