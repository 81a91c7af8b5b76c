"""Wire models of the socket API: request bodies, query strings and the response shapes
that are not storage records.

Imports only pydantic, :mod:`storage.records`, :mod:`bot.window` (the time
bounds) and :mod:`bot.durations` (both standard library only), so the agents'
client (:mod:`bot.client`) can use it without the server's dependencies. Every request
model rejects unknown fields and non-finite numbers; bounds follow the
database columns, so nothing valid here can fail in the database.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bot.durations import parse_duration
from bot.window import bounded as bounded_instant
from storage.errors import InvalidArgument
from storage.records import (
    MAX_APPROVALS,
    MAX_USER_ID,
    Approval,
    ApprovalRule,
    ApprovalStatus,
    NewLedgerEntry,
    RunStatus,
    ToolCall,
    escalation_delay,
)

MAX_WAIT = 300.0
MAX_TTL = 30 * 86400.0
MAX_RULE_TTL = 366 * 86400.0
MAX_PAYLOAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_SUMMARY = 500
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TOKENS = 10**12  # per call or step; keeps every sum far from the 64-bit limit
MAX_DOLLARS = 1e6  # per call or step, same reason (stored as integer nano-dollars)
MAX_BUDGET_TOKENS = 2**62
MAX_INT32 = 2**31 - 1

# PostgreSQL text cannot hold NUL; refusing it here keeps both backends identical.
NO_NUL = r"^[^\x00]*$"
Key = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
"""An identifier: a run id, an agent, a kind, a fact key, a policy name (1..200 characters)."""
Text = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
Summary = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SUMMARY, pattern=NO_NUL)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Dollars = Annotated[float, Field(ge=0, le=MAX_DOLLARS)]
Index = Annotated[int, Field(ge=0, le=MAX_INT32)]
RuleId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _utc(value: datetime) -> datetime:
    # The one bound shared with /spend and the CLI (bot.window): storage's day
    # arithmetic must never overflow on a time accepted here.
    try:
        return bounded_instant(value)
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None


When = Annotated[datetime, AfterValidator(_utc)]
"""A time: RFC 3339 or ``YYYY-MM-DD`` (midnight); naive times are UTC; 1970-01-01..9998-12-31."""


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON; ValueError if it holds NaN or Infinity."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON")
    if isinstance(value, dict | list):
        try:
            json_size(value)
        except ValueError:
            raise ValueError("NaN and Infinity are not JSON") from None
    return value


JsonValue = Annotated[Any, AfterValidator(_finite)]
"""Any JSON value (NaN and Infinity refused)."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_finite)]


