"""``/v1/facts`` and ``/v1/policies``: the agents' memory and the named policy bundles."""

from __future__ import annotations

from aiohttp import web

from bot.api.routes_base import ItemsOf, Route, api, body, caller, path, respond
from bot.api.schemas import FactPut, Items, PolicyPut
from storage.records import Fact, Policy, PolicyUpsert

FACTS = ItemsOf(Fact)
POLICIES = ItemsOf(Policy)


async def put_fact(request: web.Request) -> web.Response:
    namespace, key = path(request, "namespace"), path(request, "key")
    spec: FactPut = await body(request, FactPut)
    store = api(request).store
    return respond(await store.run(store.put_fact, namespace, key, spec.value))


async def get_fact(request: web.Request) -> web.Response:
    namespace, key = path(request, "namespace"), path(request, "key")
    store = api(request).store
    return respond(await store.run(store.get_fact, namespace, key))


async def list_facts(request: web.Request) -> web.Response:
    store = api(request).store
    return FACTS.respond(await store.run(store.list_facts, path(request, "namespace")))


async def put_policy(request: web.Request) -> web.Response:
    name = path(request, "name")
    caller(request).require_admin(f"writing policy {name!r}")
    spec: PolicyPut = await body(request, PolicyPut)
    policy = PolicyUpsert(name=name, **spec.model_dump(exclude={"approval_rules"}),
                          approval_rules=spec.rules())
    store = api(request).store
    return respond(await store.run(store.upsert_policy, policy))


async def get_policy(request: web.Request) -> web.Response:
    store = api(request).store
    return respond(await store.run(store.get_policy, path(request, "name")))


async def list_policies(request: web.Request) -> web.Response:
    store = api(request).store
    return POLICIES.respond(await store.run(store.list_policies))


ROUTES = [
    Route("PUT", "/v1/facts/{namespace}/{key}", put_fact, "Write a fact", "facts",
          response=Fact, body=FactPut, description="Always 200; created_at is kept."),
    Route("GET", "/v1/facts/{namespace}/{key}", get_fact, "Read a fact", "facts",
          response=Fact, errors=(404,)),
    Route("GET", "/v1/facts/{namespace}", list_facts, "A namespace's facts, by key", "facts",
          response=Items[Fact]),
    Route("PUT", "/v1/policies/{name}", put_policy, "Create or replace a policy bundle",
          "policies", response=Policy, body=PolicyPut, errors=(403,),
          description="Always 200; created_at is kept. Admin uids only (403 for agents). "
                      "A rule's required_approvals (1..10) is how many distinct approvers "
                      "a call it gates needs (the largest of the rules a call matches); "
                      "escalate_after (seconds or \"15m\", 0..30 days; 0: "
                      "TAPGATE_ESCALATE_AFTER) is when the run's pending requests "
                      "escalate."),
    Route("GET", "/v1/policies/{name}", get_policy, "Read a policy bundle", "policies",
          response=Policy, errors=(404,)),
    Route("GET", "/v1/policies", list_policies, "List policy bundles, newest first",
          "policies", response=Items[Policy]),
]
