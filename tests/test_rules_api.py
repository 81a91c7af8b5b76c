"""Issue 10 over the socket: rules (``/v1/rules``), ``POST /v1/runs/{id}/complete``,
``accepts_edits`` and ``edited_payload`` on approvals — through a real Unix socket, on
SQLite and PostgreSQL; the roles through the real ``tapgate run`` as another uid; and
the agents' client (sync and async)."""

from __future__ import annotations

import asyncio
import os

import pytest

from bot.client import AsyncTapgateClient, ClientError, TapgateClient
from tests.botproc import BotProcess
from tests.test_api import api, error_of, lite  # noqa: F401  (the fixtures)
from tests.test_socket_roles import AGENT_UID, admin, as_uid

SHELL = {"agent": "claude-code", "kind": "Bash", "summary": "git status"}
UID = os.getuid()


async def post(harness, path: str, body=None):
    return await harness.http.post(path, json=body)


# --- rules: create, match, list, revoke (both backends) --------------------------------------


async def test_a_rule_approves_matching_requests_at_submit(api):  # noqa: F811
    made = await post(api, "/v1/rules", {"agent": "claude-code", "kind": "Bash",
                                         "match": "git status*"})
    assert made.status_code == 201, made.text
    rule = made.json()
    assert rule["match"] == "git status*" and rule["run_id"] is None
    assert rule["created_by"] == f"socket:uid{UID}" and rule["uses"] == 0
    assert rule["expires_at"] is None and rule["revoked_at"] is None

    hit = await post(api, "/v1/approvals", {**SHELL, "summary": "git status -s"})
    assert hit.status_code == 201
    approved = hit.json()
    assert approved["status"] == "approved"
    assert approved["decided_by"].startswith(f"rule:{rule['id']}")
    assert approved["decided_at"] is not None
    # Another agent, kind or summary is asked as usual.
    for other in ({**SHELL, "agent": "codex"}, {**SHELL, "kind": "shell"},
                  {**SHELL, "summary": "git push"}):
        miss = await post(api, "/v1/approvals", other)
        assert miss.status_code == 201 and miss.json()["status"] == "pending", other
    # A summary with shell control characters never matches a wildcard rule.
    chained = await post(api, "/v1/approvals", {**SHELL, "summary": "git status && rm -rf ~"})
    assert chained.json()["status"] == "pending"

    listed = (await api.http.get("/v1/rules")).json()["items"]
    assert [(r["id"], r["uses"]) for r in listed] == [(rule["id"], 1)]
    assert listed[0]["last_used_at"] is not None

    revoked = await post(api, f"/v1/rules/{rule['id']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert revoked.json()["revoked_by"] == f"socket:uid{UID}"
    error = error_of(await post(api, f"/v1/rules/{rule['id']}/revoke"), 409, "conflict")
    assert str(rule["id"]) in error["message"]
    assert (await api.http.get("/v1/rules")).json()["items"] == []
    everything = (await api.http.get("/v1/rules", params={"all": "true"})).json()["items"]
    assert [r["id"] for r in everything] == [rule["id"]]
    # Revoked: the same request is asked again.
    again = await post(api, "/v1/approvals", {**SHELL, "summary": "git status -s"})
    assert again.json()["status"] == "pending"


async def test_session_rules_end_with_their_run(api):  # noqa: F811
    assert (await api.http.put("/v1/runs/sess-1", json={"name": "s"})).status_code == 200
    made = await post(api, "/v1/rules", {**{k: SHELL[k] for k in ("agent", "kind")},
                                         "match": "ls", "run_id": "sess-1",
                                         "ttl_seconds": 8 * 3600})
    assert made.status_code == 201
    rule = made.json()
    assert rule["run_id"] == "sess-1" and rule["expires_at"] is not None

    inside = await post(api, "/v1/approvals", {**SHELL, "summary": "ls", "run_id": "sess-1"})
    outside = await post(api, "/v1/approvals", {**SHELL, "summary": "ls"})
    assert inside.json()["status"] == "approved" and outside.json()["status"] == "pending"

    done = await post(api, "/v1/runs/sess-1/complete")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert (await api.http.get("/v1/rules")).json()["items"] == []
    ended = (await api.http.get("/v1/rules?all=1")).json()["items"][0]
    assert ended["revoked_at"] is not None
    error_of(await post(api, "/v1/runs/sess-1/complete"), 409, "conflict")
    late = error_of(await post(api, "/v1/rules", {"agent": "a", "kind": "Bash", "match": "ls",
                                                  "run_id": "sess-1"}), 409, "conflict")
    assert "completed" in late["message"]
    error_of(await post(api, "/v1/runs/ghost/complete"), 404, "not_found")
    error_of(await post(api, f"/v1/rules/{rule['id']}/revoke"), 409, "conflict")


async def test_rule_bodies_are_strict(lite):  # noqa: F811
    good = {"agent": "claude-code", "kind": "Bash", "match": "git *"}
    cases = [
        ({**good, "extra": 1}, ["body", "extra"]),
        ({**good, "match": ""}, ["body", "match"]),
        ({**good, "match": "x" * 501}, ["body", "match"]),
        ({**good, "match": "a\x00b"}, ["body", "match"]),
        ({**good, "agent": ""}, ["body", "agent"]),
        ({**good, "ttl_seconds": 0}, ["body", "ttl_seconds"]),
        ({**good, "ttl_seconds": 367 * 86400}, ["body", "ttl_seconds"]),
        ({k: v for k, v in good.items() if k != "match"}, ["body", "match"]),
    ]
    for body, loc in cases:
        error = error_of(await post(lite, "/v1/rules", body), 422, "validation_error")
        assert error["details"][0]["loc"] == loc, (body, error)
    reserved = error_of(await post(lite, "/v1/rules", {**good, "kind": "budget.grant"}),
                        422, "validation_error")
    assert "budget.grant" in reserved["message"]
    error_of(await post(lite, "/v1/rules", {**good, "run_id": "ghost"}), 404, "not_found")
    error_of(await lite.http.post("/v1/rules", content=b"[1]"), 400, "bad_request")
    error_of(await lite.http.get("/v1/rules", params={"all": "perhaps"}), 422,
             "validation_error")
    error_of(await lite.http.get("/v1/rules", params={"live": "1"}), 422, "validation_error")
    for bad in ("abc", "0", "-1", str(2**63)):
        error = error_of(await post(lite, f"/v1/rules/{bad}/revoke"), 422, "validation_error")
        assert error["details"][0]["loc"] == ["path", "rule_id"]
    error_of(await post(lite, "/v1/rules/999/revoke"), 404, "not_found")
    assert (await lite.http.get("/v1/rules?all=true")).json()["items"] == []


async def test_an_expired_rule_approves_nothing(lite):  # noqa: F811
    rule = (await post(lite, "/v1/rules", {**{k: SHELL[k] for k in ("agent", "kind")},
                                           "match": "make", "ttl_seconds": 1})).json()
    await asyncio.sleep(1.1)
    assert (await post(lite, "/v1/approvals", {**SHELL, "summary": "make"})).json()[
        "status"] == "pending"
    assert (await lite.http.get("/v1/rules")).json()["items"] == []
    error_of(await post(lite, f"/v1/rules/{rule['id']}/revoke"), 409, "conflict")


# --- edits: accepts_edits in, edited_payload out (both backends) ------------------------------


async def test_accepts_edits_and_edited_payload(api):  # noqa: F811
    payload = {"tool_input": {"command": "rm -rf build/", "description": "clean"}}
    plain = (await post(api, "/v1/approvals", {**SHELL, "payload": payload})).json()
    assert plain["accepts_edits"] is False and plain["edited_payload"] is None
    made = await post(api, "/v1/approvals", {**SHELL, "summary": "rm -rf build/",
                                             "payload": payload, "accepts_edits": True})
    assert made.status_code == 201
    approval = made.json()
    assert approval["accepts_edits"] is True and approval["edited_payload"] is None

    edited = {"tool_input": {"command": "rm -rf build/tmp", "description": "clean"}}
    waiter = asyncio.ensure_future(api.http.get(f"/v1/approvals/{approval['id']}",
                                                params={"wait": 10}))
    await asyncio.sleep(0.05)
    await api.manager.resolve(approval["id"], "approved", "telegram:1 (@alice)",
                              edited_payload=edited)
    decided = (await waiter).json()
    assert decided["status"] == "approved" and decided["edited_payload"] == edited
    assert decided["payload"] == payload  # the original stays as it was
    error = error_of(await post(api, "/v1/approvals", {**SHELL, "accepts_edits": "maybe"}),
                     422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "accepts_edits"]


async def test_openapi_documents_the_rules(lite):  # noqa: F811
    doc = (await lite.http.get("/v1/openapi.json")).json()
    assert {"get", "post"} <= set(doc["paths"]["/v1/rules"])
    assert "post" in doc["paths"]["/v1/rules/{rule_id}/revoke"]
    assert "post" in doc["paths"]["/v1/runs/{id}/complete"]
    assert "201" in doc["paths"]["/v1/rules"]["post"]["responses"]
    schemas = doc["components"]["schemas"]
    assert {"Rule", "RuleCreate"} <= set(schemas)
    assert "accepts_edits" in schemas["ApprovalCreate"]["properties"]
    assert "edited_payload" in schemas["Approval"]["properties"]


# --- roles, through the real process as another uid --------------------------------------------


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
async def test_rules_are_for_admins_and_runs_for_their_owners(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url, socket_allowed_uids=AGENT_UID) as bot:
        sock = str(bot.socket_path)
        os.chmod(bot.socket_path.parent, 0o755)
        rule = admin(sock, "POST", "/v1/rules", {"agent": "a", "kind": "Bash",
                                                 "match": "ls"}).json()
        assert admin(sock, "PUT", "/v1/runs/ops-run", {"name": "ops"}).status_code == 200
        results = as_uid(AGENT_UID, sock, [
            ("GET", "/v1/rules", None),
            ("GET", "/v1/rules?all=true", None),
            ("POST", "/v1/rules", {"agent": "a", "kind": "Bash", "match": "*"}),
            ("POST", f"/v1/rules/{rule['id']}/revoke", None),
            ("POST", "/v1/runs/ops-run/complete", None),
            ("PUT", "/v1/runs/mine", {"name": "agent's"}),
            ("POST", "/v1/runs/mine/complete", None),
            ("POST", "/v1/approvals", {"agent": "a", "kind": "Bash", "summary": "ls"}),
        ])
        assert [status for status, _ in results] == [403, 403, 403, 403, 403, 200, 200, 201]
        messages = [body["error"]["message"] for status, body in results if status == 403]
        assert "listing rules needs an admin uid" in messages[0]
        assert "creating a rule needs an admin uid" in messages[2]
        assert f"revoking rule {rule['id']} needs an admin uid" in messages[3]
        assert "did not create" in messages[4]
        assert results[6][1]["status"] == "completed"
        # An agent's request is approved by an admin's rule, like any other.
        assert results[7][1]["status"] == "approved"
        # Nothing the agent was refused happened.
        live = admin(sock, "GET", "/v1/rules").json()["items"]
        assert [(r["id"], r["revoked_at"], r["uses"]) for r in live] == [(rule["id"], None, 1)]
        assert admin(sock, "GET", "/v1/runs/ops-run").json()["status"] == "running"
        assert admin(sock, "POST", "/v1/runs/ops-run/complete").status_code == 200
        assert admin(sock, "POST", f"/v1/rules/{rule['id']}/revoke").status_code == 200


# --- the agents' client ----------------------------------------------------------------------


async def test_sync_client_rules_runs_and_edits(lite):  # noqa: F811
    def session() -> dict:
        out = {}
        with TapgateClient(lite.path) as tg:
            tg.put_run("s1", name="session")
            rule = tg.add_rule("bot", "shell", "make *", run_id="s1", ttl_seconds=3600)
            out["rule"] = rule
            out["hit"] = tg.request_approval("bot", "shell", "make test", run_id="s1")
            out["listed"] = tg.list_rules()
            out["revoked"] = tg.revoke_rule(rule.id)
            with pytest.raises(ClientError) as again:
                tg.revoke_rule(rule.id)
            out["again"] = again.value
            out["all"] = tg.list_rules(all=True)
            out["live"] = tg.list_rules()
            out["edits"] = tg.request_approval("bot", "shell", "rm x", payload="rm x",
                                               accepts_edits=True)
            out["completed"] = tg.complete_run("s1")
        return out

    out = await asyncio.get_running_loop().run_in_executor(None, session)
    rule = out["rule"]
    assert rule.run_id == "s1" and rule.expires_at is not None and rule.match == "make *"
    assert out["hit"].status == "approved" and out["hit"].decided_by.startswith(
        f"rule:{rule.id}")
    assert [(r.id, r.uses) for r in out["listed"]] == [(rule.id, 1)]
    assert out["revoked"].revoked_at is not None
    assert out["again"].status == 409 and out["again"].code == "conflict"
    assert [r.id for r in out["all"]] == [rule.id] and out["live"] == []
    assert out["edits"].accepts_edits is True and out["edits"].edited_payload is None
    assert out["completed"].status == "completed"


async def test_async_client_rules_runs_and_edits(lite):  # noqa: F811
    async with AsyncTapgateClient(lite.path) as tg:
        await tg.put_run("s2")
        rule = await tg.add_rule("bot", "deploy", "deploy staging")
        hit = await tg.request_approval("bot", "deploy", "deploy staging")
        assert hit.status == "approved" and hit.decided_by.startswith(f"rule:{rule.id}")
        assert [r.uses for r in await tg.list_rules()] == [1]
        asked = await tg.request_approval("bot", "deploy", "deploy prod",
                                          payload={"command": "deploy prod"},
                                          accepts_edits=True)
        await lite.manager.resolve(asked.id, "approved", "telegram:1 (@alice)",
                                   edited_payload={"command": "deploy staging"})
        decided = await tg.wait_for_decision(asked, timeout=5)
        assert decided.edited_payload == {"command": "deploy staging"}
        assert decided.payload == {"command": "deploy prod"}
        assert (await tg.revoke_rule(rule.id)).revoked_by == f"socket:uid{UID}"
        assert await tg.list_rules() == [] and len(await tg.list_rules(all=True)) == 1
        assert (await tg.complete_run("s2")).status == "completed"
        with pytest.raises(ClientError) as refused:
            await tg.add_rule("bot", "budget.grant", "*")
        assert refused.value.status == 422
