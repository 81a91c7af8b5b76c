"""``/v1/ledger`` and spend: priced appends (one entry or a list), a run's ledger and totals.

A list of thousands of entries is validated by one TypeAdapter pass straight
into the Store's entry type, priced in place, and written by the Store in one
transaction (all or nothing): no per-entry copies.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import TypeAdapter

from bot.api.routes_base import (
    Invalid,
    ItemsOf,
    Route,
    api,
    finish,
    parse_json,
    path,
    query,
    read_body,
    respond,
)
from bot.api.schemas import Items, LedgerEntryCreate, SpendQuery
from bot.pricing import Pricer
from storage.records import LedgerEntry, LedgerTotals, UsageSummary

LEDGER = ItemsOf(LedgerEntry)
ONE = TypeAdapter(LedgerEntryCreate)
MANY = TypeAdapter(list[LedgerEntryCreate])
LEDGER_BODY = LedgerEntryCreate | list[LedgerEntryCreate]


def price(entries: list[LedgerEntryCreate], pricer: Pricer, is_list: bool) -> None:
    """Set each entry's dollars from the price data unless the caller gave them."""
    for i, e in enumerate(entries):
        if e.cached_tokens > e.prompt_tokens:
            loc = ["body", i, "cached_tokens"] if is_list else ["body", "cached_tokens"]
            msg = "cached_tokens cannot exceed prompt_tokens (prompt_tokens includes them)"
            raise Invalid(f"invalid {'.'.join(map(str, loc))}: {msg}",
                          [{"loc": loc, "msg": msg, "type": "value_error"}])
        if e.dollars is None:
            p = pricer.price(e.provider, e.model, e.prompt_tokens, e.completion_tokens,
                             e.cached_tokens, e.created_at)
            e.set_price(p.dollars, p.priced, p.price_version)


async def append_ledger(request: web.Request) -> web.Response:
    """Record one call (201 with the entry) or a list (201 with ``{"items"}``)."""
    raw = await read_body(request)
    is_list = raw.lstrip()[:1] == b"["
    entries = parse_json(MANY, raw) if is_list else [parse_json(ONE, raw)]
    ctx = api(request)
    price(entries, ctx.pricer, is_list)
    result = await finish(ctx.governance.append_ledger(entries))  # budgets apply
    if is_list:
        return LEDGER.respond(result.entries, 201)
    return respond(result.entries[0], 201)


async def run_ledger(request: web.Request) -> web.Response:
    store = api(request).store
    return LEDGER.respond(await store.run(store.ledger_for_run, path(request, "id")))


async def run_totals(request: web.Request) -> web.Response:
    store = api(request).store
    return respond(await store.run(store.totals, path(request, "id")))


async def spend(request: web.Request) -> web.Response:
    q: SpendQuery = query(request, SpendQuery)
    store = api(request).store
    return respond(await store.run(store.summarize_ledger, q.by, q.since, q.until))


ROUTES = [
    Route("POST", "/v1/ledger", append_ledger, "Record model calls (one or a list)", "ledger",
          status=201, response=LedgerEntry | Items[LedgerEntry], body=LEDGER_BODY,
          errors=(402, 404),
          description="An object answers the entry, a list answers {items}. Entries without "
                      "dollars are priced from genai-prices (priced=false when the model is "
                      "unknown). A list is all or nothing: 402 if any run is halted, 404 if "
                      "any run is unknown."),
    Route("GET", "/v1/runs/{id}/ledger", run_ledger, "A run's ledger, in append order",
          "ledger", response=Items[LedgerEntry], errors=(404,)),
    Route("GET", "/v1/runs/{id}/totals", run_totals, "A run's ledger totals", "ledger",
          response=LedgerTotals, errors=(404,)),
    Route("GET", "/v1/spend", spend, "Spend grouped by a dimension over [since, until)",
          "ledger", response=UsageSummary, query=SpendQuery,
          description="by: provider, model (default), day, name or metadata.KEY."),
]
