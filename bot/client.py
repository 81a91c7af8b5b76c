"""The agents' client for Tapgate's socket API: sync, async, and a decorator.

Imports only httpx, the wire models (:mod:`bot.api.schemas`) and the records
(:mod:`storage.records`), so agents need none of the server's dependencies::

    from bot.client import TapgateClient, requires_approval

    with TapgateClient("/run/tapgate/tapgate.sock") as tg:
        approval = tg.request_approval("deploy-bot", "shell", "rm -rf build/")
        approval = tg.wait_for_decision(approval.id, timeout=600)

    @requires_approval("shell", summary=lambda cmd: f"run {cmd}")
    def run(cmd: str) -> None: ...

Every error the server answers raises :class:`ClientError` (``status``,
``code``, ``message``, ``details``); an unreachable socket raises
:class:`ConnectionFailed`, naming the path. The socket path defaults to
``$TAPGATE_SOCKET_PATH``, else ``tapgate.sock``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
from pydantic import BaseModel, TypeAdapter

from bot.api.schemas import MAX_SUMMARY, MAX_WAIT, Health, ToolCallResult
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

__all__ = ["ApprovalDenied", "ApprovalExpired", "AsyncTapgateClient", "ClientError",
           "ConnectionFailed", "TapgateClient", "requires_approval"]

DEFAULT_SOCKET = "tapgate.sock"
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
    return os.environ.get("TAPGATE_SOCKET_PATH") or DEFAULT_SOCKET


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


class _Routes:
    """Every route of the API as a :class:`_Call` (DESIGN.md, "Socket API")."""

    @staticmethod
    def request_approval(agent, kind, summary, payload, ttl_seconds, run_id,
                         idempotency_key) -> _Call:
        body = {"agent": agent, "kind": kind, "summary": summary, "payload": payload,
                **_given(ttl_seconds=ttl_seconds, run_id=run_id, idempotency_key=idempotency_key)}
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


class _ClosingSyncBackend(httpcore.SyncBackend):
    """httpcore's sync backend, except that a failed Unix-socket connect closes its socket.

    httpcore 1.0 leaves that socket to the garbage collector (a ResourceWarning
    on every "tapgate is not running"); its own streams are reused as they are.
    """

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        from httpcore._backends.sync import SyncStream

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return SyncStream(sock)


def _sync_transport(path: str) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(uds=path)
    pool = getattr(transport, "_pool", None)
    if hasattr(pool, "_network_backend"):
        pool._network_backend = _ClosingSyncBackend()
    return transport


# --- the sync client -------------------------------------------------------------------------


class TapgateClient(_Base):
    """Blocking client over the Unix socket (httpx); use it as a context manager.

    Runs: ``put_run(id, name=..., budget_tokens=..., metadata=...)``; steps:
    ``put_step(id, index, prompt_tokens=...)``; the ledger: ``record_call(run_id,
    model, provider=..., prompt_tokens=...)`` (priced by the server when no
    ``dollars``) or ``record_calls([...])`` (all or nothing).
    """

    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        super().__init__(socket_path, timeout)
        self._http = httpx.Client(transport=_sync_transport(self.socket_path),
                                  base_url="http://tapgate", timeout=timeout)

    def __enter__(self) -> TapgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, **self._kwargs(call))
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None
        return self._answer(call, response)

    def request_approval(self, agent: str, kind: str, summary: str, payload: Any = None,
                         ttl_seconds: float | None = None, run_id: str | None = None,
                         idempotency_key: str | None = None) -> Approval:
        """Submit a request; the same ``idempotency_key`` again returns the same one."""
        return self._send(_Routes.request_approval(agent, kind, summary, payload, ttl_seconds,
                                                   run_id, idempotency_key))

    def get_approval(self, approval_id: str, wait: float | None = None) -> Approval:
        """The request; with ``wait`` (0..300 s) held until it is final or the wait ends."""
        return self._send(_Routes.get_approval(approval_id, wait))

    def wait_for_decision(self, approval_id: str, timeout: float | None = None) -> Approval:
        """Long-poll (slices of at most 300 s) until the request is final or ``timeout``
        seconds pass (None: until it is decided or expires); its state then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            approval = self.get_approval(approval_id, _slice(deadline))
            if approval.is_final or _over(deadline):
                return approval

    def cancel_approval(self, approval_id: str, reason: str | None = None) -> Approval:
        return self._send(_Routes.cancel_approval(approval_id, reason))

    def list_approvals(self, status: str | None = None, limit: int | None = None
                       ) -> list[Approval]:
        return self._send(_Routes.list_approvals(status, limit))

    def put_run(self, run_id: str, **fields: Any) -> Run:
        return self._send(_Routes.put_run(run_id, fields))

    def get_run(self, run_id: str) -> Run:
        return self._send(_Routes.get_run(run_id))

    def list_runs(self, status: str | None = None, limit: int | None = None) -> list[Run]:
        return self._send(_Routes.list_runs(status, limit))

    def cancel_run(self, run_id: str) -> Run:
        return self._send(_Routes.cancel_run(run_id))

    def put_step(self, run_id: str, index: int, **fields: Any) -> Step:
        return self._send(_Routes.put_step(run_id, index, fields))

    def list_steps(self, run_id: str) -> list[Step]:
        return self._send(_Routes.list_steps(run_id))

    def record_tool_call(self, run_id: str, tool: str, **fields: Any) -> ToolCallResult:
        return self._send(_Routes.record_tool_call(run_id, tool, fields))

    def list_tool_calls(self, run_id: str) -> list[ToolCall]:
        return self._send(_Routes.list_tool_calls(run_id))

    def save_checkpoint(self, run_id: str, **fields: Any) -> Checkpoint:
        return self._send(_Routes.save_checkpoint(run_id, fields))

    def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        return self._send(_Routes.list_checkpoints(run_id))

    def latest_checkpoint(self, run_id: str) -> Checkpoint:
        return self._send(_Routes.latest_checkpoint(run_id))

    def record_call(self, run_id: str, model: str, **fields: Any) -> LedgerEntry:
        return self._send(_Routes.ledger_append({"run_id": run_id, "model": model, **fields}))

    def record_calls(self, entries: list[dict[str, Any]]) -> list[LedgerEntry]:
        return self._send(_Routes.ledger_append(list(entries)))

    def ledger(self, run_id: str) -> list[LedgerEntry]:
        return self._send(_Routes.ledger(run_id))

    def totals(self, run_id: str) -> LedgerTotals:
        return self._send(_Routes.totals(run_id))

    def spend(self, by: str = "model", since: When = None, until: When = None) -> UsageSummary:
        return self._send(_Routes.spend(by, since, until))

    def put_fact(self, namespace: str, key: str, value: Any) -> Fact:
        return self._send(_Routes.put_fact(namespace, key, value))

    def get_fact(self, namespace: str, key: str) -> Fact:
        return self._send(_Routes.get_fact(namespace, key))

    def list_facts(self, namespace: str) -> list[Fact]:
        return self._send(_Routes.list_facts(namespace))

    def put_policy(self, name: str, **fields: Any) -> Policy:
        return self._send(_Routes.put_policy(name, fields))

    def get_policy(self, name: str) -> Policy:
        return self._send(_Routes.get_policy(name))

    def list_policies(self) -> list[Policy]:
        return self._send(_Routes.list_policies())

    def health(self) -> Health:
        return self._send(_Routes.health())


