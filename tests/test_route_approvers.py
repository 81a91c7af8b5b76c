"""Approvers per route: a route may name who decides its requests.

Through the real bot, its socket and the fake Telegram (SQLite and PostgreSQL): every
way of deciding in Telegram — a tap on Approve or Deny, 🔁/♾️, 💬 and ✏️, ``/approve``,
a digest's Approve all — is refused to an allowed user who is not among the route's
approvers, and nothing changes; one of them decides. Once the request escalates,
anyone allowed may decide it. A rule made by someone else does not approve it. Then the
settings, the policy file and the API refuse what could never be decided.
"""

from __future__ import annotations

import json

import httpx
import pytest

from bot.config import ConfigError, load_settings
from storage.rule_records import NewRule
from tests.test_policy_teams import CAROL, ok
from tests.test_telegram import (
    ALICE,
    BOB,
    CHAT_A,
    answer_of,
    edited_to,
    posted,
    served_on_a_socket,
    socket_client,
)

DEPLOYS = -100111  # a group
ESCALATION = -100900
GROUP = "supergroup"
ROUTE = {"agent": "deploy-*", "chats": [DEPLOYS], "approvers": [BOB.id, CAROL.id]}
NOT_YOURS = "Only this route's approvers may decide this request"


async def ask(api: httpx.AsyncClient, **fields) -> dict:
    body = {"agent": "deploy-api", "kind": "shell", "summary": "ship v2", **fields}
    return await ok(await api.post("/v1/approvals", json=body), 201)


