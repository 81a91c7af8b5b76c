"""``/v1/rules``: standing decisions (list, create, revoke; admin uids only), and
``POST /v1/runs/{id}/complete``, which ends a run and with it its session rules."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from bot.api.routes_base import ItemsOf, Route, api, body, caller, finish, path, query, respond
from bot.api.schemas import Items, RuleCreate, RuleQuery
from storage.clock import utcnow
from storage.errors import Conflict, Forbidden
from storage.records import Run
from storage.rule_records import NewRule, Rule

RULES = ItemsOf(Rule)


def ended_run(run: Run) -> None:
    """Conflict for a completed run: its session rules have ended, a new one never starts."""
    if run.status == "completed":
        raise Conflict(f"run {run.id} is completed: a rule for it would never apply")


def _by(request: web.Request) -> str:
    """``socket:uid<uid>``: who made or revoked a rule over the socket."""
    uid = caller(request).uid
    return "socket" if uid is None else f"socket:uid{uid}"


async def list_rules(request: web.Request) -> web.Response:
    """Live rules, oldest first; ``?all=true`` includes revoked and expired ones."""
    caller(request).require_admin("listing rules")
    q: RuleQuery = query(request, RuleQuery)
    store = api(request).store
    return RULES.respond(await store.run(store.list_rules, not q.all))


async def create_rule(request: web.Request) -> web.Response:
    caller(request).require_admin("creating a rule")
    spec: RuleCreate = await body(request, RuleCreate)
    from bot.rules import validate_new_rule

    validate_new_rule(spec.agent, spec.kind, spec.match)
    store = api(request).store
    if spec.run_id is not None:  # 404 naming the run, before writing
        ended_run(await store.run(store.get_run, spec.run_id))
    expires_at = None
    if spec.ttl_seconds is not None:
        expires_at = utcnow() + timedelta(seconds=spec.ttl_seconds)
    rule = NewRule(agent=spec.agent, kind=spec.kind, match=spec.match, run_id=spec.run_id,
                   created_by=_by(request), expires_at=expires_at)
    return respond(await finish(store.run(store.create_rule, rule)), 201)


async def revoke_rule(request: web.Request) -> web.Response:
    rule_id = path(request, "rule_id")
    caller(request).require_admin(f"revoking rule {rule_id}")
    store = api(request).store
    return respond(await finish(store.run(store.revoke_rule, rule_id, _by(request))))


async def complete_run(request: web.Request) -> web.Response:
    """Mark the run completed (its session rules end with it): its owner or an admin."""
    run_id = path(request, "id")
    who = caller(request)
    store = api(request).store
    if not who.admin:
        run = await store.run(store.get_run, run_id)
        if run.owner_uid is None or run.owner_uid != who.uid:
            raise Forbidden(f"uid {who.uid} is an agent: completing run {run_id}, which it "
                            "did not create, needs an admin uid (TAPGATE_SOCKET_ADMIN_UIDS)")
    return respond(await finish(store.run(store.complete_run, run_id)))


_ADMIN = "Admin uids only (403 for agents)."
ROUTES = [
    Route("GET", "/v1/rules", list_rules, "List rules, oldest first", "rules",
          response=Items[Rule], query=RuleQuery, errors=(403,),
          description="Live rules (not revoked, not expired); all=true includes the others. "
                      + _ADMIN),
    Route("POST", "/v1/rules", create_rule, "Create a rule", "rules", status=201,
          response=Rule, body=RuleCreate, errors=(403, 404, 409),
          description="Matching new requests (same agent and kind, summary globbed by "
                      "match, in run_id if given) are approved as they are submitted, "
                      "decided_by rule:<id>. Rules never apply to the bot's own kinds "
                      "(422) and never override a policy's denial. 404 if run_id names no "
                      "run, 409 if that run is completed. " + _ADMIN),
    Route("POST", "/v1/rules/{rule_id}/revoke", revoke_rule, "Revoke a rule", "rules",
          response=Rule, errors=(403, 404, 409),
          description="409 if the rule is already revoked or expired. " + _ADMIN),
    Route("POST", "/v1/runs/{id}/complete", complete_run, "Complete a run", "runs",
          response=Run, errors=(403, 404, 409),
          description="Marks the run completed; its session rules end with it. An agent uid "
                      "may complete only the runs it created (403)."),
]
