"""The agents are the governed party: socket roles, reserved kinds, the socket's mode,
attacked through the real ``tapgate run`` process."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat

import httpx
import pytest

from tests.botproc import BotProcess

AGENT_UID = 65534  # nobody: an agent uid that is not the bot's


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("tapgate", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def as_uid(uid: int, socket_path: str, calls: list[tuple[str, str, object]]) -> list:
    """Make ``calls`` (method, path, body) over the socket from a child process running
    as ``uid``; return ``[(status, json body)]`` (status 0 and the error if it fails)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the standard library from here on
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            results = []
            for method, path, body in calls:
                try:
                    conn = _UnixHTTP(socket_path)
                    data = None if body is None else json.dumps(body)
                    conn.request(method, path, body=data,
                                 headers={"content-type": "application/json"})
                    response = conn.getresponse()
                    results.append([response.status, json.loads(response.read() or b"null")])
                    conn.close()
                except OSError as exc:
                    results.append([0, str(exc)])
            os.write(write, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return [tuple(r) for r in json.loads(b"".join(chunks))]


def admin(socket_path, method: str, path: str, body=None) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                      base_url="http://tapgate", timeout=10) as client:
        return client.request(method, path, json=body)


@pytest.mark.parametrize("field,value", [("kind", "budget.grant"), ("kind", "tool_call"),
                                         ("agent", "tapgate"), ("agent", "Tapgate ")])
