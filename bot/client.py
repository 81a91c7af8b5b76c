"""The agents' client for Tapgate's socket API: sync, async, and a decorator.

Imports only httpx, the wire models (:mod:`bot.api.schemas`) and the records
(:mod:`storage.records`), so agents need none of the server's dependencies::

    from bot.client import TapgateClient, requires_approval

    with TapgateClient("/run/tapgate/tapgate.sock") as tg:
        approval = tg.request_approval("deploy-bot", "shell", "rm -rf build/")
        approval = tg.wait_for_decision(approval, timeout=600)

    @requires_approval("shell", summary=lambda cmd: f"run {cmd}")
    def run(cmd: str) -> None: ...

Every error the server answers raises :class:`ClientError` (``status``,
``code``, ``message``, ``details``); an unreachable socket raises
:class:`ConnectionFailed`, naming the path; a socket served by another uid than
the expected one raises :class:`WrongServer` before anything is sent (see
:mod:`bot.client_transport`). The socket path defaults to
``$TAPGATE_SOCKET_PATH``, else the well-known place the bot uses too
(``$XDG_RUNTIME_DIR/tapgate/tapgate.sock``, else ``~/.local/state/tapgate/tapgate.sock``).
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from bot.api.schemas import Health, ToolCallResult
from bot.client_calls import (
    DEFAULT_TIMEOUT,
    ApprovalDenied,
    ApprovalExpired,
    ClientError,
    ConnectionFailed,
    When,
    _Base,
    _Call,
    _Patience,
    _Routes,
)
from bot.client_decorator import requires_approval
from bot.client_transport import WrongServer, async_transport, resolve_server_uid, sync_transport
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

__all__ = ["ApprovalDenied", "ApprovalExpired", "AsyncTapgateClient", "ClientError",
           "ConnectionFailed", "TapgateClient", "WrongServer", "requires_approval"]


# --- the sync client -------------------------------------------------------------------------


class TapgateClient(_Base):
    """Blocking client over the Unix socket (httpx); use it as a context manager.

    ``server_uid`` (a uid or a user name; default ``$TAPGATE_SOCKET_SERVER_UID``,
    else the client's own uid) is the only uid trusted to serve the socket: every
    new connection checks it (``SO_PEERCRED``) and raises :class:`WrongServer`
    otherwise. Runs: ``put_run(id, name=..., budget_tokens=..., metadata=...)``;
    steps: ``put_step(id, index, prompt_tokens=...)``; the ledger:
    ``record_call(run_id, model, provider=..., prompt_tokens=...)`` (priced by the
    server when no ``dollars``) or ``record_calls([...])`` (all or nothing).
    """

    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, *, server_uid: int | str | None = None):
        super().__init__(socket_path, timeout)
        self.server_uid = resolve_server_uid(server_uid)
        self._http = httpx.Client(transport=sync_transport(self.socket_path, self.server_uid),
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
                         idempotency_key: str | None = None, *,
                         accepts_edits: bool = False, required_approvals: int | None = None,
                         requested_by: int | None = None) -> Approval:
        """Submit a request; the same ``idempotency_key`` again returns the same one.

        ``accepts_edits``: the caller will run ``approval.edited_payload`` when an approver
        approves an edited request (else the approver's Edit is refused). The request may
        come back approved at once (status ``approved``) when a rule matches it.
        ``required_approvals`` (1..10): distinct approvers it needs (the bot raises it to
        its settings' or the run's policy's count, never lowers it); ``requested_by``: the
        Telegram user id it acts for, whose own approval does not count."""
        return self._send(_Routes.request_approval(agent, kind, summary, payload, ttl_seconds,
                                                   run_id, idempotency_key, accepts_edits,
                                                   required_approvals, requested_by))

    def get_approval(self, approval_id: str, wait: float | None = None) -> Approval:
        """The request; with ``wait`` (0..300 s) held until it is final or the wait ends."""
        return self._send(_Routes.get_approval(approval_id, wait))

    def wait_for_decision(self, approval: str | Approval, timeout: float | None = None
                          ) -> Approval:
        """Long-poll (slices of at most 300 s) until the request is final or ``timeout``
        seconds pass (None: until it is decided or expires); its state then.

        A restart of the bot is waited out: while the socket is gone, refuses
        connections or answers 503, it is retried with backoff for as long as the
        wait and the request's expiry allow (give the :class:`Approval` itself, not
        its id, so the expiry is known before the first answer), then the last
        failure is raised saying so.
        """
        patience = _Patience(approval, timeout)
        while True:
            try:
                current = self.get_approval(patience.id, patience.slice())
            except ClientError as exc:
                time.sleep(patience.pause(exc))  # pause() raises what is not to be retried
                continue
            if patience.done(current):
                return current

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

    def complete_run(self, run_id: str) -> Run:
        """Mark the run completed; its session rules end with it."""
        return self._send(_Routes.complete_run(run_id))

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

    def list_rules(self, all: bool = False) -> list[Rule]:
        """Live rules (admin uids only); ``all``: revoked and expired ones too."""
        return self._send(_Routes.list_rules(all))

    def add_rule(self, agent: str, kind: str, match: str, run_id: str | None = None,
                 ttl_seconds: float | None = None) -> Rule:
        """Approve ``agent``'s ``kind`` requests whose summary globs ``match`` (``*`` is
        the only wildcard), in ``run_id`` only if given, for ``ttl_seconds`` if given."""
        return self._send(_Routes.add_rule(agent, kind, match, run_id, ttl_seconds))

    def revoke_rule(self, rule_id: int) -> Rule:
        return self._send(_Routes.revoke_rule(rule_id))

    def health(self) -> Health:
        return self._send(_Routes.health())


# --- the async client ------------------------------------------------------------------------


class AsyncTapgateClient(_Base):
    """The same API as :class:`TapgateClient`, every method a coroutine (httpx.AsyncClient),
    with the same check of the uid serving the socket."""

    def __init__(self, socket_path: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT, *, server_uid: int | str | None = None):
        super().__init__(socket_path, timeout)
        self.server_uid = resolve_server_uid(server_uid)
        self._http = httpx.AsyncClient(
            transport=async_transport(self.socket_path, self.server_uid),
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
                               idempotency_key: str | None = None, *,
                               accepts_edits: bool = False,
                               required_approvals: int | None = None,
                               requested_by: int | None = None) -> Approval:
        """As :meth:`TapgateClient.request_approval`."""
        return await self._send(_Routes.request_approval(agent, kind, summary, payload,
                                                         ttl_seconds, run_id, idempotency_key,
                                                         accepts_edits, required_approvals,
                                                         requested_by))

    async def get_approval(self, approval_id: str, wait: float | None = None) -> Approval:
        return await self._send(_Routes.get_approval(approval_id, wait))

    async def wait_for_decision(self, approval: str | Approval, timeout: float | None = None
                                ) -> Approval:
        """As :meth:`TapgateClient.wait_for_decision`, restarts of the bot included."""
        patience = _Patience(approval, timeout)
        while True:
            try:
                current = await self.get_approval(patience.id, patience.slice())
            except ClientError as exc:
                await asyncio.sleep(patience.pause(exc))  # raises what is not to be retried
                continue
            if patience.done(current):
                return current

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

    async def complete_run(self, run_id: str) -> Run:
        return await self._send(_Routes.complete_run(run_id))

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

    async def list_rules(self, all: bool = False) -> list[Rule]:
        return await self._send(_Routes.list_rules(all))

    async def add_rule(self, agent: str, kind: str, match: str, run_id: str | None = None,
                       ttl_seconds: float | None = None) -> Rule:
        return await self._send(_Routes.add_rule(agent, kind, match, run_id, ttl_seconds))

    async def revoke_rule(self, rule_id: int) -> Rule:
        return await self._send(_Routes.revoke_rule(rule_id))

    async def health(self) -> Health:
        return await self._send(_Routes.health())
