"""Typed records the Store takes and returns.

These are the shapes of DESIGN.md (snake_case everywhere); the socket API
returns them as they are. Inputs are the ``New*`` / ``*Upsert`` models.
Money is a float of dollars at the edge and an integer of nano-dollars inside
the database, so sums are exact and identical on every backend.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled"]
FINAL_STATUSES = ("approved", "denied", "expired", "cancelled")
RunStatus = Literal["running", "halted", "completed"]
HaltReason = Literal[
    "token_budget_exceeded",
    "dollar_budget_exceeded",
    "loop_budget_exceeded",
    "time_budget_exceeded",
    "cancelled",
]
METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
NANO = 1_000_000_000

# Caps that keep every stored counter far from the 64-bit limit (2**63 ≈ 9.2e18) on
# both backends: per call, per run's usage, and per budget. A value past a cap is
# refused (422 naming the field); nothing accepted can overflow.
MAX_CALL_TOKENS = 10**12
MAX_CALL_DOLLARS = 1e6
MAX_RUN_TOKENS = 10**15  # each of prompt and completion usage of one run
MAX_RUN_DOLLARS = 10**9  # one run's usage: 1e18 nano-dollars
MAX_BUDGET_TOKENS = 2**62
MAX_BUDGET_DOLLARS = 1e12
MAX_INT32 = 2**31 - 1
MAX_APPROVALS = 10  # distinct approvers one request may need
MAX_USER_ID = 2**53  # Telegram: user ids have at most 52 significant bits


def to_nano(dollars: float) -> int:
    """Dollars to integer nano-dollars (the stored unit)."""
    return round(dollars * NANO)


def from_nano(nano: int) -> float:
    """Integer nano-dollars back to dollars."""
    return nano / NANO


class Record(BaseModel):
    """Base of every record: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- approvals ---------------------------------------------------------------


class NewApproval(Record):
    """What :meth:`Store.create_approval` needs."""

    agent: str
    kind: str
    summary: str
    payload: Any = None
    ttl_seconds: float
    run_id: str | None = None
    tool_call_id: str | None = None
    idempotency_key: str | None = None
    chat_ids: list[int] = Field(default_factory=list)
    submitter_uid: int | None = None
    accepts_edits: bool = False
    required_approvals: int = Field(1, ge=1, le=MAX_APPROVALS)
    requested_by: int | None = None
    escalate_after: float | None = Field(None, gt=0)
    approvers: list[int] | None = None


class Vote(Record):
    """One approver's approval of a request that needs several."""

    by: str
    at: datetime


class Approval(Record):
    """An approval request as every caller sees it."""

    id: str
    agent: str
    kind: str
    summary: str
    payload: Any = None
    status: ApprovalStatus
    reason: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    run_id: str | None = None
    tool_call_id: str | None = None
    created_at: datetime
    expires_at: datetime
    submitter_uid: int | None = Field(
        None, description="peer uid that submitted it over the socket (null: the bot itself)")
    accepts_edits: bool = Field(
        False, description="the submitter can run an edited request (else Edit is refused)")
    edited_payload: Any = Field(
        None, description="the payload as the approver edited it (null unless approved "
                          "with an edit): run this instead of the original")
    required_approvals: int = Field(1, description="distinct approvers needed (one deny "
                                                   "decides)")
    requested_by: int | None = Field(
        None, description="Telegram user id the request acts for: their approval never counts")
    approvals: list[Vote] = Field(default_factory=list,
                                  description="who approved so far (requests needing several)")
    escalated_at: datetime | None = Field(
        None, description="when the still-pending request was posted to the escalation chats")
    approvers: list[int] | None = Field(
        None, description="Telegram user ids who alone may decide it in Telegram, until it "
                          "escalates: its route's approvers (null: every allowed user)")

    @property
    def callback_prefix(self) -> str:
        return f"appr:{self.id}"

    @property
    def is_final(self) -> bool:
        return self.status != "pending"

    @property
    def shown_as(self) -> str:
        """What a Telegram copy of this request displays, as one short key: the status,
        and while pending the approvals counted and whether it escalated (a copy showing
        an older key is owed an edit; see :mod:`storage.copies`)."""
        return display_key(self.status, len(self.approvals) if self.required_approvals > 1
                           else None, self.escalated_at is not None)


def display_key(status: str, votes: int | None, escalated: bool) -> str:
    """``pending``, ``pending/1``, ``pending/1/e``, ``approved``, ... (≤ 16 characters)."""
    if status != "pending":
        return status
    return status + (f"/{votes}" if votes is not None else "") + ("/e" if escalated else "")


class MessageRef(Record):
    """One posted (or still to be posted) Telegram copy of an approval.

    ``message_id`` is None until the message is sent; ``shown`` is the status
    the message currently displays (None before it is sent). A ref whose
    ``shown`` differs from the approval's status is owed an edit.
    """

    id: int
    approval_id: str
    chat_id: int
    message_id: int | None = None
    shown: str | None = None
    updated_at: datetime
    digest_id: int | None = None  # listed in a digest message (storage/digests.py)


# --- runs, steps ---------------------------------------------------------------


