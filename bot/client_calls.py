"""Wire plumbing shared by the sync and async clients: errors, the calls (what to send
and how to read the answer, built once), the base class and how a wait for a decision
rides out a restart of the bot (the socket transport is in :mod:`bot.client_transport`).

Imports only httpx, the wire models and the records: no server dependencies.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from bot.api.schemas import MAX_WAIT, Health, ToolCallResult
from storage.errors import TapgateError
from storage.records import (
    Approval,
    Checkpoint,
    Fact,
    LedgerEntry,
    LedgerTotals,
    Policy,
    Run,
    Step,
    ToolCall,
    UsageSummary,
)
from storage.rule_records import Rule

DEFAULT_TIMEOUT = 30.0
When = datetime | date | str | None


class ClientError(TapgateError):
    """The server refused a request: ``status`` (HTTP), ``code`` (``not_found``,
    ``conflict``, ``validation_error``, ``budget_exceeded``, ...), ``message`` and
    ``details``, exactly as it answered them."""

    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        super().__init__(f"{code}: {message}")


class ConnectionFailed(ClientError):
    """Nothing answers on the socket (the bot is down, or the path is wrong)."""

    def __init__(self, socket_path: str, reason: str):
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(0, "connection_error", f"cannot reach tapgate at {socket_path}: {reason}")


class ApprovalDenied(TapgateError):
    """A human denied the request; ``approval`` says who and why."""

    code = "denied"

    def __init__(self, approval: Approval):
        self.approval = approval
        reason = f": {approval.reason}" if approval.reason else ""
        super().__init__(f"{approval.kind} request {approval.id} was denied by "
                         f"{approval.decided_by or 'an approver'}{reason}")


class ApprovalExpired(TapgateError):
    """The request expired or was withdrawn (cancelled) before anyone approved it."""

    code = "expired"

    def __init__(self, approval: Approval):
        self.approval = approval
        how = "expired" if approval.status == "expired" else f"was {approval.status}"
        reason = f": {approval.reason}" if approval.reason else ""
        super().__init__(f"{approval.kind} request {approval.id} {how}{reason}")


def default_socket_path() -> str:
    """``$TAPGATE_SOCKET_PATH``, else the well-known socket the bot binds by default
    (:func:`bot.places.socket_path`): the same wherever the agent runs."""
    from bot import places

    return str(places.socket_path())


# --- calls: what to send and how to read the answer, built once for both clients -------------


class _Call:
    __slots__ = ("method", "path", "parse", "params", "body", "wait")

    def __init__(self, method: str, path: str, parse: Callable[[Any], Any],
                 params: dict | None = None, body: Any = None, wait: float | None = None):
        self.method, self.path, self.parse, self.body, self.wait = method, path, parse, body, wait
        self.params = {k: v for k, v in (params or {}).items() if v is not None}


def _one(model: Any) -> Callable[[Any], Any]:
    return TypeAdapter(model).validate_python


def _items(model: Any) -> Callable[[Any], Any]:
    adapter = TypeAdapter(list[model])
    return lambda data: adapter.validate_python(data["items"])


def _path(*parts: str | int) -> str:
    return "/v1/" + "/".join(quote(str(p), safe="") for p in parts)


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _when(value: When) -> str | None:
    return value if value is None or isinstance(value, str) else value.isoformat()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


APPROVAL, APPROVALS = _one(Approval), _items(Approval)
RUN, RUNS = _one(Run), _items(Run)
ENTRY, ENTRIES = _one(LedgerEntry), _items(LedgerEntry)
CHECKPOINT, CHECKPOINTS = _one(Checkpoint), _items(Checkpoint)
FACT, FACTS = _one(Fact), _items(Fact)
POLICY, POLICIES = _one(Policy), _items(Policy)
STEP, STEPS = _one(Step), _items(Step)
TOOL_CALL, TOOL_CALLS = _one(ToolCallResult), _items(ToolCall)
RULE, RULES = _one(Rule), _items(Rule)


class _Routes:
    """Every route of the API as a :class:`_Call` (DESIGN.md, "Socket API")."""

    @staticmethod
    def request_approval(agent, kind, summary, payload, ttl_seconds, run_id,
                         idempotency_key, accepts_edits=False, required_approvals=None,
                         requested_by=None) -> _Call:
        body = {"agent": agent, "kind": kind, "summary": summary, "payload": payload,
                **_given(ttl_seconds=ttl_seconds, run_id=run_id, idempotency_key=idempotency_key,
                         required_approvals=required_approvals, requested_by=requested_by)}
        if accepts_edits:  # sent only when set: a bot without edits refuses the field
            body["accepts_edits"] = True
        return _Call("POST", _path("approvals"), APPROVAL, body=body)

    @staticmethod
    def get_approval(approval_id, wait) -> _Call:
        return _Call("GET", _path("approvals", approval_id), APPROVAL, {"wait": wait}, wait=wait)

    @staticmethod
    def cancel_approval(approval_id, reason) -> _Call:
        return _Call("POST", _path("approvals", approval_id, "cancel"), APPROVAL,
                     body=_given(reason=reason))

    @staticmethod
    def list_approvals(status, limit) -> _Call:
        return _Call("GET", _path("approvals"), APPROVALS, {"status": status, "limit": limit})

    @staticmethod
    def put_run(run_id, fields) -> _Call:
        return _Call("PUT", _path("runs", run_id), RUN, body=fields)

    @staticmethod
    def get_run(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id), RUN)

    @staticmethod
    def list_runs(status, limit) -> _Call:
        return _Call("GET", _path("runs"), RUNS, {"status": status, "limit": limit})

    @staticmethod
    def cancel_run(run_id) -> _Call:
        return _Call("POST", _path("runs", run_id, "cancel"), RUN)

    @staticmethod
    def put_step(run_id, index, fields) -> _Call:
        return _Call("PUT", _path("runs", run_id, "steps", index), STEP, body=fields)

    @staticmethod
    def list_steps(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "steps"), STEPS)

    @staticmethod
    def record_tool_call(run_id, tool, fields) -> _Call:
        return _Call("POST", _path("runs", run_id, "tool-calls"), TOOL_CALL,
                     body={"tool": tool, **fields})

    @staticmethod
    def list_tool_calls(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "tool-calls"), TOOL_CALLS)

    @staticmethod
    def save_checkpoint(run_id, fields) -> _Call:
        return _Call("POST", _path("runs", run_id, "checkpoints"), CHECKPOINT, body=fields)

    @staticmethod
    def list_checkpoints(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "checkpoints"), CHECKPOINTS)

    @staticmethod
    def latest_checkpoint(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "checkpoints", "latest"), CHECKPOINT)

    @staticmethod
    def ledger_append(entries) -> _Call:
        many = isinstance(entries, list)
        return _Call("POST", _path("ledger"), ENTRIES if many else ENTRY, body=entries)

    @staticmethod
    def ledger(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "ledger"), ENTRIES)

    @staticmethod
    def totals(run_id) -> _Call:
        return _Call("GET", _path("runs", run_id, "totals"), _one(LedgerTotals))

    @staticmethod
    def spend(by, since, until) -> _Call:
        return _Call("GET", _path("spend"), _one(UsageSummary),
                     {"by": by, "since": _when(since), "until": _when(until)})

    @staticmethod
    def put_fact(namespace, key, value) -> _Call:
        return _Call("PUT", _path("facts", namespace, key), FACT, body={"value": value})

    @staticmethod
    def get_fact(namespace, key) -> _Call:
        return _Call("GET", _path("facts", namespace, key), FACT)

    @staticmethod
    def list_facts(namespace) -> _Call:
        return _Call("GET", _path("facts", namespace), FACTS)

    @staticmethod
    def put_policy(name, fields) -> _Call:
        return _Call("PUT", _path("policies", name), POLICY, body=fields)

    @staticmethod
    def get_policy(name) -> _Call:
        return _Call("GET", _path("policies", name), POLICY)

    @staticmethod
    def list_policies() -> _Call:
        return _Call("GET", _path("policies"), POLICIES)

    @staticmethod
    def complete_run(run_id) -> _Call:
        return _Call("POST", _path("runs", run_id, "complete"), RUN)

    @staticmethod
    def list_rules(all_) -> _Call:
        return _Call("GET", _path("rules"), RULES, {"all": "true" if all_ else None})

    @staticmethod
    def add_rule(agent, kind, match, run_id, ttl_seconds) -> _Call:
        body = {"agent": agent, "kind": kind, "match": match,
                **_given(run_id=run_id, ttl_seconds=ttl_seconds)}
        return _Call("POST", _path("rules"), RULE, body=body)

    @staticmethod
    def revoke_rule(rule_id) -> _Call:
        return _Call("POST", _path("rules", rule_id, "revoke"), RULE)

    @staticmethod
    def health() -> _Call:
        return _Call("GET", _path("health"), _one(Health))


class _Base:
    """Settings and answer handling shared by the two clients."""

    def __init__(self, socket_path: str | os.PathLike | None, timeout: float):
        self.socket_path = str(socket_path or default_socket_path())
        self.timeout = timeout

    def _kwargs(self, call: _Call) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": call.params or None}
        if call.body is not None:
            kwargs["content"] = json.dumps(call.body, default=_json_default).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        if call.wait:  # a long-poll is held by the server: give it the wait on top
            kwargs["timeout"] = self.timeout + call.wait
        return kwargs

    def _answer(self, call: _Call, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
                details = error.get("details") or []
            except (ValueError, KeyError, TypeError):
                code, message, details = "http_error", response.text[:200], []
            raise ClientError(response.status_code, code, message, details)
        return call.parse(response.json())

    def _failed(self, exc: httpx.HTTPError) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(0, "timeout", f"tapgate at {self.socket_path} did not answer "
                                             f"in time ({type(exc).__name__})")
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, FileNotFoundError | ConnectionRefusedError):
            reason = "nothing is listening (is `tapgate run` running?)"
        elif isinstance(cause, PermissionError):
            reason = "permission denied"
        else:
            reason = str(exc) or type(exc).__name__
        return ConnectionFailed(self.socket_path, reason)


def _slice(deadline: float | None) -> float:
    """The next long-poll: at most the server's limit, at most what is left."""
    if deadline is None:
        return MAX_WAIT
    return max(0.0, min(MAX_WAIT, deadline - time.monotonic()))