class Wire(BaseModel):
    """Base of every request model: unknown fields and non-finite floats are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- approvals -------------------------------------------------------------------------


class ApprovalCreate(Wire):
    """``POST /v1/approvals``. ``payload`` is any JSON value up to 64 KiB (else 413)."""

    agent: Key
    kind: Key
    summary: Summary
    payload: Any = Field(None, description="any JSON value, at most 64 KiB as compact JSON")
    ttl_seconds: float | None = Field(None, ge=1, le=MAX_TTL,
                                      description="default: the service's TTL (24 h)")
    run_id: Key | None = None
    idempotency_key: Key | None = None
    accepts_edits: bool = Field(
        False, description="the submitter runs an approver's edited request (it reads "
                           "edited_payload); false: an approver's Edit is refused")
    required_approvals: int | None = Field(
        None, ge=1, le=MAX_APPROVALS,
        description="distinct approvers needed; one deny decides. Never fewer than the "
                    "run's policy or TAPGATE_DEFAULT_REQUIRED_APPROVALS asks: a smaller "
                    "value is raised")
    requested_by: int | None = Field(
        None, ge=1, le=MAX_USER_ID,
        description="the Telegram user id this request acts for: their own approval does "
                    "not count")


class ApprovalCancel(Wire):
    """``POST /v1/approvals/{id}/cancel`` (the body is optional)."""

    reason: Text | None = None


class ApprovalQuery(Wire):
    status: ApprovalStatus | None = None
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class WaitQuery(Wire):
    wait: float | None = Field(None, ge=0, le=MAX_WAIT,
                               description="hold the response until final or this many seconds")


# --- rules -------------------------------------------------------------------------------


class RuleCreate(Wire):
    """``POST /v1/rules``: approve the agent's requests of ``kind`` whose summary ``match``
    globs (``*`` is the only wildcard), in run ``run_id`` only when given, for
    ``ttl_seconds`` when given (else until revoked)."""

    agent: Key
    kind: Key
    match: Summary = Field(description="a glob on the request's summary; * is the only "
                                       "wildcard")
    run_id: Key | None = Field(None, description="only requests of this run (a session rule)")
    ttl_seconds: float | None = Field(None, ge=1, le=MAX_RULE_TTL,
                                      description="the rule ends after this long (default: "
                                                  "never, until revoked)")


class RuleQuery(Wire):
    all: bool = Field(False, description="include revoked and expired rules")


# --- runs, steps, tool calls, checkpoints -------------------------------------------------


class BudgetFields(Wire):
    """Budgets; 0 means unlimited."""

    budget_tokens: int = Field(0, ge=0, le=MAX_BUDGET_TOKENS)
    budget_dollars: float = Field(0.0, ge=0, le=1e12)
    budget_loops: int = Field(0, ge=0, le=MAX_INT32)
    budget_seconds: int = Field(0, ge=0, le=MAX_INT32)


class RunPut(Wire):
    """``PUT /v1/runs/{id}``: a full replacement of name, budgets and metadata.

    A budget left out (or null) comes from the run's policy, else from the
    ``TAPGATE_DEFAULT_BUDGET_*`` settings; 0 means unlimited. ``policy_ref``
    is written on insert only; status and usage change only through steps,
    ledger entries and cancel.
    """

    budget_tokens: int | None = Field(None, ge=0, le=MAX_BUDGET_TOKENS)
    budget_dollars: float | None = Field(None, ge=0, le=1e12)
    budget_loops: int | None = Field(None, ge=0, le=MAX_INT32)
    budget_seconds: int | None = Field(None, ge=0, le=MAX_INT32)

    name: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] = ""
    metadata: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=200)],
                   Text] = Field(default_factory=dict)
    policy_ref: Key | None = None


class RunQuery(Wire):
    status: RunStatus | None = None
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class StepPut(Wire):
    """``PUT /v1/runs/{id}/steps/{index}``; a new index counts one loop."""

    status: Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=NO_NUL)] = (
        "running")
    prompt_tokens: Tokens = 0
    completion_tokens: Tokens = 0
    dollars: Dollars = 0.0
    started_at: When | None = None
    ended_at: When | None = None


class ToolCallCreate(Wire):
    """``POST /v1/runs/{id}/tool-calls``."""

    id: Key | None = None
    step_index: Index = 0
    tool: Key
    side_effect: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] = ""
    arguments: JsonObject = Field(default_factory=dict)


class ToolCallResult(BaseModel):
    """The recorded call, and the approval it needs (null when it needs none)."""

    tool_call: ToolCall
    approval: Approval | None = None


class CheckpointCreate(Wire):
    """``POST /v1/runs/{id}/checkpoints``: the run's usage now plus an opaque payload."""

    step_index: Index = 0
    name: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] = ""
    payload: JsonObject = Field(default_factory=dict)


# --- ledger ----------------------------------------------------------------------------------


def _hide_internal(schema: dict[str, Any]) -> None:
    for name in INTERNAL_LEDGER_FIELDS:
        schema.get("properties", {}).pop(name, None)


INTERNAL_LEDGER_FIELDS = ("priced", "price_version")


