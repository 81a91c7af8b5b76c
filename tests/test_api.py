"""The socket API through a real Unix socket: every route, every error, long-polls, peers.

The server runs in the test's event loop; requests go over the socket with
httpx. Approval and ledger routes run on SQLite and PostgreSQL (the ``store``
fixture); the rest on SQLite where the backend makes no difference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.api.server import ROUTES, SocketInUse, SocketServer
from bot.approvals import ApprovalManager
from bot.pricing import Pricer
from storage.records import RunUpsert
from storage.store import Store

_PRICER: Pricer | None = None


def pricer() -> Pricer:
    """One Pricer for the whole session (building one reads the price data)."""
    global _PRICER
    if _PRICER is None:
        _PRICER = Pricer()
    return _PRICER


def short_dir() -> Path:
    """A private temp dir with a short path (AF_UNIX paths end at ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="tg", dir="/tmp"))


@dataclass
class Api:
    """A running server and what the tests drive it with."""

    server: SocketServer
    manager: ApprovalManager
    store: Store
    path: Path
    http: httpx.AsyncClient

    async def wait_until(self, condition, timeout: float = 10.0) -> None:
        """Wait for ``condition()`` to hold (polling: no fixed sleeps)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)


def http_client(path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)),
                             base_url="http://tapgate", timeout=30)


async def start_api(store: Store, allowed: list[int] | None = None, **manager_kwargs):
    directory = short_dir()
    manager = ApprovalManager(store, chat_ids=[], **manager_kwargs)
    server = SocketServer(directory / "api.sock", allowed or [os.getuid()], store, manager,
                          pricer())
    await server.start()
    return Api(server, manager, store, directory / "api.sock", http_client(directory / "api.sock"))


async def stop_api(api: Api) -> None:
    await api.http.aclose()
    await api.server.stop()
    shutil.rmtree(api.path.parent, ignore_errors=True)


@pytest.fixture
async def api(store):
    """A server on each backend in turn."""
    harness = await start_api(store)
    yield harness
    await stop_api(harness)


@pytest.fixture
async def lite(tmp_path):
    """A server on SQLite only (routes whose behaviour no backend changes)."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'api.db'}")
    store.migrate()
    harness = await start_api(store)
    yield harness
    await stop_api(harness)
    store.close()


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


APPROVAL = {"agent": "deployer", "kind": "shell", "summary": "rm -rf build/",
            "payload": {"cmd": ["rm", "-rf", "build/"]}}


# --- approvals (both backends) -------------------------------------------------------------------


async def test_approval_lifecycle(api):
    events = []
    api.manager.subscribe(lambda a, created: events.append((a.id, a.status, created)))
    r = await api.http.post("/v1/approvals", json={**APPROVAL, "ttl_seconds": 600})
    assert r.status_code == 201
    created = r.json()
    assert created["status"] == "pending" and created["payload"] == APPROVAL["payload"]
    assert created["created_at"].endswith("Z") and created["expires_at"].endswith("Z")
    assert events == [(created["id"], "pending", True)]

    got = (await api.http.get(f"/v1/approvals/{created['id']}")).json()
    assert got == created
    now = (await api.http.get(f"/v1/approvals/{created['id']}?wait=0")).json()
    assert now == created

    second = (await api.http.post("/v1/approvals", json={**APPROVAL, "summary": "two"})).json()
    listing = (await api.http.get("/v1/approvals", params={"status": "pending"})).json()
    assert [a["id"] for a in listing["items"]] == [second["id"], created["id"]]
    assert len((await api.http.get("/v1/approvals?limit=1")).json()["items"]) == 1

    r = await api.http.post(f"/v1/approvals/{created['id']}/cancel", json={"reason": "oops"})
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["decided_by"] == "api"
    assert r.json()["reason"] == "oops"
    assert events[-1] == (created["id"], "cancelled", False)

    again = error_of(await api.http.post(f"/v1/approvals/{created['id']}/cancel"), 409,
                     "conflict")
    assert again["details"][0]["approval"]["status"] == "cancelled"
    assert (await api.http.get("/v1/approvals?status=cancelled")).json()["items"][0]["id"] == \
        created["id"]
    error_of(await api.http.get("/v1/approvals/nope"), 404, "not_found")
    error_of(await api.http.post("/v1/approvals/nope/cancel"), 404, "not_found")


