"""The initial schema: runs, approvals (+ their Telegram messages), steps, ledger
(+ per-day aggregates), tool calls, facts, policies, checkpoints."""

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def _ts(**kwargs):
    # Fixed-width UTC text: YYYY-MM-DDTHH:MM:SS.ffffffZ
    return CharField(max_length=27, **kwargs)


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Run(Base):
        id = CharField(primary_key=True, max_length=200)
        name = TextField(default="")
        status = CharField(max_length=16, default="running", index=True)
        halt_reason = CharField(max_length=40, null=True)
        policy_ref = CharField(max_length=200, null=True)
        budget_tokens = BigIntegerField(default=0)
        budget_dollars = DoubleField(default=0)
        budget_loops = IntegerField(default=0)
        budget_seconds = IntegerField(default=0)
        usage_prompt_tokens = BigIntegerField(default=0)
        usage_completion_tokens = BigIntegerField(default=0)
        usage_dollars_nano = BigIntegerField(default=0)
        usage_loops = IntegerField(default=0)
        metadata = TextField(default="{}")
        alerted = TextField(default="[]")
        created_at = _ts(index=True)
        updated_at = _ts()

        class Meta:
            table_name = "run"

    class ToolCall(Base):
        id = CharField(primary_key=True, max_length=200)
        run = ForeignKeyField(Run, column_name="run_id")
        step_index = IntegerField(default=0)
        tool = TextField()
        side_effect = TextField(default="")
        arguments = TextField(default="{}")
        status = CharField(max_length=16, default="recorded")
        approval_id = CharField(max_length=40, null=True)
        created_at = _ts()

        class Meta:
            table_name = "tool_call"
            indexes = ((("run", "step_index", "created_at"), False),)

    class Approval(Base):
        id = CharField(primary_key=True, max_length=40)
        agent = TextField()
        kind = TextField()
        summary = TextField()
        payload = TextField(null=True)
        status = CharField(max_length=16, default="pending")
        reason = TextField(null=True)
        decided_by = TextField(null=True)
        decided_at = _ts(null=True)
        run = ForeignKeyField(Run, column_name="run_id", null=True)
        tool_call = ForeignKeyField(ToolCall, column_name="tool_call_id", null=True)
        idempotency_key = CharField(max_length=200, null=True, unique=True)
        fingerprint = CharField(max_length=64, null=True)
        callback_data = CharField(max_length=64, unique=True)
        adapter = CharField(max_length=32, default="telegram")
        conversation_id = TextField(null=True)
        created_at = _ts()
        expires_at = _ts()

        class Meta:
            table_name = "approval"
            indexes = (
                (("status", "expires_at"), False),
                (("status", "created_at"), False),
                (("created_at",), False),
            )

    class ApprovalMessage(Base):
        id = AutoField()
        approval = ForeignKeyField(Approval, column_name="approval_id")
        chat_id = BigIntegerField()
        message_id = BigIntegerField(null=True)
        shown = CharField(max_length=16, null=True)
        updated_at = _ts()

        class Meta:
            table_name = "approval_message"
            indexes = ((("approval", "chat_id"), True),)

    class Step(Base):
        id = AutoField()
        run = ForeignKeyField(Run, column_name="run_id")
        index = IntegerField(column_name="step_index")
        status = CharField(max_length=16, default="running")
        prompt_tokens = BigIntegerField(default=0)
        completion_tokens = BigIntegerField(default=0)
        dollars_nano = BigIntegerField(default=0)
        started_at = _ts()
        ended_at = _ts(null=True)

        class Meta:
            table_name = "step"
            indexes = ((("run", "index"), True),)

    class LedgerEntry(Base):
        id = AutoField()
        run = ForeignKeyField(Run, column_name="run_id", index=False)
        step_index = IntegerField(default=0)
        provider = TextField(default="")
        model = TextField()
        prompt_tokens = BigIntegerField(default=0)
        completion_tokens = BigIntegerField(default=0)
        cached_tokens = BigIntegerField(default=0)
        dollars_nano = BigIntegerField(default=0)
        priced = BooleanField(default=True)
        price_version = TextField(null=True)
        response_id = TextField(null=True)
        created_at = _ts(index=True)

        class Meta:
            table_name = "ledger_entry"
            indexes = ((("run", "id"), False),)

    class LedgerDaily(Base):
        id = AutoField()
        day = CharField(max_length=10)
        run = ForeignKeyField(Run, column_name="run_id")
        provider = TextField(default="")
        model = TextField()
        calls = BigIntegerField(default=0)
        prompt_tokens = BigIntegerField(default=0)
        completion_tokens = BigIntegerField(default=0)
        cached_tokens = BigIntegerField(default=0)
        dollars_nano = BigIntegerField(default=0)
        unpriced_calls = BigIntegerField(default=0)

        class Meta:
            table_name = "ledger_daily"
            indexes = ((("day", "run", "provider", "model"), True),)

    class Fact(Base):
        id = AutoField()
        namespace = CharField(max_length=200)
        key = CharField(max_length=200)
        value = TextField(null=True)
        created_at = _ts()
        updated_at = _ts()

        class Meta:
            table_name = "fact"
            indexes = ((("namespace", "key"), True),)

    class Policy(Base):
        name = CharField(primary_key=True, max_length=200)
        budget_tokens = BigIntegerField(default=0)
        budget_dollars = DoubleField(default=0)
        budget_loops = IntegerField(default=0)
        budget_seconds = IntegerField(default=0)
        tool_allowlist = TextField(default="[]")
        approval_rules = TextField(default="[]")
        default_safe = BooleanField(default=False)
        created_at = _ts(index=True)
        updated_at = _ts()

        class Meta:
            table_name = "policy"

    class Checkpoint(Base):
        id = AutoField()
        run = ForeignKeyField(Run, column_name="run_id", index=False)
        step_index = IntegerField(default=0)
        name = TextField(default="")
        usage_prompt_tokens = BigIntegerField(default=0)
        usage_completion_tokens = BigIntegerField(default=0)
        usage_dollars_nano = BigIntegerField(default=0)
        usage_loops = IntegerField(default=0)
        payload = TextField(default="{}")
        created_at = _ts()

        class Meta:
            table_name = "checkpoint"
            indexes = ((("run", "id"), False),)

    db.create_tables(
        [Run, ToolCall, Approval, ApprovalMessage, Step, LedgerEntry, LedgerDaily, Fact,
         Policy, Checkpoint]
    )
