"""``/v1/approvals``: submit, read (with long-poll), list, cancel — thin over the ApprovalManager."""

from __future__ import annotations

import hashlib

from aiohttp import web

from bot.api.routes_base import (
    Invalid,
    ItemsOf,
    PayloadTooLarge,
    Route,
    api,
    body,
    caller,
    finish,
    path,
    query,
    respond,
)
from bot.api.schemas import (
    MAX_PAYLOAD,
    ApprovalCancel,
    ApprovalCreate,
    ApprovalQuery,
    Items,
    WaitQuery,
    json_size,
)
from bot.governance import BOT_AGENT, RESERVED_KINDS
from storage.errors import Forbidden
from storage.records import Approval

APPROVALS = ItemsOf(Approval)


async def create_approval(request: web.Request) -> web.Response:
    """Submit a request: 201 when created, 200 with the existing one for a repeated key."""
    spec: ApprovalCreate = await body(request, ApprovalCreate)
    _not_the_bots(spec)
    if spec.payload is not None:
        try:
            size = json_size(spec.payload)
        except ValueError:
            raise Invalid("invalid body.payload: NaN and Infinity are not JSON", [
                {"loc": ["body", "payload"], "msg": "NaN and Infinity are not JSON",
                 "type": "finite_number"}]) from None
        if size > MAX_PAYLOAD:
            raise PayloadTooLarge(
                f"payload is {size:,} bytes as JSON; at most {MAX_PAYLOAD:,} are accepted "
                "(413, not 422: the request is well-formed but too large)")
    ctx = api(request)
    required, escalate_after = await ctx.governance.submit_terms(
        spec.run_id, spec.kind, spec.required_approvals)
    approval, created = await finish(ctx.manager.submit(
        agent=spec.agent, kind=spec.kind, summary=spec.summary, payload=spec.payload,
        ttl_seconds=spec.ttl_seconds, run_id=spec.run_id,
        idempotency_key=scoped_key(spec.idempotency_key, caller(request).uid),
        submitter_uid=caller(request).uid, accepts_edits=spec.accepts_edits,
        required_approvals=required, requested_by=spec.requested_by,
        escalate_after=escalate_after))
    return respond(approval, 201 if created else 200)


def scoped_key(key: str | None, uid: int | None) -> str | None:
    """An idempotency key as stored: scoped to the caller's uid, so no caller can claim
    a key another agent, or the bot itself (``tapgate:...``), will use."""
    if key is None:
        return None
    scoped = f"uid{uid}:{key}"
    if len(scoped) > 200:  # the column's width; a digest keeps long keys distinct
        scoped = f"uid{uid}:#{hashlib.sha256(key.encode()).hexdigest()}"
    return scoped


def _not_the_bots(spec: ApprovalCreate) -> None:
    """Refuse the kinds and the agent name the bot itself posts under (422 naming them):
    nothing an agent sends may look like, or act as, the bot's own request."""
    if spec.kind in RESERVED_KINDS:
        raise Invalid(f"invalid body.kind: {spec.kind!r} is reserved for the bot's own "
                      "requests", [{"loc": ["body", "kind"], "type": "reserved",
                                    "msg": f"kind {spec.kind!r} is reserved"}])
    if spec.agent.strip().casefold() == BOT_AGENT:
        raise Invalid(f"invalid body.agent: {spec.agent!r} is reserved for the bot itself",
                      [{"loc": ["body", "agent"], "type": "reserved",
                        "msg": f"agent {spec.agent!r} is reserved"}])


async def get_approval(request: web.Request) -> web.Response:
    """The request; with ``?wait=`` held until it is final or the wait ends."""
    approval_id = path(request, "id")
    wait = query(request, WaitQuery).wait
    ctx = api(request)
    if wait is None:
        return respond(await ctx.manager.get(approval_id))
    return respond(await ctx.long_poll(approval_id, wait))


async def list_approvals(request: web.Request) -> web.Response:
    q: ApprovalQuery = query(request, ApprovalQuery)
    store = api(request).store
    return APPROVALS.respond(await store.run(store.list_approvals, q.status, q.limit))


async def cancel_approval(request: web.Request) -> web.Response:
    approval_id = path(request, "id")
    spec: ApprovalCancel = await body(request, ApprovalCancel, optional=True)
    manager = api(request).manager
    who = caller(request)
    if not who.admin:
        approval = await manager.get(approval_id)
        if approval.submitter_uid is None or approval.submitter_uid != who.uid:
            raise Forbidden(f"uid {who.uid} is an agent: cancelling approval {approval_id}, "
                            "which it did not submit, needs an admin uid "
                            "(TAPGATE_SOCKET_ADMIN_UIDS)")
    return respond(await finish(manager.cancel(approval_id, "api", spec.reason)))


ROUTES = [
    Route("POST", "/v1/approvals", create_approval, "Submit an approval request", "approvals",
          status=201, response=Approval, body=ApprovalCreate, errors=(404, 409, 413),
          description="201 with the new request; 200 with the existing one when the same "
                      "idempotency_key comes with the same request; 409 when it comes with a "
                      "different one. 404 if run_id names no run. A payload over 64 KiB "
                      "(compact JSON) is refused with 413. The kinds the bot itself posts "
                      "(budget.grant, tool_call) and the agent name tapgate are reserved "
                      "(422). A request that a live rule matches is created already "
                      "approved (201, status approved, decided_by rule:<id>). With "
                      "accepts_edits the approver may approve an edited request: "
                      "edited_payload then holds it, and the submitter must run that. "
                      "A request with a run_id whose run's policy sets escalate_after "
                      "escalates after that delay (else TAPGATE_ESCALATE_AFTER). "
                      "required_approvals may ask for more approvers, never fewer than "
                      "the approval rules of the run's policy for tool == kind set, else "
                      "TAPGATE_DEFAULT_REQUIRED_APPROVALS."),
    Route("GET", "/v1/approvals", list_approvals, "List approval requests, newest first",
          "approvals", response=Items[Approval], query=ApprovalQuery),
    Route("GET", "/v1/approvals/{id}", get_approval, "Read an approval request (long-poll)",
          "approvals", response=Approval, query=WaitQuery, errors=(404,),
          description="With wait=SECONDS (0..300) the answer is held until the request is "
                      "final or the wait ends, and returns the moment a decision commits."),
    Route("POST", "/v1/approvals/{id}/cancel", cancel_approval, "Withdraw a pending request",
          "approvals", response=Approval, body=ApprovalCancel, body_required=False,
          errors=(403, 404, 409),
          description="409 if the request is already final (details carry its state). An "
                      "agent uid may cancel only the requests it submitted (403)."),
]
