"""``requires_approval``: make a function wait for a human's approval before it runs.

Re-exported by :mod:`bot.client`; like it, imports no server dependencies.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.api.schemas import MAX_SUMMARY
from bot.client_calls import ApprovalDenied, ApprovalExpired, ClientError
from storage.records import Approval

if TYPE_CHECKING:
    from bot.client import AsyncTapgateClient, TapgateClient


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
                      timeout: float | None = None,
                      server_uid: int | str | None = None,
                      required_approvals: int | None = None,
                      requested_by: int | None = None) -> Callable[[Callable], Callable]:
    """Make a function (sync or async) wait for a human's approval before it runs.

    Each call submits a request of ``kind`` — ``summary`` is a string, a
    callable given the call's arguments, or by default the function's name
    and the repr of its arguments (truncated to 500 characters); ``payload``
    likewise builds the JSON payload; ``agent`` defaults to the function's
    module — and waits for the decision (``timeout`` seconds; None = until it
    expires), riding out a restart of the bot. Approved: the function runs and
    its result is returned. Denied: :class:`ApprovalDenied` (with the reason and
    who decided). Expired, cancelled, or still pending at ``timeout`` (then it is
    withdrawn): :class:`ApprovalExpired`. The function does not run in those
    cases, nor when the socket is served by another uid than ``server_uid``
    (see :class:`bot.client.TapgateClient`). ``required_approvals`` and
    ``requested_by`` are those of :meth:`bot.client.TapgateClient.request_approval`.
    """

    def build(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
        text = summary(*args, **kwargs) if callable(summary) else summary
        return {
            "agent": agent or fn.__module__ or "python",
            "kind": kind,
            "summary": _truncate(text if text is not None else _describe(fn, args, kwargs)),
            "payload": payload(*args, **kwargs) if payload is not None else None,
            "ttl_seconds": ttl_seconds,
            "required_approvals": required_approvals,
            "requested_by": requested_by,
        }

    # bot.client imports this module to re-export the decorator, so the clients are
    # imported when a decorated function is called, not when this module loads.
    def decorate(fn: Callable) -> Callable:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                from bot.client import AsyncTapgateClient

                async with AsyncTapgateClient(socket_path, server_uid=server_uid) as client:
                    approval = await client.request_approval(**build(fn, args, kwargs))
                    approval = await client.wait_for_decision(approval, timeout)
                    if not approval.is_final:
                        approval = await _withdraw_async(client, approval)
                _outcome(approval)
                return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            from bot.client import TapgateClient

            with TapgateClient(socket_path, server_uid=server_uid) as client:
                approval = client.request_approval(**build(fn, args, kwargs))
                approval = client.wait_for_decision(approval, timeout)
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