async def test_the_bots_own_kinds_and_name_are_reserved(fake, sqlite_url, field, value):
    async with BotProcess(fake, sqlite_url) as bot:
        body = {"agent": "builder", "kind": "shell", "summary": "Grant +50% budget?",
                "payload": {"run_id": "r1", "grant": {"budget_dollars": 0}}, field: value}
        response = admin(bot.socket_path, "POST", "/v1/approvals", body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error" and repr(value) in error["message"]
        assert error["details"][0]["loc"] == ["body", field]
        assert admin(bot.socket_path, "GET", "/v1/approvals").json()["items"] == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
async def test_agents_cannot_widen_their_limits_or_touch_others_work(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url, socket_allowed_uids=AGENT_UID,
                          default_budget_dollars=5) as bot:
        sock = str(bot.socket_path)
        os.chmod(bot.socket_path.parent, 0o755)  # the agents' uid must reach the socket
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
        mine = admin(sock, "POST", "/v1/approvals",
                     {"agent": "ops", "kind": "deploy", "summary": "admin's"}).json()
        assert admin(sock, "PUT", "/v1/runs/ops-run", {"name": "ops"}).status_code == 200
        results = as_uid(AGENT_UID, sock, [
            ("POST", "/v1/approvals", {"agent": "bot", "kind": "shell", "summary": "ls"}),
            ("PUT", "/v1/policies/lax", {"budget_dollars": 0}),
            ("PUT", "/v1/runs/a1", {"name": "agent run", "budget_dollars": 1}),
            ("PUT", "/v1/runs/a1", {"name": "agent run", "budget_dollars": 100}),
            ("PUT", "/v1/runs/a2", {"budget_dollars": 0}),
            ("PUT", "/v1/runs/ops-run", {"budget_dollars": 1000}),
            ("POST", "/v1/runs/ops-run/cancel", None),
            ("POST", f"/v1/approvals/{mine['id']}/cancel", None),
            ("POST", "/v1/ledger", {"run_id": "a1", "model": "gpt-4o", "dollars": 0.5}),
            ("GET", "/v1/runs/a1", None),
        ])
        statuses = [status for status, _ in results]
        assert statuses == [201, 403, 200, 403, 403, 403, 403, 403, 201, 200], results
        submitted = results[0][1]
        assert submitted["submitter_uid"] == AGENT_UID
        messages = [body["error"]["message"] for status, body in results if status == 403]
        assert "writing policy 'lax' needs an admin uid" in messages[0]
        assert "budget_dollars" in messages[1] and "looser" in messages[2]
        assert "budget_dollars" in messages[3] and "did not create" in messages[4]
        assert "did not submit" in messages[5]
        assert results[9][1]["budget_dollars"] == 1 and results[9][1]["owner_uid"] == AGENT_UID
        # What the agent may do with its own work: cancel its request and its run.
        own = as_uid(AGENT_UID, sock, [
            ("POST", f"/v1/approvals/{submitted['id']}/cancel", None),
            ("POST", "/v1/runs/a1/cancel", None)])
        assert [status for status, _ in own] == [200, 200]
        # Nothing the agent was refused happened.
        assert admin(sock, "GET", "/v1/policies").json()["items"] == []
        assert admin(sock, "GET", "/v1/runs/ops-run").json()["budget_dollars"] == 5
        assert admin(sock, "GET", f"/v1/approvals/{mine['id']}").json()["status"] == "pending"
        # The admin (the bot's own uid) may do all of it.
        assert admin(sock, "PUT", "/v1/policies/lax", {"budget_dollars": 0}).status_code == 200
        widened = admin(sock, "PUT", "/v1/runs/ops-run", {"budget_dollars": 1000})
        assert widened.json()["budget_dollars"] == 1000
        assert admin(sock, "POST", f"/v1/approvals/{mine['id']}/cancel").status_code == 200


async def test_the_socket_is_private_when_only_the_bot_may_connect(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url) as bot:
        assert stat.S_IMODE(os.stat(bot.socket_path).st_mode) == 0o600


async def test_an_agent_cannot_claim_the_bots_idempotency_keys(fake, sqlite_url):
    """Keys are scoped to the caller: pre-claiming the key of the bot's next budget
    alert (or another agent's) neither blocks nor answers it."""
    from tests.test_telegram import CHAT_A, posted

    async with BotProcess(fake, sqlite_url) as bot:
        sock = bot.socket_path
        for key in ("tapgate:budget-alert:1", "budget-alert:1", "tapgate:budget-alert:2"):
            claimed = admin(sock, "POST", "/v1/approvals", {
                "agent": "sly", "kind": "shell", "summary": "claim", "idempotency_key": key})
            assert claimed.status_code == 201
        assert admin(sock, "PUT", "/v1/runs/r1", {"budget_dollars": 1}).status_code == 200
        spent = admin(sock, "POST", "/v1/ledger", {"run_id": "r1", "model": "m", "dollars": 0.9})
        assert spent.status_code == 201
        alert = await fake.wait_for("sendMessage", lambda c: "Budget alert" in c.params["text"],
                                    timeout=30)
        items = admin(sock, "GET", "/v1/approvals?status=pending").json()["items"]
        grant = next(a for a in items if a["kind"] == "budget.grant")
        assert grant["agent"] == "tapgate" and grant["run_id"] == "r1"
        assert grant["id"] in alert.params["text"]
        await posted(fake, CHAT_A, grant["id"])
        again = admin(sock, "POST", "/v1/approvals", {
            "agent": "sly", "kind": "shell", "summary": "claim",
            "idempotency_key": "tapgate:budget-alert:1"})
        assert again.status_code == 200  # the caller's own key still works for itself


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
async def test_an_agent_of_another_uid_cannot_take_a_rule_made_for_this_one(fake, sqlite_url):
    """♾️ Always approves the same agent's requests from the uid that asked, not from an
    agent of another uid claiming that agent's name. A rule made with the CLI or the
    socket API (no uid) still covers every uid."""
    from tests.fake_telegram import User
    from tests.test_telegram import answer_of, posted

    alice = User(1001, "alice", "Alice")
    async with BotProcess(fake, sqlite_url, socket_allowed_uids=AGENT_UID) as bot:
        sock = str(bot.socket_path)
        os.chmod(bot.socket_path.parent, 0o755)
        ask = {"agent": "claude-code", "kind": "deploy", "summary": "ship v2"}
        first = admin(sock, "POST", "/v1/approvals", ask).json()
        msg = await posted(fake, 1001, first["id"])
        tap = fake.tap(1001, msg.message_id, alice, button_text="♾️ Always")
        assert "♾️ Rule #" in await answer_of(fake, tap)
        [rule] = admin(sock, "GET", "/v1/rules").json()["items"]
        assert rule["submitter_uid"] == os.getuid()

        [(status, claimed)] = as_uid(AGENT_UID, sock, [("POST", "/v1/approvals", ask)])
        assert (status, claimed["status"], claimed["decided_by"]) == (201, "pending", None)
        again = admin(sock, "POST", "/v1/approvals", ask).json()
        assert again["status"] == "approved" and again["decided_by"].startswith(
            f"rule:{rule['id']}")

        made = admin(sock, "POST", "/v1/rules", {"agent": "claude-code", "kind": "deploy",
                                                  "match": "ship v3"}).json()
        assert made["submitter_uid"] is None
        [(status, covered)] = as_uid(AGENT_UID, sock, [
            ("POST", "/v1/approvals", {**ask, "summary": "ship v3"})])
        assert (status, covered["status"]) == (201, "approved")
        assert covered["decided_by"].startswith(f"rule:{made['id']}")
