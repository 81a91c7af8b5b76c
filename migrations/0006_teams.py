"""Teams: requests that need more than one approver, and escalation.

- ``approval.required_approvals`` (1..10, default 1): how many distinct approvers
  must approve; one denial decides at once.
- ``approval.requested_by``: the Telegram user id the request acts for (separation of
  duties: that person's approval does not count).
- ``approval_vote``: one row per approver and request, unique on (approval, voter),
  so a second tap by the same person counts once whatever the race.
- ``approval.escalate_at`` / ``escalated_at``: when a still-pending request is posted
  to the escalation chats too, and when that happened (set once, by compare-and-set,
  whichever instance sweeps first). The partial index holds what may still escalate.
"""

from peewee import SQL, BigIntegerField, CharField, IntegerField, Model, TextField


def _ts(**kwargs):
    return CharField(max_length=27, **kwargs)


def up(migrator, db):
    from playhouse.migrate import migrate

    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class ApprovalVote(Base):
        approval_id = CharField(max_length=40)
        voter = CharField(max_length=100)
        by = TextField()
        at = _ts()

        class Meta:
            table_name = "approval_vote"
            indexes = ((("approval_id", "voter"), True),)

    migrate(
        migrator.add_column("approval", "required_approvals",
                            IntegerField(default=1, constraints=[SQL("DEFAULT 1")])),
        migrator.add_column("approval", "requested_by", BigIntegerField(null=True)),
        migrator.add_column("approval", "escalate_at", _ts(null=True)),
        migrator.add_column("approval", "escalated_at", _ts(null=True)),
    )
    db.create_tables([ApprovalVote])
    db.execute_sql('CREATE INDEX "approval_escalation_due" ON "approval" ("escalate_at") '
                   'WHERE "escalated_at" IS NULL AND "escalate_at" IS NOT NULL '
                   'AND "status" = \'pending\'')
