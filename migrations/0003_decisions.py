"""Decisions beyond approve and deny: rules, edits, reasons by reply.

- ``approval.edited_payload``: the payload as an approver edited it (NULL unless the
  request was approved with an edit); ``approval.accepts_edits``: the submitter said it
  can run an edited request (the Edit button is refused otherwise).
- ``approval_rule``: "this session" and "always" rules. A live rule (not revoked, not
  expired) approves a matching new request in the transaction that creates it. The
  partial index holds live rules only, so the look-up every submission makes costs
  what is live, not the history.
- ``rule_use``: one row per rule and hour of use, the digest line the chat sees;
  ``owed`` while the line lags its count (partial index, like approval_message).
- ``reply_prompt``: a ForceReply message the bot sent (a reason or an edit asked for);
  only a reply to one of these, answered once, decides anything.
"""

from peewee import (
    SQL,
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
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

    class ApprovalRule(Base):
        id = AutoField()
        agent = TextField()
        kind = TextField()
        match = TextField()
        run_id = CharField(max_length=200, null=True)
        created_by = TextField()
        created_at = _ts()
        expires_at = _ts(null=True)
        revoked_at = _ts(null=True)
        revoked_by = TextField(null=True)
        uses = BigIntegerField(default=0)
        last_used_at = _ts(null=True)
        chat_id = BigIntegerField(null=True)
        origin = TextField(null=True)
        source_approval_id = CharField(max_length=40, null=True)

        class Meta:
            table_name = "approval_rule"

    class RuleUse(Base):
        id = AutoField()
        rule_id = IntegerField()
        window_start = _ts()
        chat_id = BigIntegerField(null=True)
        uses = BigIntegerField(default=0)
        shown_uses = BigIntegerField(default=0)
        message_id = BigIntegerField(null=True)
        owed = BooleanField(default=True)
        updated_at = _ts()

        class Meta:
            table_name = "rule_use"
            indexes = ((("rule_id", "window_start"), True),)

    class ReplyPrompt(Base):
        id = AutoField()
        chat_id = BigIntegerField()
        message_id = BigIntegerField()
        approval_id = CharField(max_length=40)
        action = CharField(max_length=16)
        user_id = BigIntegerField()
        created_at = _ts()
        answered_at = _ts(null=True)

        class Meta:
            table_name = "reply_prompt"
            indexes = ((("chat_id", "message_id"), True),)

    migrate(
        migrator.add_column("approval", "edited_payload", TextField(null=True)),
        # A server-side default too: rows written by other means (older code mid-upgrade,
        # raw SQL) are requests that take no edits.
        migrator.add_column("approval", "accepts_edits",
                            BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])),
    )
    db.create_tables([ApprovalRule, RuleUse, ReplyPrompt])
    db.execute_sql('CREATE INDEX "approval_rule_live" ON "approval_rule" ("agent", "kind") '
                   'WHERE "revoked_at" IS NULL')
    db.execute_sql('CREATE INDEX "approval_rule_run" ON "approval_rule" ("run_id") '
                   'WHERE "revoked_at" IS NULL AND "run_id" IS NOT NULL')
    db.execute_sql('CREATE INDEX "rule_use_owed" ON "rule_use" ("id") WHERE "owed"')