# --- the async client ------------------------------------------------------------------------


class AsyncTapgateClient(_Base):
    """The same API as :class:`TapgateClient`, every method a coroutine (httpx.AsyncClient)."""

    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        super().__init__(socket_path, timeout)
        self._http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.socket_path),
                                       base_url="http://tapgate", timeout=timeout)

    async def __aenter__(self) -> AsyncTapgateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, **self._kwargs(call))
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None
        return self._answer(call, response)

    async def request_approval(self, agent: str, kind: str, summary: str, payload: Any = None,
                               ttl_seconds: float | None = None, run_id: str | None = None,
                               idempotency_key: str | None = None) -> Approval:
        return await self._send(_Routes.request_approval(agent, kind, summary, payload,
                                                         ttl_seconds, run_id, idempotency_key))

    async def get_approval(self, approval_id: str, wait: float | None = None) -> Approval:
        return await self._send(_Routes.get_approval(approval_id, wait))

    async def wait_for_decision(self, approval_id: str, timeout: float | None = None
                                ) -> Approval:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            approval = await self.get_approval(approval_id, _slice(deadline))
            if approval.is_final or _over(deadline):
                return approval

    async def cancel_approval(self, approval_id: str, reason: str | None = None) -> Approval:
        return await self._send(_Routes.cancel_approval(approval_id, reason))

    async def list_approvals(self, status: str | None = None, limit: int | None = None
                             ) -> list[Approval]:
        return await self._send(_Routes.list_approvals(status, limit))

    async def put_run(self, run_id: str, **fields: Any) -> Run:
        return await self._send(_Routes.put_run(run_id, fields))

    async def get_run(self, run_id: str) -> Run:
        return await self._send(_Routes.get_run(run_id))

    async def list_runs(self, status: str | None = None, limit: int | None = None
                        ) -> list[Run]:
        return await self._send(_Routes.list_runs(status, limit))

    async def cancel_run(self, run_id: str) -> Run:
        return await self._send(_Routes.cancel_run(run_id))

    async def put_step(self, run_id: str, index: int, **fields: Any) -> Step:
        return await self._send(_Routes.put_step(run_id, index, fields))

    async def list_steps(self, run_id: str) -> list[Step]:
        return await self._send(_Routes.list_steps(run_id))

    async def record_tool_call(self, run_id: str, tool: str, **fields: Any) -> ToolCallResult:
        return await self._send(_Routes.record_tool_call(run_id, tool, fields))

    async def list_tool_calls(self, run_id: str) -> list[ToolCall]:
        return await self._send(_Routes.list_tool_calls(run_id))

    async def save_checkpoint(self, run_id: str, **fields: Any) -> Checkpoint:
        return await self._send(_Routes.save_checkpoint(run_id, fields))

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        return await self._send(_Routes.list_checkpoints(run_id))

    async def latest_checkpoint(self, run_id: str) -> Checkpoint:
        return await self._send(_Routes.latest_checkpoint(run_id))

    async def record_call(self, run_id: str, model: str, **fields: Any) -> LedgerEntry:
        return await self._send(_Routes.ledger_append({"run_id": run_id, "model": model,
                                                       **fields}))

    async def record_calls(self, entries: list[dict[str, Any]]) -> list[LedgerEntry]:
        return await self._send(_Routes.ledger_append(list(entries)))

    async def ledger(self, run_id: str) -> list[LedgerEntry]:
        return await self._send(_Routes.ledger(run_id))

    async def totals(self, run_id: str) -> LedgerTotals:
        return await self._send(_Routes.totals(run_id))

    async def spend(self, by: str = "model", since: When = None, until: When = None
                    ) -> UsageSummary:
        return await self._send(_Routes.spend(by, since, until))

    async def put_fact(self, namespace: str, key: str, value: Any) -> Fact:
        return await self._send(_Routes.put_fact(namespace, key, value))

    async def get_fact(self, namespace: str, key: str) -> Fact:
        return await self._send(_Routes.get_fact(namespace, key))

    async def list_facts(self, namespace: str) -> list[Fact]:
        return await self._send(_Routes.list_facts(namespace))

    async def put_policy(self, name: str, **fields: Any) -> Policy:
        return await self._send(_Routes.put_policy(name, fields))

    async def get_policy(self, name: str) -> Policy:
        return await self._send(_Routes.get_policy(name))

    async def list_policies(self) -> list[Policy]:
        return await self._send(_Routes.list_policies())

    async def health(self) -> Health:
        return await self._send(_Routes.health())