class LedgerEntryCreate(NewLedgerEntry):
    """One model call for ``POST /v1/ledger``; without ``dollars`` it is priced from the
    price data (``priced`` false when the model is unknown). ``prompt_tokens``
    includes ``cached_tokens``.

    It is the Store's :class:`NewLedgerEntry` with the wire's bounds, so a list of
    thousands is validated once, priced in place and stored as it is; ``priced``
    and ``price_version`` are the server's to set and refused from the wire.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra=_hide_internal)

    run_id: Key
    step_index: Index = 0
    provider: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] = ""
    model: Key
    prompt_tokens: Tokens = 0
    completion_tokens: Tokens = 0
    cached_tokens: Tokens = 0
    dollars: Dollars | None = None
    response_id: Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)] | None = None
    created_at: When | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_from_the_wire(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in INTERNAL_LEDGER_FIELDS:
                if name in data:
                    raise PydanticCustomError("extra_forbidden",
                                              f"{name} is set by the server, not the caller")
        return data

    def set_price(self, dollars: float | None, priced: bool, version: str | None) -> None:
        """Record the price (directly in the field dict: thousands per request)."""
        self.__dict__.update(dollars=dollars, priced=priced, price_version=version)


SpendBy = Annotated[str, StringConstraints(pattern=r"^(provider|model|day|name|metadata\.[A-Za-z0-9_-]+)$")]


class SpendQuery(Wire):
    by: SpendBy = "model"
    since: When | None = Field(None, description="inclusive; RFC 3339 or YYYY-MM-DD")
    until: When | None = Field(None, description="exclusive; RFC 3339 or YYYY-MM-DD")


# --- facts, policies ---------------------------------------------------------------------------


class FactPut(Wire):
    """``PUT /v1/facts/{namespace}/{key}``."""

    value: JsonValue


class ApprovalRuleIn(Wire):
    """A tool call needs approval if ``tool`` equals its tool or ``side_effect`` globs its effect."""

    tool: Key | None = None
    side_effect: Key | None = None
    required_approvals: int | None = Field(
        None, ge=1, le=MAX_APPROVALS,
        description="distinct approvers such a call needs (default "
                    "TAPGATE_DEFAULT_REQUIRED_APPROVALS)")


def _duration(value: Any) -> Any:
    # "15m" or seconds, as in the settings and policy files; bounds are checked after.
    if isinstance(value, bool):
        raise ValueError("must be a duration (seconds or 90s, 15m, 24h, 7d)")
    if isinstance(value, str):
        return parse_duration(value)
    return value


class PolicyPut(BudgetFields):
    """``PUT /v1/policies/{name}``: a full replacement of the bundle."""

    tool_allowlist: list[Key] = Field(default_factory=list)
    approval_rules: list[ApprovalRuleIn] = Field(default_factory=list)
    default_safe: bool = False
    escalate_after: Annotated[float, BeforeValidator(_duration)] = Field(
        0.0, description="a run's request still pending after this long (seconds, or "
                         "\"15m\") is posted to the escalation chats too; 0: "
                         "TAPGATE_ESCALATE_AFTER. At most 30 days.")

    @field_validator("escalate_after")
    @classmethod
    def _escalation_delay(cls, value: float) -> float:
        return escalation_delay(value)

    def rules(self) -> list[ApprovalRule]:
        return [ApprovalRule(**r.model_dump()) for r in self.approval_rules]


# --- responses that are not records ----------------------------------------------------------

T = TypeVar("T")


class Items(BaseModel, Generic[T]):
    """Every list route answers ``{"items": [...]}``."""

    items: list[T]


class LeaderInfo(BaseModel):
    host: str
    pid: int
    since: str | None = Field(None, description="when it took the lead (UTC)")


class InstanceInfo(BaseModel):
    id: str
    host: str
    pid: int
    started_at: str
    leader: bool


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    database: Literal["sqlite", "postgresql"]
    pending: int
    leader: LeaderInfo | None = Field(None, description="the instance that polls Telegram "
                                      "and pays the outbox (null: none alive right now)")
    instances_alive: int = 1
    this_instance: InstanceInfo | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="not_found, conflict, validation_error, budget_exceeded, ...")
    message: str
    details: list[Any] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody
