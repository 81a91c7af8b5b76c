"""Teams per policy: a rule's ``required_approvals`` and the policy's ``escalate_after``.

Through the real bot, its socket and the fake Telegram (SQLite and PostgreSQL): a
tool call a two-approver rule gates needs two distinct approvers, and a run's
requests escalate after their policy's delay, not the settings'. Then the policy
files and ``PUT /v1/policies``: the new fields and precise errors for absurd values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bot.governance import approvals_required
from bot.policyfile import load_policies
from storage.errors import InvalidArgument
from storage.records import Policy
from tests.fake_telegram import User
from tests.test_api import error_of, start_api, stop_api
from tests.test_telegram import (
    ALICE,
    BOB,
    CHAT_A,
    CHAT_B,
    answer_of,
    edited_to,
    posted,
    served_on_a_socket,
    socket_client,
)

CAROL = User(1003, "carol", "Carol")
ESCALATION = -100900  # a group: the fake paces it as Telegram does
T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
async def bot(fake, db_url):
    """The bot with its socket; requests escalate after 10 minutes by the settings."""
    async with served_on_a_socket(fake, db_url, approver_user_ids=[ALICE.id, BOB.id, CAROL.id],
                                  escalation_chat_ids=[ESCALATION],
                                  escalate_after="10m") as svc:
        yield svc


async def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


async def tool_call(api: httpx.AsyncClient, run_id: str, tool: str) -> dict:
    return await ok(await api.post(f"/v1/runs/{run_id}/tool-calls", json={"tool": tool}), 201)


async def tool_call_status(api: httpx.AsyncClient, run_id: str, call_id: str) -> str:
    calls = (await ok(await api.get(f"/v1/runs/{run_id}/tool-calls")))["items"]
    return next(c["status"] for c in calls if c["id"] == call_id)


# --- the largest of the matching rules -----------------------------------------------------------


def test_a_call_needs_the_largest_count_of_the_rules_it_matches():
    policy = Policy(name="p", created_at=T0, updated_at=T0, default_safe=True, approval_rules=[
        {"tool": "deploy", "required_approvals": 2},
        {"side_effect": "prod.*", "required_approvals": 3},
        {"tool": "ls"}])
    assert approvals_required(policy, "deploy", "", 1) == 2
    assert approvals_required(policy, "deploy", "prod.db", 1) == 3
    assert approvals_required(policy, "ls", "", 1) == 1  # no count: the default
    assert approvals_required(policy, "ls", "", 4) == 4
    # A rule's own count stands even below the default; a default_safe match adds the default.
    assert approvals_required(policy, "deploy", "", 4) == 2
    assert approvals_required(policy, "deploy", "net.write", 4) == 4
    assert approvals_required(policy, "rm", "fs.delete", 1) == 1


# --- through the bot -----------------------------------------------------------------------------


async def test_a_two_approver_rule_needs_two_people_before_the_call_runs(fake, bot):
    async with socket_client(bot) as api:
        await ok(await api.put("/v1/policies/prod", json={"approval_rules": [
            {"tool": "deploy", "required_approvals": 2}, {"tool": "restart"}]}))
        await ok(await api.put("/v1/runs/r1", json={"policy_ref": "prod"}))
        light = await tool_call(api, "r1", "restart")
        assert light["approval"]["required_approvals"] == 1  # the settings' default
        made = await tool_call(api, "r1", "deploy")
        approval, call_id = made["approval"], made["tool_call"]["id"]
        assert approval["required_approvals"] == 2
        msg_a = await posted(fake, CHAT_A, approval["id"])
        msg_b = await posted(fake, CHAT_B, approval["id"])
        assert "✅ 0 of 2" in msg_a.text

        first = fake.tap(CHAT_A, msg_a.message_id, ALICE, button_text="✅ Approve")
        assert "1 of 2" in await answer_of(fake, first)
        for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
            await fake.wait_until(lambda c=chat, m=msg: "✅ 1 of 2: @alice" in
                                  fake.message(c, m.message_id).text, what="progress")
        again = fake.tap(CHAT_B, msg_b.message_id, ALICE, button_text="✅ Approve")
        assert "already approved" in await answer_of(fake, again)
        assert await tool_call_status(api, "r1", call_id) == "pending_approval"

        second = fake.tap(CHAT_B, msg_b.message_id, BOB, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, second)
        for chat, msg in ((CHAT_A, msg_a), (CHAT_B, msg_b)):
            await edited_to(fake, chat, msg.message_id, "Approved by @alice, @bob")
        await bot.governance.drain()  # the call settles in a task once the decision commits
        assert await tool_call_status(api, "r1", call_id) == "approved"
        decided = await ok(await api.get(f"/v1/approvals/{approval['id']}"))
        assert [v["by"] for v in decided["approvals"]] == ["telegram:1001 (@alice)",
                                                           "telegram:1002 (@bob)"]


async def test_an_agent_may_ask_for_more_approvers_never_fewer(fake, db_url):
    """``required_approvals`` in ``POST /v1/approvals`` is raised to the settings' default
    and to the run's policy rule for that kind: an agent cannot skip the second person."""
    async with served_on_a_socket(fake, db_url, approver_user_ids=[ALICE.id, BOB.id, CAROL.id],
                                  default_required_approvals=2) as svc, \
            socket_client(svc) as api:
        await ok(await api.put("/v1/policies/prod", json={"approval_rules": [
            {"tool": "deploy", "required_approvals": 3}, {"tool": "Bash"},
            {"tool": "lint", "required_approvals": 1}]}))
        await ok(await api.put("/v1/runs/r1", json={"policy_ref": "prod"}))
        request = {"agent": "builder", "kind": "shell", "summary": "make release"}

        async def needs(**fields) -> tuple[str, int]:
            made = await ok(await api.post("/v1/approvals", json={**request, **fields}), 201)
            return made["id"], made["required_approvals"]

        lowered, count = await needs(required_approvals=1)
        assert count == 2
        assert (await needs())[1] == 2
        assert (await needs(required_approvals=3))[1] == 3
        assert (await needs(run_id="r1", kind="deploy", required_approvals=1))[1] == 3
        assert (await needs(run_id="r1", kind="deploy", required_approvals=4))[1] == 4
        # A rule without a count, and another kind in the same run: the settings' floor.
        assert (await needs(run_id="r1", kind="Bash", required_approvals=1))[1] == 2
        assert (await needs(run_id="r1", required_approvals=1))[1] == 2
        # The operator's rule may set fewer than the default (as for tool calls).
        assert (await needs(run_id="r1", kind="lint"))[1] == 1
        assert (await needs(run_id="r1", kind="lint", required_approvals=2))[1] == 2

        msg = await posted(fake, CHAT_A, lowered)
        tap = fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        assert "1 of 2" in await answer_of(fake, tap)
        assert (await ok(await api.get(f"/v1/approvals/{lowered}")))["status"] == "pending"


async def test_a_runs_requests_escalate_after_their_policys_delay(fake, bot):
    async with socket_client(bot) as api:
        await ok(await api.put("/v1/policies/urgent", json={
            "approval_rules": [{"tool": "deploy"}], "escalate_after": "1s"}))
        await ok(await api.put("/v1/policies/calm", json={"approval_rules": [{"tool": "deploy"}]}))
        await ok(await api.put("/v1/runs/fast", json={"policy_ref": "urgent"}))
        await ok(await api.put("/v1/runs/slow", json={"policy_ref": "calm"}))
        request = {"agent": "builder", "kind": "shell", "summary": "make release"}
        # Created first, so each would be due no later than the fast ones if it had their
        # delay: the settings' 10 minutes apply (no run; a policy without a delay).
        plain = await ok(await api.post("/v1/approvals", json=request), 201)
        slow = [await ok(await api.post("/v1/approvals", json={**request, "run_id": "slow"}),
                         201),
                (await tool_call(api, "slow", "deploy"))["approval"]]
        made = await tool_call(api, "fast", "deploy")
        fast = [made["approval"],
                await ok(await api.post("/v1/approvals", json={**request, "run_id": "fast"}),
                         201)]

        ups = {a["id"]: await posted(fake, ESCALATION, a["id"]) for a in fast}
        for a in fast:
            original = await posted(fake, CHAT_A, a["id"])
            await fake.wait_until(lambda m=original: "⏫ escalated" in
                                  fake.message(CHAT_A, m.message_id).text,
                                  what="the original copy says it escalated")
            got = await ok(await api.get(f"/v1/approvals/{a['id']}"))
            waited = (datetime.fromisoformat(got["escalated_at"])
                      - datetime.fromisoformat(got["created_at"])).total_seconds()
            assert 1 <= waited < 10, waited
        for a in [plain, *slow]:
            assert (await ok(await api.get(f"/v1/approvals/{a['id']}")))["escalated_at"] is None

        tap = fake.tap(ESCALATION, ups[fast[0]["id"]].message_id, CAROL, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        for chat in (CHAT_A, CHAT_B, ESCALATION):
            msg = await posted(fake, chat, fast[0]["id"])
            await edited_to(fake, chat, msg.message_id, "Approved by @carol")
        await bot.governance.drain()
        assert await tool_call_status(api, "fast", made["tool_call"]["id"]) == "approved"
    sends = [c for c in fake.calls_of("sendMessage") if c.ok
             and int(c.params["chat_id"]) == ESCALATION]
    posts = {a["id"]: sum(a["id"] in c.params["text"] for c in sends)
             for a in [plain, *slow, *fast]}
    assert posts == {**{a["id"]: 0 for a in [plain, *slow]}, **{a["id"]: 1 for a in fast}}


# --- policy files -----------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_policy_files_carry_counts_and_delays(tmp_path):
    yaml_file = write(tmp_path, "p.yaml", """
prod:
  approval_rules:
    - tool: deploy
      required_approvals: 2
    - side_effect: "fs.delete*"
  escalate_after: 15m
dev:
  approval_rules: [{tool: deploy}]
""")
    prod, dev = load_policies(yaml_file)
    assert [r.required_approvals for r in prod.approval_rules] == [2, None]
    assert (prod.escalate_after, dev.escalate_after) == (900.0, 0.0)
    toml_file = write(tmp_path, "p.toml", """
[[policies]]
name = "prod"
escalate_after = 90
approval_rules = [{ tool = "deploy", required_approvals = 3 }]
""")
    (prod,) = load_policies(toml_file)
    assert prod.escalate_after == 90.0 and prod.approval_rules[0].required_approvals == 3


@pytest.mark.parametrize("body,field,message", [
    ("approval_rules: [{tool: deploy, required_approvals: 0}]",
     "approval_rules.0.required_approvals", "greater than or equal to 1"),
    ("approval_rules: [{tool: deploy, required_approvals: 11}]",
     "approval_rules.0.required_approvals", "less than or equal to 10"),
    ("escalate_after: 15x", "escalate_after", "invalid duration '15x'"),
    ("escalate_after: -5", "escalate_after", "between 1s and 30d"),
    ("escalate_after: 31d", "escalate_after", "between 1s and 30d"),
    ("escalate_after: 0.5", "escalate_after", "between 1s and 30d"),
    ("escalate_after: .inf", "escalate_after", "finite number"),
])
def test_policy_file_errors_name_the_file_bundle_and_field(tmp_path, body, field, message):
    path = write(tmp_path, "bad.yaml", f"prod:\n  {body}\n")
    with pytest.raises(InvalidArgument) as caught:
        load_policies(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: bundle 'prod': field {field}: "), text
    assert message in text, text


# --- PUT /v1/policies -------------------------------------------------------------------------------


async def test_the_api_stores_counts_and_delays_and_refuses_absurd_ones(store):
    api = await start_api(store)
    try:
        put = await ok(await api.http.put("/v1/policies/prod", json={
            "approval_rules": [{"tool": "deploy", "required_approvals": 2}],
            "escalate_after": "15m"}))
        assert put["escalate_after"] == 900
        assert put["approval_rules"][0]["required_approvals"] == 2
        got = await ok(await api.http.get("/v1/policies/prod"))
        assert (got["escalate_after"], got["approval_rules"]) == (900, put["approval_rules"])
        seconds = await ok(await api.http.put("/v1/policies/prod", json={"escalate_after": 30}))
        assert seconds["escalate_after"] == 30 and seconds["approval_rules"] == []
        for body, loc in [
            ({"approval_rules": [{"tool": "deploy", "required_approvals": 0}]},
             ["body", "approval_rules", 0, "required_approvals"]),
            ({"approval_rules": [{"tool": "deploy", "required_approvals": 11}]},
             ["body", "approval_rules", 0, "required_approvals"]),
            ({"escalate_after": -1}, ["body", "escalate_after"]),
            ({"escalate_after": 10**9}, ["body", "escalate_after"]),
            ({"escalate_after": "soon"}, ["body", "escalate_after"]),
            ({"escalate_after": True}, ["body", "escalate_after"]),
        ]:
            error = error_of(await api.http.put("/v1/policies/prod", json=body), 422,
                             "validation_error")
            assert [d["loc"] for d in error["details"]] == [loc], (body, error)
            assert ".".join(map(str, loc)) in error["message"], error
        # A run_id that names no run is still a 404, looked up or not.
        error_of(await api.http.post("/v1/approvals", json={
            "agent": "a", "kind": "shell", "summary": "s", "run_id": "nope"}), 404, "not_found")
    finally:
        await stop_api(api)