# --- the decorator ---------------------------------------------------------------------------


def _describe(fn: Callable, args: tuple, kwargs: dict) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{fn.__name__}({', '.join(parts)})"


def _truncate(text: str, limit: int = MAX_SUMMARY) -> str:
    text = text or "(empty)"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _outcome(approval: Approval) -> None:
    """Return if approved; raise ApprovalDenied or ApprovalExpired otherwise."""
    if approval.status == "approved":
        return
    if approval.status == "denied":
        raise ApprovalDenied(approval)
    raise ApprovalExpired(approval)


def requires_approval(kind: str, summary: str | Callable[..., str] | None = None, *,
                      agent: str | None = None, payload: Callable[..., Any] | None = None,
                      ttl_seconds: float | None = None,
                      socket_path: str | os.PathLike | None = None,
                      timeout: float | None = None) -> Callable[[Callable], Callable]:
    """Make a function (sync or async) wait for a human's approval before it runs.

    Each call submits a request of ``kind`` — ``summary`` is a string, a
    callable given the call's arguments, or by default the function's name
    and the repr of its arguments (truncated to 500 characters); ``payload``
    likewise builds the JSON payload; ``agent`` defaults to the function's
    module — and waits for the decision (``timeout`` seconds; None = until it
    expires). Approved: the function runs and its result is returned.
    Denied: :class:`ApprovalDenied` (with the reason and who decided).
    Expired, cancelled, or still pending at ``timeout`` (then it is withdrawn):
    :class:`ApprovalExpired`. The function does not run in those cases.
    """

    def build(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
        text = summary(*args, **kwargs) if callable(summary) else summary
        return {
            "agent": agent or fn.__module__ or "python",
            "kind": kind,
            "summary": _truncate(text if text is not None else _describe(fn, args, kwargs)),
            "payload": payload(*args, **kwargs) if payload is not None else None,
            "ttl_seconds": ttl_seconds,
        }

    def decorate(fn: Callable) -> Callable:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with AsyncTapgateClient(socket_path) as client:
                    approval = await client.request_approval(**build(fn, args, kwargs))
                    approval = await client.wait_for_decision(approval.id, timeout)
                    if not approval.is_final:
                        approval = await _withdraw_async(client, approval)
                _outcome(approval)
                return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            with TapgateClient(socket_path) as client:
                approval = client.request_approval(**build(fn, args, kwargs))
                approval = client.wait_for_decision(approval.id, timeout)
                if not approval.is_final:
                    approval = _withdraw(client, approval)
            _outcome(approval)
            return fn(*args, **kwargs)

        return run_sync

    return decorate


def _withdraw(client: TapgateClient, approval: Approval) -> Approval:
    """Cancel a request nobody decided in time (a decision that wins the race stands)."""
    try:
        return client.cancel_approval(approval.id, "the caller stopped waiting")
    except ClientError as exc:
        if exc.status == 409:
            return client.get_approval(approval.id)
        raise


async def _withdraw_async(client: AsyncTapgateClient, approval: Approval) -> Approval:
    try:
        return await client.cancel_approval(approval.id, "the caller stopped waiting")
    except ClientError as exc:
        if exc.status == 409:
            return await client.get_approval(approval.id)
        raise
