"""Peewee models, bound late to a :class:`peewee.DatabaseProxy`.

The schema itself is created by the frozen scripts in ``migrations/``; these
models must describe the same tables (the contract tests would fail if not).
Times are fixed-width UTC text (see :mod:`storage.clock`), money is integer
nano-dollars, JSON is text.
"""

from __future__ import annotations

import json

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from storage.clock import from_text, to_text

database = DatabaseProxy()


class TimestampField(CharField):
    """An aware datetime stored as 27-character UTC text."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 27)
        super().__init__(**kwargs)

    def db_value(self, value):
        if value is None or isinstance(value, str):
            return value
        return to_text(value)

    def python_value(self, value):
        return None if value is None else from_text(value)


class JSONTextField(TextField):
    """Any JSON value, stored as compact text."""

    def db_value(self, value):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class RunRow(BaseModel):
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
    metadata = JSONTextField(default=dict)
    alerted = JSONTextField(default=list)
    owner_uid = IntegerField(null=True)
    created_at = TimestampField()
    updated_at = TimestampField()

    class Meta:
        table_name = "run"


class ToolCallRow(BaseModel):
    id = CharField(primary_key=True, max_length=200)
    run = ForeignKeyField(RunRow, column_name="run_id", backref="tool_calls")
    step_index = IntegerField(default=0)
    tool = TextField()
    side_effect = TextField(default="")
    arguments = JSONTextField(default=dict)
    status = CharField(max_length=16, default="recorded")
    approval_id = CharField(max_length=40, null=True)
    created_at = TimestampField()

    class Meta:
        table_name = "tool_call"


class ApprovalRow(BaseModel):
    id = CharField(primary_key=True, max_length=40)
    agent = TextField()
    kind = TextField()
    summary = TextField()
    payload = JSONTextField(null=True)
    status = CharField(max_length=16, default="pending")
    reason = TextField(null=True)
    decided_by = TextField(null=True)
    decided_at = TimestampField(null=True)
    run = ForeignKeyField(RunRow, column_name="run_id", null=True)
    tool_call = ForeignKeyField(ToolCallRow, column_name="tool_call_id", null=True)
    idempotency_key = CharField(max_length=200, null=True, unique=True)
    fingerprint = CharField(max_length=64, null=True)
    callback_data = CharField(max_length=64)  # appr:<id>: unique through the primary key
    adapter = CharField(max_length=32, default="telegram")
    conversation_id = TextField(null=True)
    created_at = TimestampField()
    expires_at = TimestampField()
    submitter_uid = IntegerField(null=True)
    edited_payload = JSONTextField(null=True)
    accepts_edits = BooleanField(default=False)
    required_approvals = IntegerField(default=1)
    requested_by = BigIntegerField(null=True)
    escalate_at = TimestampField(null=True)
    escalated_at = TimestampField(null=True)
    approvers = TextField(null=True)  # ",1001,1002,": its route's approvers (storage.approvers)

    class Meta:
        table_name = "approval"


class ApprovalMessageRow(BaseModel):
    id = AutoField()
    # Indexed by the unique (approval_id, chat_id) index of the migrations.
    approval = ForeignKeyField(ApprovalRow, column_name="approval_id", backref="messages",
                               index=False)
    chat_id = BigIntegerField()
    message_id = BigIntegerField(null=True)
    shown = CharField(max_length=16, null=True)
    updated_at = TimestampField()
    owed = BooleanField(default=True)
    digest_id = IntegerField(null=True)  # listed in this digest (storage/digests.py)

    class Meta:
        table_name = "approval_message"


class StepRow(BaseModel):
    id = AutoField()
    run = ForeignKeyField(RunRow, column_name="run_id")
    index = IntegerField(column_name="step_index")
    status = CharField(max_length=16, default="running")
    prompt_tokens = BigIntegerField(default=0)
    completion_tokens = BigIntegerField(default=0)
    dollars_nano = BigIntegerField(default=0)
    started_at = TimestampField()
    ended_at = TimestampField(null=True)

    class Meta:
        table_name = "step"


class LedgerRow(BaseModel):
    id = AutoField()
    run = ForeignKeyField(RunRow, column_name="run_id")
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
    created_at = TimestampField()

    class Meta:
        table_name = "ledger_entry"


class LedgerDailyRow(BaseModel):
    """Per (day, run, provider, model) sums, kept in the ledger append's transaction."""

    id = AutoField()
    day = CharField(max_length=10)
    run = ForeignKeyField(RunRow, column_name="run_id")
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


class BudgetAlertRow(BaseModel):
    """The bot's own record of a budget alert (written with the usage that triggered it)."""

    id = AutoField()
    run = ForeignKeyField(RunRow, column_name="run_id")
    key = CharField(max_length=64)
    fields = JSONTextField(default=list)
    what = TextField(default="")
    approval_id = CharField(max_length=40, null=True)
    settled_at = TimestampField(null=True)
    created_at = TimestampField()

    class Meta:
        table_name = "budget_alert"


class FactRow(BaseModel):
    id = AutoField()
    namespace = CharField(max_length=200)
    key = CharField(max_length=200)
    value = JSONTextField(null=True)
    created_at = TimestampField()
    updated_at = TimestampField()

    class Meta:
        table_name = "fact"