def _over(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


# --- waiting for a decision across a restart of the bot --------------------------------------


class _Patience:
    """One wait for a decision: what to long-poll next, and how to ride out a bot that is
    down or restarting.

    A refused or broken connection (:class:`ConnectionFailed`) or a 503 is retried with
    backoff (0.1 s doubling to 2 s) until the wait's own deadline or the request's
    ``expires_at``, whichever comes first: past its expiry nothing can approve the
    request any more. The expiry is known from the :class:`Approval` the wait was
    given, else from the first answer; with neither it nor a timeout nothing bounds the
    wait, so such a failure is raised at once. Any other error (a refused server uid,
    a 404, a timeout of a hung server) is raised at once too.
    """

    FIRST_DELAY, MAX_DELAY = 0.1, 2.0

    def __init__(self, approval: str | Approval, timeout: float | None):
        is_record = isinstance(approval, Approval)
        self.id: str = approval.id if is_record else approval
        self.expires_at: datetime | None = approval.expires_at if is_record else None
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._delay = self.FIRST_DELAY

    def slice(self) -> float:
        """The wait of the next long-poll."""
        return _slice(self.deadline)

    def done(self, approval: Approval) -> bool:
        """Note an answer; true when the wait is over (decided, or out of time)."""
        self.expires_at = approval.expires_at
        self._delay = self.FIRST_DELAY  # the next outage starts its backoff afresh
        return approval.is_final or _over(self.deadline)

    def pause(self, exc: ClientError) -> float:
        """Seconds to sleep before trying again after ``exc``; raises ``exc`` (or, once
        the wait may go on no longer, a copy saying so) when it must not be retried."""
        if not (isinstance(exc, ConnectionFailed) or exc.status == 503):
            raise exc
        left = self._left()
        if left is None:
            raise exc
        if left <= 0:
            raise self._gave_up(exc) from None
        # Sleeping at most what is left makes the last attempt fall on the limit itself.
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, self.MAX_DELAY)
        return delay

    def _expiry_left(self) -> float | None:
        if self.expires_at is None:
            return None
        expires = self.expires_at
        if expires.tzinfo is None:  # the server speaks UTC
            expires = expires.replace(tzinfo=UTC)
        return (expires - datetime.now(UTC)).total_seconds()

    def _left(self) -> float | None:
        limits = [x for x in (self._expiry_left(),
                              None if self.deadline is None else self.deadline - time.monotonic())
                  if x is not None]
        return min(limits) if limits else None

    def _gave_up(self, exc: ClientError) -> ClientError:
        expiry = self._expiry_left()
        if expiry is not None and expiry <= 0:
            why = (f"gave up waiting for {self.id}: it expired at "
                   f"{self.expires_at.isoformat(timespec='seconds')} meanwhile")
        else:
            why = f"gave up waiting for {self.id} after {self.timeout:g}s"
        if isinstance(exc, ConnectionFailed):
            return ConnectionFailed(exc.socket_path, f"{exc.reason}; {why}")
        return ClientError(exc.status, exc.code, f"{exc.message}; {why}", exc.details)