async def test_idempotency_key(api):
    events = []
    api.manager.subscribe(lambda a, created: events.append(created))
    body = {**APPROVAL, "idempotency_key": "job-42"}
    first = await api.http.post("/v1/approvals", json=body)
    again = await api.http.post("/v1/approvals", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert events == [True]  # announced (posted to Telegram) once
    error_of(await api.http.post("/v1/approvals", json={**body, "summary": "else"}), 409,
             "conflict")


async def test_approval_for_unknown_run_is_404(api):
    error_of(await api.http.post("/v1/approvals", json={**APPROVAL, "run_id": "ghost"}), 404,
             "not_found")


async def test_approval_validation(api):
    for bad in ({**APPROVAL, "summary": ""}, {**APPROVAL, "summary": "x" * 501},
                {**APPROVAL, "agent": ""}, {**APPROVAL, "ttl_seconds": 0},
                {**APPROVAL, "ttl_seconds": 2592001}, {**APPROVAL, "colour": "red"},
                {"agent": "a", "kind": "k"}):
        error_of(await api.http.post("/v1/approvals", json=bad), 422, "validation_error")
    err = error_of(await api.http.post("/v1/approvals", json={**APPROVAL, "extra": 1}), 422,
                   "validation_error")
    assert err["details"] == [{"loc": ["body", "extra"], "msg": "Extra inputs are not permitted",
                               "type": "extra_forbidden"}]
    nan = '{"agent": "a", "kind": "k", "summary": "s", "payload": [NaN]}'
    error_of(await api.http.post("/v1/approvals", content=nan), 422, "validation_error")


async def test_payload_limit(api):
    ok = {**APPROVAL, "payload": "x" * (64 * 1024 - 2)}  # 64 KiB with its quotes
    assert (await api.http.post("/v1/approvals", json=ok)).status_code == 201
    err = error_of(await api.http.post("/v1/approvals",
                                       json={**APPROVAL, "payload": "x" * (64 * 1024)}),
                   413, "payload_too_large")
    assert "413" in err["message"]


async def test_concurrent_writes_share_commits_but_not_failures(api):
    """Writes arriving together are committed in groups (storage's group commit):
    one request's error must reach only that request."""
    await api.store.run(api.store.upsert_run, RunUpsert(id="live"))
    await api.store.run(api.store.upsert_run, RunUpsert(id="stopped"))
    await api.store.run(api.store.cancel_run, "stopped")
    requests = []
    for i in range(40):
        kind = i % 4
        if kind == 0:
            requests.append(("POST", "/v1/approvals", {**APPROVAL, "summary": f"ok {i}"}, 201))
        elif kind == 1:
            requests.append(("POST", "/v1/approvals", {**APPROVAL, "run_id": "ghost"}, 404))
        elif kind == 2:
            requests.append(("POST", "/v1/ledger", {"run_id": "live", "model": "m",
                                                    "dollars": 0.01}, 201))
        else:
            requests.append(("POST", "/v1/ledger", {"run_id": "stopped", "model": "m",
                                                    "dollars": 0.01}, 402))
    answers = await asyncio.gather(*(api.http.request(m, p, json=b) for m, p, b, _ in requests))
    assert [r.status_code for r in answers] == [want for *_, want in requests]
    assert await api.store.run(api.store.count_approvals, "pending") == 10
    assert (await api.http.get("/v1/runs/live/totals")).json()["calls"] == 10
    assert (await api.http.get("/v1/runs/stopped/totals")).json()["calls"] == 0


# --- ledger (both backends) -----------------------------------------------------------------------


async def test_ledger(api):
    await api.store.run(api.store.upsert_run, RunUpsert(id="r1", name="agent"))
    r = await api.http.post("/v1/ledger", json={
        "run_id": "r1", "provider": "openai", "model": "gpt-4o", "prompt_tokens": 1000,
        "completion_tokens": 100, "cached_tokens": 200, "created_at": "2026-01-05T10:00:00Z"})
    assert r.status_code == 201
    entry = r.json()
    expected = pricer().price("openai", "gpt-4o", 1000, 100, 200,
                              at=_dt("2026-01-05T10:00:00+00:00"))
    assert entry["priced"] is True and entry["dollars"] == pytest.approx(expected.dollars)
    assert entry["price_version"] == expected.price_version
    assert entry["created_at"] == "2026-01-05T10:00:00Z"

    r = await api.http.post("/v1/ledger", json=[
        {"run_id": "r1", "model": "no-such-model-xyz", "prompt_tokens": 5},
        {"run_id": "r1", "model": "house-model", "dollars": 0.25, "completion_tokens": 7}])
    assert r.status_code == 201
    unknown, given = r.json()["items"]
    assert unknown["priced"] is False and unknown["price_version"] is None
    assert given["priced"] is True and given["dollars"] == 0.25
    assert unknown["id"] < given["id"]

    ledger = (await api.http.get("/v1/runs/r1/ledger")).json()["items"]
    assert [e["id"] for e in ledger] == [entry["id"], unknown["id"], given["id"]]
    totals = (await api.http.get("/v1/runs/r1/totals")).json()
    assert totals["calls"] == 3 and totals["unpriced_calls"] == 1
    assert totals["dollars"] == pytest.approx(expected.dollars + 0.25)

    spend = (await api.http.get("/v1/spend", params={"by": "model"})).json()
    assert spend["by"] == "model" and spend["total"]["key"] == "total"
    assert spend["total"]["calls"] == 3 and spend["unpriced_calls"] == 1
    day = (await api.http.get("/v1/spend?by=day&since=2026-01-05&until=2026-01-06")).json()
    assert [g["key"] for g in day["groups"]] == ["2026-01-05"]
    assert day["since"] == "2026-01-05T00:00:00Z"
    assert (await api.http.get("/v1/spend?by=name")).json()["groups"][0]["key"] == "agent"

    assert (await api.http.post("/v1/ledger", json=[])).json() == {"items": []}
    error_of(await api.http.post("/v1/ledger", json={"run_id": "ghost", "model": "m"}), 404,
             "not_found")
    error_of(await api.http.get("/v1/runs/ghost/ledger"), 404, "not_found")
    error_of(await api.http.get("/v1/runs/ghost/totals"), 404, "not_found")
    err = error_of(await api.http.post("/v1/ledger", json=[
        {"run_id": "r1", "model": "m"},
        {"run_id": "r1", "model": "m", "prompt_tokens": 1, "cached_tokens": 2}]),
        422, "validation_error")
    assert err["details"][0]["loc"] == ["body", 1, "cached_tokens"]
    for bad in ("/v1/spend?by=colour", "/v1/spend?since=yesterday",
                "/v1/spend?until=2026-13-01", "/v1/spend?by=metadata.a%20b"):
        error_of(await api.http.get(bad), 422, "validation_error")


async def test_ledger_on_a_halted_run_is_402(api):
    await api.store.run(api.store.upsert_run, RunUpsert(id="r1", budget_tokens=100))
    await api.store.run(api.store.cancel_run, "r1")
    err = error_of(await api.http.post("/v1/ledger", json=[
        {"run_id": "r1", "model": "m", "dollars": 0.5, "prompt_tokens": 3}]),
        402, "budget_exceeded")
    detail = err["details"][0]
    assert detail["halt_reason"] == "cancelled" and detail["run_id"] == "r1"
    assert detail["budget_tokens"] == 100 and detail["usage_prompt_tokens"] == 0
    assert (await api.http.get("/v1/runs/r1/totals")).json()["calls"] == 0


async def test_ledger_list_of_2000(api):
    await api.store.run(api.store.upsert_run, RunUpsert(id="bulk"))
    entries = [{"run_id": "bulk", "provider": "openai", "model": "gpt-4o-mini",
                "prompt_tokens": 100 + i, "completion_tokens": 10} for i in range(2000)]
    r = await api.http.post("/v1/ledger", json=entries)
    assert r.status_code == 201
    items = r.json()["items"]
    assert [e["prompt_tokens"] for e in items] == [100 + i for i in range(2000)]
    assert len({e["id"] for e in items}) == 2000 and all(e["priced"] for e in items)
    run = (await api.http.get("/v1/runs/bulk")).json()
    assert run["usage_prompt_tokens"] == sum(100 + i for i in range(2000))


def _dt(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text)


# --- runs, steps, tool calls, checkpoints, facts, policies, health ----------------------------


async def test_runs_and_the_rest(lite):
    http = lite.http
    r = await http.put("/v1/runs/r1", json={"name": "nightly", "budget_tokens": 1000,
                                            "metadata": {"team": "infra"}, "policy_ref": "p"})
    assert r.status_code == 200
    run = r.json()
    assert run["status"] == "running" and run["metadata"] == {"team": "infra"}
    run2 = (await http.put("/v1/runs/r1", json={"name": "renamed", "policy_ref": "other"})).json()
    assert run2["name"] == "renamed" and run2["policy_ref"] == "p"
    assert run2["created_at"] == run["created_at"]
    assert (await http.get("/v1/runs/r1")).json()["name"] == "renamed"
    await http.put("/v1/runs/r2", json={})
    assert [x["id"] for x in (await http.get("/v1/runs")).json()["items"]] == ["r2", "r1"]
    assert (await http.get("/v1/runs?status=halted")).json() == {"items": []}

    step = await http.put("/v1/runs/r1/steps/0", json={"prompt_tokens": 5, "dollars": 0.1})
    assert step.status_code == 200 and step.json()["index"] == 0
    await http.put("/v1/runs/r1/steps/1", json={"status": "done",
                                                "ended_at": "2026-01-01T00:00:00+02:00"})
    steps = (await http.get("/v1/runs/r1/steps")).json()["items"]
    assert [s["index"] for s in steps] == [0, 1]
    assert steps[1]["ended_at"] == "2025-12-31T22:00:00Z"
    assert (await http.get("/v1/runs/r1")).json()["usage_loops"] == 2

    r = await http.post("/v1/runs/r1/tool-calls", json={"tool": "shell", "side_effect": "fs",
                                                        "arguments": {"cmd": "ls"}})
    assert r.status_code == 201 and r.json()["approval"] is None
    call = r.json()["tool_call"]
    assert call["tool"] == "shell" and call["arguments"] == {"cmd": "ls"}
    error_of(await http.post("/v1/runs/r1/tool-calls", json={"id": call["id"], "tool": "x"}),
             409, "conflict")
    assert [c["id"] for c in (await http.get("/v1/runs/r1/tool-calls")).json()["items"]] == \
        [call["id"]]

    error_of(await http.get("/v1/runs/r1/checkpoints/latest"), 404, "not_found")
    r = await http.post("/v1/runs/r1/checkpoints", json={"name": "cp", "payload": {"pc": 3}})
    assert r.status_code == 201 and r.json()["usage_loops"] == 2
    assert (await http.post("/v1/runs/r1/checkpoints")).status_code == 201  # body optional
    assert len((await http.get("/v1/runs/r1/checkpoints")).json()["items"]) == 2
    assert (await http.get("/v1/runs/r1/checkpoints/latest")).json()["payload"] == {}

    fact = (await http.put("/v1/facts/mem/k1", json={"value": {"seen": [1, 2]}})).json()
    assert fact["value"] == {"seen": [1, 2]}
    assert (await http.get("/v1/facts/mem/k1")).json()["value"] == {"seen": [1, 2]}
    await http.put("/v1/facts/mem/k0", json={"value": None})
    assert [f["key"] for f in (await http.get("/v1/facts/mem")).json()["items"]] == ["k0", "k1"]
    error_of(await http.get("/v1/facts/mem/none"), 404, "not_found")
    error_of(await http.put("/v1/facts/mem/k", json={}), 422, "validation_error")

    policy = (await http.put("/v1/policies/strict", json={
        "tool_allowlist": ["shell"], "approval_rules": [{"side_effect": "net*"}],
        "budget_dollars": 5})).json()
    assert policy["name"] == "strict" and policy["approval_rules"][0]["side_effect"] == "net*"
    assert (await http.get("/v1/policies/strict")).json()["budget_dollars"] == 5
    assert [p["name"] for p in (await http.get("/v1/policies")).json()["items"]] == ["strict"]
    error_of(await http.get("/v1/policies/none"), 404, "not_found")

    health = (await http.get("/v1/health")).json()
    # No Service around this app: no cluster to report (bot.cluster fills these in).
    assert health == {"status": "ok", "version": health["version"], "database": "sqlite",
                      "pending": 0, "leader": None, "instances_alive": 1,
                      "this_instance": None}

    r = await http.post("/v1/runs/r1/cancel")
    assert r.json()["status"] == "halted" and r.json()["halt_reason"] == "cancelled"
    error_of(await http.post("/v1/runs/r1/cancel"), 409, "conflict")
    error_of(await http.post("/v1/runs/ghost/cancel"), 404, "not_found")
    for path, body in (("/v1/runs/r1/steps/2", {}), ("/v1/runs/r1/tool-calls", {"tool": "t"})):
        err = error_of(await http.request("PUT" if "steps" in path else "POST", path,
                                          json=body), 402, "budget_exceeded")
        assert err["details"][0]["halt_reason"] == "cancelled"
    for path in ("/v1/runs/ghost", "/v1/runs/ghost/steps", "/v1/runs/ghost/tool-calls",
                 "/v1/runs/ghost/checkpoints"):
        error_of(await http.get(path), 404, "not_found")
    error_of(await http.put("/v1/runs/ghost/steps/0", json={}), 404, "not_found")
    error_of(await http.put("/v1/runs/r1/steps/-1", json={}), 422, "validation_error")
    error_of(await http.put("/v1/runs/r1/steps/x", json={}), 422, "validation_error")
    error_of(await http.put("/v1/runs/r3", json={"metadata": {"bad key": "v"}}), 422,
             "validation_error")
    error_of(await http.put("/v1/runs/" + "x" * 201, json={}), 422, "validation_error")


async def test_cancelling_a_run_withdraws_and_wakes_its_approvals(lite):
    await lite.http.put("/v1/runs/r1", json={})
    approval = (await lite.http.post("/v1/approvals", json={**APPROVAL, "run_id": "r1"})).json()
    poll = asyncio.create_task(lite.http.get(f"/v1/approvals/{approval['id']}?wait=30"))
    await lite.wait_until(lambda: lite.manager.waiting == 1)
    started = time.monotonic()
    await lite.http.post("/v1/runs/r1/cancel")
    answer = (await poll).json()
    assert time.monotonic() - started < 2
    assert answer["status"] == "cancelled" and answer["reason"] == "run cancelled"


# --- malformed requests ---------------------------------------------------------------------------


async def test_malformed_requests(lite):
    http = lite.http
    assert (await http.post("/v1/approvals", content=b"{nope")).json()["error"]["code"] == \
        "bad_request"
    for raw in (b"{nope", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"a": "\\ud800"}'):
        error_of(await http.post("/v1/approvals", content=raw), 400, "bad_request")
    error_of(await http.put("/v1/runs/r1", content=b"[]"), 400, "bad_request")
    error_of(await http.post("/v1/ledger", content=b"nope"), 400, "bad_request")
    error_of(await http.post("/v1/ledger", content=b"[{]"), 400, "bad_request")
    error_of(await http.post("/v1/ledger", content=b'"x"'), 400, "bad_request")
    big = b'{"agent": "a", "kind": "k", "summary": "' + b"x" * (1024 * 1024) + b'"}'
    err = error_of(await http.post("/v1/approvals", content=big), 413, "payload_too_large")
    assert "1,048,576" in err["message"]
    error_of(await http.get("/v1/nothing"), 404, "not_found")
    error_of(await http.get("/"), 404, "not_found")
    error_of(await http.delete("/v1/approvals"), 405, "method_not_allowed")
    error_of(await http.post("/v1/health"), 405, "method_not_allowed")
    for wait in ("abc", "-1", "300.5", "nan", "inf"):
        error_of(await http.get(f"/v1/approvals/x?wait={wait}"), 422, "validation_error")
    error_of(await http.get("/v1/approvals?status=maybe"), 422, "validation_error")
    error_of(await http.get("/v1/approvals?limit=0"), 422, "validation_error")
    error_of(await http.get("/v1/approvals?limit=1001"), 422, "validation_error")
    error_of(await http.get("/v1/approvals?colour=red"), 422, "validation_error")
    error_of(await http.get("/v1/runs?status=gone"), 422, "validation_error")
    assert (await http.get("/v1/health")).status_code == 200


async def test_an_unexpected_error_is_a_500_without_traceback(lite, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    # Fault injection: no route has a known bug to trigger, so make one fail.
    monkeypatch.setattr(lite.store, "list_policies", broken)
    with caplog.at_level(logging.ERROR, logger="tapgate.api"):
        r = await lite.http.get("/v1/policies")
    err = error_of(r, 500, "internal")
    assert err["details"] == [] and "secret" not in r.text and "Traceback" not in r.text
    assert any(rec.exc_info for rec in caplog.records)  # logged with its traceback
    assert (await lite.http.get("/v1/health")).status_code == 200


# --- long-polls ---------------------------------------------------------------------------------


async def _poll(api: Api, approval_id: str, wait: float = 30):
    return asyncio.create_task(api.http.get(f"/v1/approvals/{approval_id}", params={"wait": wait}))


@pytest.mark.parametrize("decision", ["approved", "denied"])
async def test_long_poll_returns_on_decision(api, decision):
    approval = (await api.http.post("/v1/approvals", json=APPROVAL)).json()
    poll = await _poll(api, approval["id"])
    await api.wait_until(lambda: api.manager.waiting == 1)
    started = time.monotonic()
    await api.manager.resolve(approval["id"], decision, "telegram:1 (@alice)", reason="why")
    answer = (await poll).json()
    assert time.monotonic() - started < 1.0
    assert answer["status"] == decision and answer["decided_by"] == "telegram:1 (@alice)"
    assert api.manager.waiting == 0


async def test_long_poll_returns_on_cancel_and_expiry(api):
    approval = (await api.http.post("/v1/approvals", json=APPROVAL)).json()
    poll = await _poll(api, approval["id"])
    await api.wait_until(lambda: api.manager.waiting == 1)
    await api.http.post(f"/v1/approvals/{approval['id']}/cancel")
    assert (await poll).json()["status"] == "cancelled"

    short = (await api.http.post("/v1/approvals", json={**APPROVAL, "ttl_seconds": 1})).json()
    started = time.monotonic()
    answer = (await api.http.get(f"/v1/approvals/{short['id']}?wait=30")).json()
    assert answer["status"] == "expired" and answer["decided_by"] == "expiry"
    assert time.monotonic() - started < 5


async def test_long_poll_times_out_pending(lite):
    approval = (await lite.http.post("/v1/approvals", json=APPROVAL)).json()
    started = time.monotonic()
    answer = (await lite.http.get(f"/v1/approvals/{approval['id']}?wait=0.3")).json()
    assert answer["status"] == "pending" and time.monotonic() - started >= 0.3
    error_of(await lite.http.get("/v1/approvals/ghost?wait=1"), 404, "not_found")


async def test_client_disconnect_releases_the_waiter(lite, caplog):
    approval = (await lite.http.post("/v1/approvals", json=APPROVAL)).json()
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_unix_connection(str(lite.path))
    writer.write(f"GET /v1/approvals/{approval['id']}?wait=60 HTTP/1.1\r\n"
                 "Host: tapgate\r\n\r\n".encode())
    await writer.drain()
    await lite.wait_until(lambda: lite.manager.waiting == 1)
    writer.close()
    await writer.wait_closed()
    await lite.wait_until(lambda: lite.manager.waiting == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The server still serves, and the request is untouched.
    assert (await lite.http.get(f"/v1/approvals/{approval['id']}")).json()["status"] == "pending"


async def test_stop_answers_open_long_polls(tmp_path, caplog):
    store = Store.from_url(f"sqlite:///{tmp_path / 'api.db'}")
    store.migrate()
    harness = await start_api(store)
    approval = (await harness.http.post("/v1/approvals", json=APPROVAL)).json()
    poll = await _poll(harness, approval["id"], wait=120)
    await harness.wait_until(lambda: harness.manager.waiting == 1)
    started = time.monotonic()
    await harness.server.stop()
    answer = await poll
    assert time.monotonic() - started < 3
    assert answer.status_code == 200 and answer.json()["status"] == "pending"
    assert harness.manager.waiting == 0
    assert not harness.path.exists()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await harness.http.aclose()
    shutil.rmtree(harness.path.parent, ignore_errors=True)
    store.close()


# --- the socket itself ---------------------------------------------------------------------------


async def test_socket_mode_stale_and_live(tmp_path):
    store = Store.from_url(f"sqlite:///{tmp_path / 'api.db'}")
    store.migrate()
    directory = short_dir()
    path = directory / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as after a crash
    manager = ApprovalManager(store, chat_ids=[])
    first = SocketServer(path, [os.getuid()], store, manager, pricer())
    await first.start()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = SocketServer(path, [os.getuid()], store, manager, pricer())
    with pytest.raises(SocketInUse, match="another process is serving on"):
        await second.start()
    async with http_client(path) as http:
        assert (await http.get("/v1/health")).status_code == 200  # the first still serves
    await first.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        await second.start()
    assert path.read_text() == "not a socket"
    shutil.rmtree(directory)
    store.close()


async def test_a_stranger_uid_is_refused(tmp_path, caplog):
    store = Store.from_url(f"sqlite:///{tmp_path / 'api.db'}")
    store.migrate()
    harness = await start_api(store, allowed=[os.getuid() + 1])
    with caplog.at_level(logging.WARNING, logger="tapgate.api"):
        r = await harness.http.post("/v1/approvals", json=APPROVAL)
    error_of(r, 403, "forbidden")
    error_of(await harness.http.get("/v1/nothing"), 403, "forbidden")
    assert any("refused" in rec.getMessage() for rec in caplog.records)
    assert await store.run(store.count_approvals, "pending") == 0
    await stop_api(harness)
    store.close()


# --- the OpenAPI document ------------------------------------------------------------------------


async def test_openapi_describes_every_route(lite):
    doc = (await lite.http.get("/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    registered = {(r.method, r.resource.canonical) for r in lite.server.app.router.routes()}
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert registered == documented
    assert len(registered) == len(ROUTES)
    schemas = doc["components"]["schemas"]
    for name in ("Approval", "ApprovalCreate", "ErrorResponse", "Run", "LedgerEntry",
                 "LedgerEntryCreate", "UsageSummary", "ToolCallResult", "Health"):
        assert name in schemas
    create = doc["paths"]["/v1/approvals"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApprovalCreate"}
    assert set(create["responses"]) >= {"200", "201", "400", "403", "409", "413", "422"}
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}
    wait = doc["paths"]["/v1/approvals/{id}"]["get"]["parameters"]
    assert {p["name"]: p["in"] for p in wait} == {"id": "path", "wait": "query"}
    assert json.dumps(doc).count("#/components/schemas/") > 20


async def test_required_approvals_and_requested_by(api):
    r = await api.http.post("/v1/approvals", json={**APPROVAL, "required_approvals": 2,
                                                   "requested_by": 1001})
    assert r.status_code == 201
    made = r.json()
    assert (made["required_approvals"], made["requested_by"], made["approvals"]) == (2, 1001, [])
    await api.manager.resolve(made["id"], "approved", "telegram:1002 (@bob)")
    got = (await api.http.get(f"/v1/approvals/{made['id']}")).json()
    assert got["status"] == "pending" and [v["by"] for v in got["approvals"]] == [
        "telegram:1002 (@bob)"]
    plain = (await api.http.post("/v1/approvals", json=APPROVAL)).json()
    assert plain["required_approvals"] == 1
    for bad in (0, 11, "two", 1.5):
        error_of(await api.http.post("/v1/approvals", json={**APPROVAL,
                                                            "required_approvals": bad}),
                 422, "validation_error")
    error_of(await api.http.post("/v1/approvals", json={**APPROVAL, "requested_by": -5}), 422,
             "validation_error")