class PolicyRow(BaseModel):
    name = CharField(primary_key=True, max_length=200)
    budget_tokens = BigIntegerField(default=0)
    budget_dollars = DoubleField(default=0)
    budget_loops = IntegerField(default=0)
    budget_seconds = IntegerField(default=0)
    tool_allowlist = JSONTextField(default=list)
    approval_rules = JSONTextField(default=list)
    default_safe = BooleanField(default=False)
    created_at = TimestampField()
    updated_at = TimestampField()
    escalate_after = DoubleField(default=0)  # seconds; 0: the settings' (migration 0010)

    class Meta:
        table_name = "policy"


class CheckpointRow(BaseModel):
    id = AutoField()
    run = ForeignKeyField(RunRow, column_name="run_id")
    step_index = IntegerField(default=0)
    name = TextField(default="")
    usage_prompt_tokens = BigIntegerField(default=0)
    usage_completion_tokens = BigIntegerField(default=0)
    usage_dollars_nano = BigIntegerField(default=0)
    usage_loops = IntegerField(default=0)
    payload = JSONTextField(default=dict)
    created_at = TimestampField()

    class Meta:
        table_name = "checkpoint"


class VoteRow(BaseModel):
    id = AutoField()
    approval_id = CharField(max_length=40)  # unique with voter (the migrations' index)
    voter = CharField(max_length=100)
    by = TextField()
    at = TimestampField()

    class Meta:
        table_name = "approval_vote"


class RuleRow(BaseModel):
    id = AutoField()
    agent = TextField()
    kind = TextField()
    match = TextField()
    run_id = CharField(max_length=200, null=True)  # a session rule's run (no foreign key:
    created_by = TextField()                        # a rule outlives nothing it refers to)
    created_at = TimestampField()
    expires_at = TimestampField(null=True)
    revoked_at = TimestampField(null=True)
    revoked_by = TextField(null=True)
    uses = BigIntegerField(default=0)
    last_used_at = TimestampField(null=True)
    chat_id = BigIntegerField(null=True)
    origin = TextField(null=True)
    source_approval_id = CharField(max_length=40, null=True)
    submitter_uid = BigIntegerField(null=True)  # null: requests of any uid

    class Meta:
        table_name = "approval_rule"


class RuleUseRow(BaseModel):
    id = AutoField()
    rule_id = IntegerField()  # unique with window_start (the migrations' index)
    window_start = TimestampField()
    chat_id = BigIntegerField(null=True)
    uses = BigIntegerField(default=0)
    shown_uses = BigIntegerField(default=0)
    message_id = BigIntegerField(null=True)
    owed = BooleanField(default=True)
    updated_at = TimestampField()

    class Meta:
        table_name = "rule_use"


class ReplyPromptRow(BaseModel):
    id = AutoField()
    chat_id = BigIntegerField()  # unique with message_id (the migrations' index)
    message_id = BigIntegerField()
    approval_id = CharField(max_length=40)
    action = CharField(max_length=16)
    user_id = BigIntegerField()
    created_at = TimestampField()
    answered_at = TimestampField(null=True)

    class Meta:
        table_name = "reply_prompt"


ALL_MODELS = [
    RunRow,
    ToolCallRow,
    ApprovalRow,
    ApprovalMessageRow,
    StepRow,
    LedgerRow,
    LedgerDailyRow,
    FactRow,
    PolicyRow,
    CheckpointRow,
    BudgetAlertRow,
    RuleRow,
    RuleUseRow,
    ReplyPromptRow,
    VoteRow,
]


class TelegramUpdateRow(BaseModel):
    """A webhook update already taken by some instance (webhook mode; pruned after a day)."""

    bot_id = BigIntegerField()
    update_id = BigIntegerField()
    seen_at = TimestampField(index=True)

    class Meta:
        table_name = "telegram_update"
        primary_key = False
        indexes = ((("bot_id", "update_id"), True),)  # the claim: a second insert conflicts


ALL_MODELS.append(TelegramUpdateRow)


class DigestRow(BaseModel):
    """One message listing a burst of requests to one chat (storage/digests.py)."""

    id = AutoField()
    chat_id = BigIntegerField()
    message_id = BigIntegerField(null=True)
    thread_id = BigIntegerField(null=True)
    page = IntegerField(default=0)
    created_at = TimestampField()

    class Meta:
        table_name = "digest"


ALL_MODELS.append(DigestRow)


class RouteRow(BaseModel):
    """A route of a policy file (``tapgate policy apply``): requests whose agent and kind
    match the globs go to ``chat_ids``; ``position`` orders them (first match wins)."""

    id = AutoField()
    position = IntegerField(unique=True)
    agent = TextField()
    kind = TextField()
    chat_ids = JSONTextField()
    created_at = TimestampField()
    approver_ids = JSONTextField(null=True)  # null: every allowed user

    class Meta:
        table_name = "route"


ALL_MODELS.append(RouteRow)


class ForumTopicRow(BaseModel):
    """The forum topic of a chat that a topic key's requests go to (storage/topics.py)."""

    id = AutoField()
    chat_id = BigIntegerField()  # unique with topic_key (the migrations' index)
    topic_key = TextField()  # "agent:<agent>" or "run:<run id>"
    thread_id = BigIntegerField()
    name = TextField()
    created_at = TimestampField()

    class Meta:
        table_name = "forum_topic"


ALL_MODELS.append(ForumTopicRow)