async def test_only_the_routes_approvers_decide_its_requests(fake, db_url):
    async with served_on_a_socket(fake, db_url, routes=[ROUTE],
                                  approver_user_ids=[ALICE.id, BOB.id, CAROL.id]) as svc, \
            socket_client(svc) as api:
        made = await ask(api, payload={"command": "ship v2"}, accepts_edits=True,
                         run_id=None)
        assert made["approvers"] == [BOB.id, CAROL.id]
        msg = await posted(fake, DEPLOYS, made["id"])
        for button in ("✅ Approve", "❌ Deny", "♾️ Always", "💬 Deny with reason", "✏️ Edit"):
            tap = fake.tap(DEPLOYS, msg.message_id, ALICE, button_text=button)
            assert NOT_YOURS in await answer_of(fake, tap), button
        fake.send_text(DEPLOYS, ALICE, f"/approve {made['id']}", chat_type=GROUP)
        await fake.wait_for("sendMessage", lambda c: NOT_YOURS in c.params["text"])
        fake.send_text(DEPLOYS, ALICE, f"/deny {made['id']} no", chat_type=GROUP)
        await fake.wait_for("sendMessage", lambda c: NOT_YOURS in c.params["text"]
                            and c.params.get("reply_parameters") is not None)
        current = await ok(await api.get(f"/v1/approvals/{made['id']}"))
        assert (current["status"], current["decided_by"]) == ("pending", None)
        assert (await ok(await api.get("/v1/rules")))["items"] == []
        assert not [c for c in fake.calls_of("sendMessage") if "ForceReply" in str(c.params)
                    or "force_reply" in str(c.params)]

        tap = fake.tap(DEPLOYS, msg.message_id, BOB, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        await edited_to(fake, DEPLOYS, msg.message_id, "Approved by @bob")
        # The API (the operator's tool) is not limited, and a request no route with
        # approvers matches is anyone's.
        other = await ask(api, agent="docs")
        assert other["approvers"] is None
        mine = await posted(fake, CHAT_A, other["id"])
        tap = fake.tap(CHAT_A, mine.message_id, ALICE, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        third = await ask(api, summary="ship v3")
        cancelled = await ok(await api.post(f"/v1/approvals/{third['id']}/cancel"))
        assert cancelled["status"] == "cancelled"


async def test_a_digests_approve_all_counts_only_what_is_yours(fake, db_url):
    async with served_on_a_socket(fake, db_url, routes=[ROUTE], digest_threshold=2,
                                  approver_user_ids=[ALICE.id, BOB.id, CAROL.id]) as svc, \
            socket_client(svc) as api:
        await svc.notifier.stop()  # owed at once, as while it waits on a paced group
        made = [await ask(api, summary=f"ship v{n}") for n in range(4)]
        await svc.notifier.start()
        call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == DEPLOYS
                                   and all(a["id"] in c.params["text"] for a in made))
        digest = fake.message(DEPLOYS, call.response["result"]["message_id"])
        tap = fake.tap(DEPLOYS, digest.message_id, ALICE, button_text="✅ Approve all 4")
        assert "4 not counted" in await answer_of(fake, tap)
        for a in made:
            assert (await ok(await api.get(f"/v1/approvals/{a['id']}")))["status"] == "pending"
        tap = fake.tap(DEPLOYS, digest.message_id, CAROL, button_text="✅ Approve all 4")
        assert "Approved 4" in await answer_of(fake, tap)


async def test_once_it_escalates_anyone_allowed_decides(fake, db_url):
    async with served_on_a_socket(fake, db_url, routes=[ROUTE], escalate_after=1,
                                  escalation_chat_ids=[ESCALATION],
                                  approver_user_ids=[ALICE.id, BOB.id, CAROL.id]) as svc, \
            socket_client(svc) as api:
        made = await ask(api)
        up = await posted(fake, ESCALATION, made["id"])
        tap = fake.tap(ESCALATION, up.message_id, ALICE, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        decided = await ok(await api.get(f"/v1/approvals/{made['id']}"))
        assert decided["decided_by"] == "telegram:1001 (@alice)"


async def test_a_rule_stands_in_only_for_an_approver(fake, db_url):
    async with served_on_a_socket(fake, db_url, routes=[ROUTE],
                                  approver_user_ids=[ALICE.id, BOB.id, CAROL.id]) as svc, \
            socket_client(svc) as api:
        store = svc.store
        rule = NewRule(agent="deploy-api", kind="shell", match="ship *",
                       created_by="telegram:1001 (@alice)")
        await store.run(store.create_rule, rule)
        assert (await ask(api))["status"] == "pending"  # Alice's rule: not hers to decide
        await store.run(store.create_rule, rule.model_copy(
            update={"created_by": "telegram:1002 (@bob)", "match": "ship v3"}))
        assert (await ask(api, summary="ship v3"))["status"] == "approved"
        await store.run(store.create_rule, rule.model_copy(
            update={"created_by": "cli:ops", "match": "ship v4"}))
        assert (await ask(api, summary="ship v4"))["status"] == "approved"


async def test_a_request_its_route_could_never_approve_is_refused(fake, db_url):
    async with served_on_a_socket(fake, db_url, routes=[ROUTE],
                                  approver_user_ids=[ALICE.id, BOB.id, CAROL.id]) as svc, \
            socket_client(svc) as api:
        body = {"agent": "deploy-api", "kind": "shell", "summary": "ship v2"}
        for extra, says in [({"required_approvals": 3}, "only 2 decide it"),
                            ({"required_approvals": 2, "requested_by": BOB.id},
                             "only 1 decide it (the route's approvers, not counting "
                             "requested_by)")]:
            response = await api.post("/v1/approvals", json={**body, **extra})
            assert response.status_code == 422, response.text
            assert says in response.json()["error"]["message"]
        assert (await ok(await api.get("/v1/approvals")))["items"] == []
        two = await ask(api, required_approvals=2)
        assert two["status"] == "pending" and two["required_approvals"] == 2


@pytest.mark.parametrize("routes,says", [
    ([{"chats": [-5], "approvers": [4040]}],
     "route #1: field approvers: 4040 is not in TAPGATE_APPROVER_USER_IDS"),
    ([{"chats": [-5], "approvers": []}], "route #1: field approvers: must be a non-empty list"),
    ([{"chats": [-5], "approvers": [0]}], "route #1: field approvers: 0 is not a Telegram user"),
    ([{"chats": [-5]}, {"chats": [-6], "approvers": [1001]}],
     "route #2: field approvers: 1 approver(s), but requests need 2"),
])
def test_settings_refuse_approvers_that_could_never_decide(clean_env, monkeypatch, routes,
                                                             says):
    monkeypatch.setenv("TAPGATE_APPROVER_USER_IDS", "1001,1002")
    monkeypatch.setenv("TAPGATE_DEFAULT_REQUIRED_APPROVALS", "2")
    monkeypatch.setenv("TAPGATE_ROUTES", json.dumps(routes))
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value).startswith(f"TAPGATE_ROUTES: {says}"), str(info.value)


def test_policy_apply_checks_approvers_against_the_settings(clean_env, monkeypatch, db_url,
                                                            tmp_path, capsys):
    from tests.test_cli import run_cli

    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("TAPGATE_APPROVER_USER_IDS", "1001,1002")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {agent: 'deploy-*', chats: [-5], approvers: [1001, 4040]}\n")
    code, out, err = run_cli(capsys, "policy", "apply", str(bad))
    assert (code, out) == (2, "")
    assert err == (f"{bad}: route #1: field approvers: 4040 is not in "
                   "TAPGATE_APPROVER_USER_IDS (a route's approvers are some of the allowed "
                   "users)\n")
    good = tmp_path / "good.yaml"
    good.write_text("routes:\n  - {agent: 'deploy-*', chats: [-5], approvers: [1002]}\n")
    code, out, err = run_cli(capsys, "policy", "apply", "--json", str(good))
    assert code == 0, err
    assert json.loads(out)["routes"] == [{"agent": "deploy-*", "kind": "*", "chats": [-5],
                                          "approvers": [1002]}]
    code, out, _ = run_cli(capsys, "routes", "--agent", "deploy-api", "--kind", "shell",
                           "--json")
    assert json.loads(out)["route"]["approvers"] == [1002]