class Budgets(Record):
    """Budgets of a run; 0 means unlimited. Finite and bounded in every path."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    budget_tokens: int = Field(0, ge=0, le=MAX_BUDGET_TOKENS)
    budget_dollars: float = Field(0.0, ge=0, le=MAX_BUDGET_DOLLARS)
    budget_loops: int = Field(0, ge=0, le=MAX_INT32)
    budget_seconds: int = Field(0, ge=0, le=MAX_INT32)


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not METADATA_KEY.match(key):
            raise ValueError(f"metadata key {key!r} must match [A-Za-z0-9_-]+")
    return value


class RunUpsert(Budgets):
    """What ``PUT /v1/runs/{id}`` writes (``policy_ref`` only on insert)."""

    id: str = Field(min_length=1, max_length=200)
    name: str = Field("", max_length=500)
    policy_ref: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    owner_uid: int | None = None

    _meta = field_validator("metadata")(_check_metadata)


class Run(Budgets):
    """A governed run with its usage."""

    id: str
    name: str
    status: RunStatus
    halt_reason: HaltReason | None = None
    policy_ref: str | None = None
    usage_prompt_tokens: int
    usage_completion_tokens: int
    usage_dollars: float
    usage_loops: int
    metadata: dict[str, str]
    alerted: list[str] = Field(default_factory=list)
    owner_uid: int | None = Field(
        None, description="peer uid that created it over the socket (null: not the socket)")
    created_at: datetime
    updated_at: datetime

    @property
    def usage_tokens(self) -> int:
        return self.usage_prompt_tokens + self.usage_completion_tokens


class BudgetAlert(Record):
    """The bot's own record of a budget alert: which budgets a grant raises.

    Written in the transaction of the usage that triggered it; ``approval_id``
    is set once it is posted, ``settled_at`` once it was decided (granted,
    kept, or retired because another alert of the run was decided).
    """

    id: int
    run_id: str
    key: str
    fields: list[str]
    what: str
    approval_id: str | None = None
    settled_at: datetime | None = None
    created_at: datetime


class StepUpsert(Record):
    """One loop iteration, keyed by (run_id, index)."""

    run_id: str
    index: int = Field(ge=0)
    status: str = "running"
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    dollars: float = Field(0.0, ge=0)
    started_at: datetime | None = None
    ended_at: datetime | None = None


class Step(Record):
    run_id: str
    index: int
    status: str
    prompt_tokens: int
    completion_tokens: int
    dollars: float
    started_at: datetime
    ended_at: datetime | None = None


# --- ledger --------------------------------------------------------------------


class NewLedgerEntry(Record):
    """One model call to record; ``dollars`` None means "price it"."""

    run_id: str
    step_index: int = Field(0, ge=0)
    provider: str = ""
    model: str
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    cached_tokens: int = Field(0, ge=0)
    dollars: float | None = Field(None, ge=0)
    priced: bool = True
    price_version: str | None = None
    response_id: str | None = None
    created_at: datetime | None = None


class LedgerEntry(Record):
    id: int
    run_id: str
    step_index: int
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    dollars: float
    priced: bool
    price_version: str | None = None
    response_id: str | None = None
    created_at: datetime


class LedgerTotals(Record):
    run_id: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    dollars: float
    unpriced_calls: int


class UsageGroup(Record):
    key: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    dollars: float


class UsageSummary(Record):
    by: str
    since: datetime | None = None
    until: datetime | None = None
    groups: list[UsageGroup]
    total: UsageGroup
    unpriced_calls: int


# --- tool calls, facts, policies, checkpoints ------------------------------------


class NewToolCall(Record):
    run_id: str
    id: str | None = None
    step_index: int = Field(0, ge=0)
    tool: str = Field(min_length=1)
    side_effect: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    status: str = "recorded"


class ToolCall(Record):
    id: str
    run_id: str
    step_index: int
    tool: str
    side_effect: str
    arguments: dict[str, Any]
    status: str
    approval_id: str | None = None
    created_at: datetime


class Fact(Record):
    namespace: str
    key: str
    value: Any = None
    created_at: datetime
    updated_at: datetime


class ApprovalRule(Record):
    """A tool call needs approval if ``tool`` equals its tool or ``side_effect`` globs its
    effect, from ``required_approvals`` distinct approvers (None: the settings' default)."""

    tool: str | None = None
    side_effect: str | None = None
    required_approvals: int | None = Field(None, ge=1, le=MAX_APPROVALS)


MAX_ESCALATE_AFTER = 30 * 86400.0  # no request lives longer (the TTL's bound)


def escalation_delay(value: float) -> float:
    """A policy's ``escalate_after``: 0 (the settings' delay applies) or 1 s..30 days."""
    if value != 0 and not 1 <= value <= MAX_ESCALATE_AFTER:
        raise ValueError("must be 0 (TAPGATE_ESCALATE_AFTER applies) or between 1s and 30d")
    return value


class PolicyUpsert(Budgets):
    name: str = Field(min_length=1, max_length=200)
    tool_allowlist: list[str] = Field(default_factory=list)
    approval_rules: list[ApprovalRule] = Field(default_factory=list)
    default_safe: bool = False
    escalate_after: float = Field(0.0, description="seconds a run's request waits before it "
                                                   "escalates; 0: TAPGATE_ESCALATE_AFTER")

    @field_validator("escalate_after")
    @classmethod
    def _escalation_delay(cls, value: float) -> float:
        return escalation_delay(value)


class Policy(PolicyUpsert):
    created_at: datetime
    updated_at: datetime


class NewCheckpoint(Record):
    run_id: str
    step_index: int = Field(0, ge=0)
    name: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class Checkpoint(Record):
    id: int
    run_id: str
    step_index: int
    name: str
    usage_prompt_tokens: int
    usage_completion_tokens: int
    usage_dollars: float
    usage_loops: int
    payload: dict[str, Any]
    created_at: datetime
