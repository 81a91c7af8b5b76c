"""``tapgate hook claude-code|codex|gemini``: the real command, fed each agent's documented
stdin, against a running ``tapgate run`` and the fake Telegram.

Each agent's answer is checked against its contract: Claude Code's ``hookSpecificOutput``
(PreToolUse and PermissionRequest), Codex's PermissionRequest output (a JSON schema that
refuses unknown keys at every level, written here from Codex's published one) and Gemini
CLI's BeforeTool ``{decision, reason}``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bot.client import AsyncTapgateClient
from tests.botproc import BotProcess
from tests.test_api import lite  # noqa: F401  (the fixture: the API in the test's loop)
from tests.test_telegram import ALICE, BOB, CHAT_A, CHAT_B, answer_of

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ("claude-code", "codex", "gemini")
_serial = itertools.count(1)

# Codex's permission-request.command.output schema, restated: every level refuses
# unknown keys; "ask" is the absence of a decision.
CODEX_OUTPUT = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "continue": {"type": "boolean"}, "stopReason": {"type": "string"},
        "suppressOutput": {"type": "boolean"}, "systemMessage": {"type": "string"},
        "hookSpecificOutput": {
            "type": "object", "additionalProperties": False, "required": ["hookEventName"],
            "properties": {
                "hookEventName": {"const": "PermissionRequest"},
                "decision": {
                    "type": "object", "additionalProperties": False, "required": ["behavior"],
                    "properties": {"behavior": {"enum": ["allow", "deny"]},
                                   "message": {"type": "string"}}}}}},
}


def event_for(agent: str, command: str, *, tool_use_id: str | None = None,
              session: str = "sess-1", claude_event: str = "PreToolUse") -> dict[str, Any]:
    """The documented stdin of a shell call for ``agent``."""
    cwd = "/home/dev/project"
    if agent == "claude-code":
        return {"session_id": session, "transcript_path": f"/home/dev/.claude/{session}.jsonl",
                "cwd": cwd, "permission_mode": "default", "hook_event_name": claude_event,
                "tool_name": "Bash", "tool_input": {"command": command, "description": "x"},
                "tool_use_id": tool_use_id or f"toolu_{next(_serial)}"}
    if agent == "codex":
        return {"session_id": session, "turn_id": "turn-1", "transcript_path": None,
                "cwd": cwd, "model": "gpt-5", "permission_mode": "default",
                "hook_event_name": "PermissionRequest", "tool_name": "Bash",
                "tool_input": {"command": command, "description": "needs network"}}
    return {"session_id": session, "transcript_path": f"/home/dev/.gemini/{session}.json",
            "cwd": cwd, "hook_event_name": "BeforeTool", "timestamp": "2026-11-29T05:00:00Z",
            "tool_name": "run_shell_command", "tool_input": {"command": command}}


def decision_of(agent: str, answer: dict[str, Any]) -> tuple[str, str]:
    """(allow|deny|ask|pass, reason) read back from ``agent``'s answer, checking its shape."""
    if answer == {}:
        return "pass", ""
    if agent == "gemini":  # an edit adds hookSpecificOutput.tool_input to an allow
        assert set(answer) - {"hookSpecificOutput"} == {"decision", "reason"}
        return answer["decision"], answer["reason"]
    if agent == "codex":
        jsonschema.validate(answer, CODEX_OUTPUT)
    if "hookSpecificOutput" not in answer:  # PermissionRequest with no decision
        assert set(answer) == {"systemMessage"}
        return "ask", answer["systemMessage"]
    specific = answer["hookSpecificOutput"]
    if specific["hookEventName"] == "PreToolUse":  # an edit adds updatedInput to an allow
        assert set(specific) - {"updatedInput"} == {"hookEventName", "permissionDecision",
                                                    "permissionDecisionReason"}
        return specific["permissionDecision"], specific["permissionDecisionReason"]
    decision = specific["decision"]
    return decision["behavior"], decision.get("message", "")


FALLBACK = {"claude-code": "ask", "codex": "ask", "gemini": "deny"}


class Hook:
    """One ``python -m bot hook <agent>`` subprocess (stdin written and closed)."""

    def __init__(self, proc: asyncio.subprocess.Process, agent: str):
        self.proc, self.agent = proc, agent

    @classmethod
    async def start(cls, agent: str, stdin: bytes | dict, *args: str, socket: Path | str,
                    **env: str) -> Hook:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
        environ.update(TAPGATE_SOCKET_PATH=str(socket), **env)
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "hook", agent, *args, cwd=tempfile.gettempdir(),
            env=environ, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        proc.stdin.write(data)
        await proc.stdin.drain()
        proc.stdin.close()
        return cls(proc, agent)

    async def answer(self, timeout: float = 60) -> tuple[str, str, dict]:
        """(decision, reason, raw answer); the process must exit 0 with no traceback."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        answer = json.loads(out)
        return (*decision_of(self.agent, answer), answer)


@pytest.fixture
async def bot(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url) as proc:
        yield proc


async def posted_request(fake, command: str, chat: int = CHAT_A):
    """The approver message of the request whose summary is ``command``, and its id."""
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat
                               and command in c.params["text"], timeout=30)
    msg = fake.message(chat, call.response["result"]["message_id"])
    return msg, msg.text.rsplit("ID: ", 1)[1].split()[0]


@pytest.mark.parametrize("agent", AGENTS)
async def test_approve_allows_and_the_request_carries_the_session(agent, fake, bot):
    command = f"rm -rf build/ # {agent}"
    hook = await Hook.start(agent, event_for(agent, command), socket=bot.socket_path)
    msg, approval_id = await posted_request(fake, command)
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    decision, reason, answer = await hook.answer()
    assert decision == "allow"
    if agent == "codex":  # exactly the documented answer, nothing more
        assert answer == {"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                                 "decision": {"behavior": "allow"}}}
    async with AsyncTapgateClient(bot.socket_path) as client:
        approval = await client.get_approval(approval_id)
        run = await client.get_run("sess-1")
    assert approval.agent == agent and approval.summary == command
    assert approval.kind == ("run_shell_command" if agent == "gemini" else "Bash")
    assert approval.run_id == "sess-1" and run.name == "/home/dev/project"
    assert approval.payload["tool_input"]["command"] == command
    assert approval.payload["cwd"] == "/home/dev/project"
    assert approval.payload["hook_event_name"] == event_for(agent, "")["hook_event_name"]


@pytest.mark.parametrize("agent", AGENTS)
async def test_deny_with_a_reason_reaches_the_agent(agent, fake, bot):
    command = f"git push --force # {agent}"
    hook = await Hook.start(agent, event_for(agent, command), socket=bot.socket_path)
    _, approval_id = await posted_request(fake, command, CHAT_B)
    fake.send_text(CHAT_B, BOB, f"/deny {approval_id} use a branch instead")
    decision, reason, _ = await hook.answer()
    assert decision == "deny"
    assert "use a branch instead" in reason and "@bob" in reason


async def test_claude_permission_request_event(fake, bot):
    command = "make deploy # permission request"
    event = event_for("claude-code", command, claude_event="PermissionRequest")
    hook = await Hook.start("claude-code", event, socket=bot.socket_path)
    msg, _ = await posted_request(fake, command)
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    *_, answer = await hook.answer()
    assert answer == {"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                             "decision": {"behavior": "allow"}}}


@pytest.mark.parametrize("agent", AGENTS)
async def test_expiry_answers_the_fallback(agent, fake, bot):
    command = f"sleep 1 # expiring {agent}"
    hook = await Hook.start(agent, event_for(agent, command), "--ttl", "2s",
                            socket=bot.socket_path)
    await posted_request(fake, command)
    decision, reason, _ = await hook.answer()
    assert decision == FALLBACK[agent]
    assert "expired" in reason


async def test_expiry_with_fallback_allow_and_deny(fake, bot):
    hooks = [await Hook.start("claude-code", event_for("claude-code", f"ttl {f}"), "--ttl",
                              "1s", "--fallback", f, socket=bot.socket_path)
             for f in ("allow", "deny")]
    assert [(await h.answer())[0] for h in hooks] == ["allow", "deny"]


@pytest.mark.parametrize("agent", AGENTS)
async def test_unreachable_bot_answers_the_fallback(agent, tmp_path):
    hook = await Hook.start(agent, event_for(agent, "ls"), socket=tmp_path / "none.sock")
    decision, reason, _ = await hook.answer()
    assert decision == FALLBACK[agent]
    assert "cannot reach tapgate" in reason


MALFORMED = [
    (b"", "stdin is empty"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"tool_name": 5, "tool_input": {}}', "'tool_name' must be a non-empty string"),
    (b'{"tool_name": "Bash", "tool_input": "ls"}', "'tool_input' must be an object"),
    (b"\xff\xfe garbage", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
]


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("stdin,why", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_stdin_answers_the_fallback_with_a_reason(agent, stdin, why, tmp_path):
    hook = await Hook.start(agent, stdin, socket=tmp_path / "none.sock")
    decision, reason, _ = await hook.answer()
    assert decision == FALLBACK[agent]
    assert why in reason


async def test_oversize_stdin_and_invalid_settings_answer_the_fallback(tmp_path):
    big = await Hook.start("gemini", b" " * (8 * 1024 * 1024 + 1), socket=tmp_path / "x")
    decision, reason, _ = await big.answer()
    assert decision == "deny" and "more than" in reason
    bad = await Hook.start("codex", event_for("codex", "ls"), socket=tmp_path / "x",
                           TAPGATE_SOCKET_SERVER_UID="no-such-user-anywhere")
    decision, reason, _ = await bad.answer()
    assert decision == "ask" and "TAPGATE_SOCKET_SERVER_UID" in reason
    ttl = await Hook.start("claude-code", event_for("claude-code", "ls"), "--ttl", "forever",
                           "--fallback", "deny", socket=tmp_path / "x")
    decision, reason, _ = await ttl.answer()
    assert decision == "deny" and "--ttl" in reason


@pytest.mark.parametrize("agent", AGENTS)
async def test_only_lets_other_tools_pass_and_posts_nothing(agent, fake, bot):
    hook = await Hook.start(agent, event_for(agent, "ls # not gated"), "--only",
                            "Write|Edit|mcp__.*", socket=bot.socket_path)
    decision, _, answer = await hook.answer()
    assert decision == "pass" and answer == {}
    async with AsyncTapgateClient(bot.socket_path) as client:
        assert await client.list_approvals() == []
    assert not [c for c in fake.calls_of("sendMessage") if "not gated" in c.params["text"]]


async def test_only_gates_a_matching_tool(fake, bot):
    event = event_for("claude-code", "")
    event.update(tool_name="mcp__github__create_issue",
                 tool_input={"repo": "acme/app", "title": "ship it"})
    hook = await Hook.start("claude-code", event, "--only", "Bash|mcp__.*",
                            socket=bot.socket_path)
    msg, _ = await posted_request(fake, "mcp__github__create_issue: acme/app")
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    assert (await hook.answer())[0] == "allow"


async def test_same_tool_use_id_posts_once(fake, bot):
    command = "terraform apply # retried"
    event = event_for("claude-code", command, tool_use_id="toolu_retry")
    # A short TTL: were the retry to post a request of its own, nobody would approve it
    # and it would answer the fallback within seconds.
    first = await Hook.start("claude-code", event, "--ttl", "6s", socket=bot.socket_path)
    msg, approval_id = await posted_request(fake, command)
    first.proc.kill()  # the agent gave up on it (its timeout) and runs the hook again
    await first.proc.wait()
    again = await Hook.start("claude-code", event, "--ttl", "6s", socket=bot.socket_path)
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    decision, reason, _ = await again.answer()
    assert decision == "allow", reason
    async with AsyncTapgateClient(bot.socket_path) as client:
        approvals = await client.list_approvals()
    assert [a.id for a in approvals] == [approval_id]
    sent = [c for c in fake.calls_of("sendMessage")
            if int(c.params["chat_id"]) == CHAT_A and command in c.params["text"]]
    assert len(sent) == 1


async def test_big_write_is_summarized_and_cut_to_fit(fake, bot):
    content = "".join(f"line {i} " + "x" * 60 + "\n" for i in range(3000))  # ~200 KB
    event = event_for("claude-code", "")
    event.update(tool_name="Write", tool_input={"file_path": "/home/dev/project/src/big.py",
                                                 "content": content})
    hook = await Hook.start("claude-code", event, socket=bot.socket_path)
    msg, approval_id = await posted_request(fake, "Write src/big.py (3000 lines)")
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    assert (await hook.answer())[0] == "allow"
    async with AsyncTapgateClient(bot.socket_path) as client:
        payload = (await client.get_approval(approval_id)).payload
    assert payload["tool_input"]["file_path"] == "/home/dev/project/src/big.py"
    assert payload["tool_input"]["content"].startswith("line 0 ")
    assert payload["tool_input"]["content"].endswith("more characters]")
    assert "transcript" not in json.dumps(payload).replace("transcript_path", "")


def test_summaries_and_the_api_limits():
    from bot.api import schemas
    from bot.integrations import core
    from bot.integrations import summary as summaries

    def limit(model, name: str) -> int:
        return next(m.max_length for m in model.model_fields[name].metadata
                    if getattr(m, "max_length", None))

    assert schemas.MAX_PAYLOAD == summaries.MAX_PAYLOAD
    assert limit(schemas.ApprovalCreate, "kind") == core.MAX_KEY  # also run_id's and the key's
    assert limit(schemas.RunPut, "name") == core.MAX_NAME

    def summary(tool: str, tool_input: dict) -> str:
        return summaries.summarize(core.HookRequest("PreToolUse", tool, tool_input,
                                                    cwd="/repo"))

    assert summary("Bash", {"command": "rm -rf build/\n  && make"}) == "rm -rf build/ && make"
    assert summary("Edit", {"file_path": "/repo/a/b.py", "old_string": "x"}) == "Edit a/b.py"
    assert summary("Write", {"file_path": "/etc/hosts", "content": "a\nb"}) == \
        "Write /etc/hosts (2 lines)"
    assert summary("mcp__db__query", {"sql": "DROP TABLE users"}) == \
        "mcp__db__query: DROP TABLE users"
    assert summary("WebFetch", {"url": "https://x.test", "prompt": "p"}) == \
        "WebFetch: https://x.test"
    assert summary("Bash", {"command": "y" * 600}).endswith("…")
    assert len(summary("Bash", {"command": "y" * 600})) == 500
    assert summary("TodoWrite", {"todos": []}) == "TodoWrite"


# --- decisions beyond approve and deny: an approver's edit, a reason (in-process bot) --------


class Editor:
    """A fake approver on the in-process API: approves each new request with its editable
    field (bot.rules.editable_field) changed to ``value``, or denies it with ``reason``."""

    def __init__(self, harness, value: str | None = None, reason: str | None = None,
                 edited_payload: Any = None):
        self.value, self.reason, self.edited_payload = value, reason, edited_payload
        self.seen: list = []
        self._harness = harness
        self._loop = asyncio.get_running_loop()
        harness.manager.subscribe(self._on_event)

    def _on_event(self, approval, created: bool) -> None:
        if created:
            self.seen.append(approval)
            self._loop.create_task(self._decide(approval))

    async def _decide(self, approval) -> None:
        from bot.rules import editable_field, with_edit

        manager = self._harness.manager
        if self.reason is not None:
            await manager.resolve(approval.id, "denied", "telegram:2 (@bob)", self.reason)
            return
        edited = self.edited_payload
        if edited is None:
            where, _ = editable_field(approval.payload)
            edited = with_edit(approval.payload, where, self.value)
        await manager.resolve(approval.id, "approved", "telegram:1 (@alice)",
                              edited_payload=edited)


@pytest.mark.parametrize("agent,claude_event", [("claude-code", "PreToolUse"),
                                                ("claude-code", "PermissionRequest"),
                                                ("gemini", None)])
async def test_an_edit_reaches_the_agent_as_its_own_input_with_one_field_changed(
        agent, claude_event, lite):  # noqa: F811
    editor = Editor(lite, "git push origin HEAD:feature")
    event = event_for(agent, "git push --force", claude_event=claude_event or "PreToolUse")
    hook = await Hook.start(agent, event, socket=lite.path)
    out, err = await asyncio.wait_for(hook.proc.communicate(), 60)
    assert hook.proc.returncode == 0 and b"Traceback" not in err, err.decode()
    answer = json.loads(out)
    expected = {**event["tool_input"], "command": "git push origin HEAD:feature"}
    assert editor.seen[0].accepts_edits is True
    if agent == "gemini":
        assert answer["decision"] == "allow" and "edit" in answer["reason"]
        assert answer["hookSpecificOutput"] == {"tool_input": expected}
    elif claude_event == "PreToolUse":
        specific = answer["hookSpecificOutput"]
        assert specific["permissionDecision"] == "allow"
        assert specific["updatedInput"] == expected
        assert "@alice" in specific["permissionDecisionReason"]
    else:
        assert answer == {"hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "allow", "updatedInput": expected}}}


async def test_an_edit_never_sends_the_cut_payload_back(lite):  # noqa: F811
    """The approver saw (and edited) a payload cut to fit the API's limit: the agent gets
    its whole original input back with only the edited field replaced."""
    content = "".join(f"line {i} " + "y" * 60 + "\n" for i in range(3000))
    event = event_for("claude-code", "")
    event.update(tool_name="Write", tool_input={"file_path": "/home/dev/project/big.py",
                                                 "content": content})
    editor = Editor(lite, "/home/dev/project/big_v2.py")
    hook = await Hook.start("claude-code", event, socket=lite.path)
    out, _ = await asyncio.wait_for(hook.proc.communicate(), 60)
    sent = editor.seen[0].payload["tool_input"]["content"]
    assert sent.endswith("more characters]")  # what the approver saw was cut
    updated = json.loads(out)["hookSpecificOutput"]["updatedInput"]
    assert updated == {"file_path": "/home/dev/project/big_v2.py", "content": content}


async def test_codex_takes_no_edits_and_an_unusable_edit_is_denied(lite):  # noqa: F811
    # Codex says it cannot take edits; an edit that reached it anyway is not run.
    editor = Editor(lite, "ls -la")
    hook = await Hook.start("codex", event_for("codex", "ls # codex"), socket=lite.path)
    decision, reason, answer = await hook.answer()
    assert editor.seen[0].accepts_edits is False
    assert decision == "deny" and "cannot run" in reason
    jsonschema.validate(answer, CODEX_OUTPUT)
    # An edited payload whose field the original lacks: denied, never the original run.
    editor.edited_payload = {"tool_input": {"query": "something else"}}
    hook = await Hook.start("claude-code", event_for("claude-code", "ls # odd edit"),
                            socket=lite.path)
    decision, reason, answer = await hook.answer()
    assert decision == "deny" and "not running the original" in reason
    assert "updatedInput" not in answer["hookSpecificOutput"]


@pytest.mark.parametrize("agent", AGENTS)
async def test_the_approvers_reason_reaches_the_model_verbatim(agent, lite):  # noqa: F811
    why = "not on main — open a PR instead (see CONTRIBUTING.md §3)"
    Editor(lite, reason=why)
    hook = await Hook.start(agent, event_for(agent, f"git push # {agent}"), socket=lite.path)
    decision, reason, _ = await hook.answer()
    assert decision == "deny" and reason.endswith(f": {why}") and "@bob" in reason


# --- two-person approval: whom the agent works for, how many must approve -------------------


@pytest.mark.parametrize("agent", AGENTS)
async def test_requested_by_and_required_approvals_reach_the_request(agent, lite):  # noqa: F811
    editor = Editor(lite, reason="not now")
    hook = await Hook.start(agent, event_for(agent, f"make release # {agent}"),
                            "--requested-by", "1001", "--required-approvals", "2",
                            socket=lite.path)
    decision, _, _ = await hook.answer()
    assert decision == "deny"
    [seen] = editor.seen
    stored = await lite.manager.get(seen.id)  # the record as the bot keeps it
    assert (stored.requested_by, stored.required_approvals) == (1001, 2)
    # Without the options, the request is the single approver's one it always was.
    hook = await Hook.start(agent, event_for(agent, f"make test # {agent}"), socket=lite.path)
    await hook.answer()
    plain = await lite.manager.get(editor.seen[1].id)
    assert (plain.requested_by, plain.required_approvals) == (None, 1)


BAD_APPROVER_OPTIONS = [("--requested-by", "0"), ("--requested-by", "alice"),
                        ("--requested-by", str(2**53 + 1)), ("--required-approvals", "0"),
                        ("--required-approvals", "11"), ("--required-approvals", "two")]


@pytest.mark.parametrize("option,value", BAD_APPROVER_OPTIONS)
async def test_a_bad_approver_option_answers_the_fallback_and_posts_nothing(
        option, value, lite):  # noqa: F811
    # As a bad --ttl: the agent still gets its answer, exit 0, the reason naming the option.
    for agent in AGENTS:
        hook = await Hook.start(agent, event_for(agent, "ls"), option, value, socket=lite.path)
        decision, reason, _ = await hook.answer()
        assert decision == FALLBACK[agent] and f"{option}:" in reason and value in reason
    async with AsyncTapgateClient(lite.path) as client:
        assert await client.list_approvals() == []


async def test_the_requesters_own_tap_does_not_count_end_to_end(fake, bot):
    """The hook acts for @alice (1001) and asks for two approvers: her Approve is refused
    with a popup, the stored request says so, and @bob's deny decides."""
    command = "kubectl delete ns staging # for alice"
    hook = await Hook.start("claude-code", event_for("claude-code", command),
                            "--requested-by", str(ALICE.id), "--required-approvals", "2",
                            socket=bot.socket_path)
    msg, approval_id = await posted_request(fake, command)
    assert "0 of 2" in msg.text
    own = fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    assert "acts for you" in await answer_of(fake, own)
    async with AsyncTapgateClient(bot.socket_path) as client:
        stored = await client.get_approval(approval_id)
    assert (stored.requested_by, stored.required_approvals) == (ALICE.id, 2)
    assert stored.status == "pending" and stored.approvals == []
    fake.send_text(CHAT_B, BOB, f"/deny {approval_id} not while alice is on call")
    decision, reason, _ = await hook.answer()
    assert decision == "deny" and "not while alice is on call" in reason


@pytest.mark.parametrize("agent", ["claude-code", "gemini"])
async def test_session_end_completes_the_run_and_ends_its_session_rules(agent, lite):  # noqa: F811
    from storage.records import RunUpsert
    from storage.rule_records import NewRule

    store = lite.store
    await store.run(store.upsert_run, RunUpsert(id="sess-9", name="/home/dev/project"))
    session_rule = await store.run(store.create_rule, NewRule(
        agent=agent, kind="Bash", match="ls", run_id="sess-9", created_by="telegram:1 (@a)"))
    always = await store.run(store.create_rule, NewRule(
        agent=agent, kind="Bash", match="pwd", created_by="telegram:1 (@a)"))
    end = {"session_id": "sess-9", "transcript_path": "/tmp/t.jsonl", "cwd": "/home/dev",
           "hook_event_name": "SessionEnd", "reason": "exit"}
    for _ in range(2):  # a second end (or one for a run already complete) is fine too
        hook = await Hook.start(agent, end, socket=lite.path)
        out, err = await asyncio.wait_for(hook.proc.communicate(), 60)
        assert hook.proc.returncode == 0 and json.loads(out) == {}, err.decode()
        assert not err, err.decode()
    assert (await store.run(store.get_run, "sess-9")).status == "completed"
    live = await store.run(store.list_rules)
    assert [r.id for r in live] == [always.id]  # only the session's rule ended
    ended = await store.run(store.get_rule, session_rule.id)
    assert ended.revoked_at is not None
    # A session that never asked anything has no run: nothing to do, no complaint.
    hook = await Hook.start(agent, {**end, "session_id": "never-asked"}, socket=lite.path)
    out, err = await asyncio.wait_for(hook.proc.communicate(), 60)
    assert json.loads(out) == {} and not err
    # The bot down: still {} and exit 0, the reason on stderr.
    hook = await Hook.start(agent, end, socket="/tmp/nothing-here.sock")
    out, err = await asyncio.wait_for(hook.proc.communicate(), 60)
    assert hook.proc.returncode == 0 and json.loads(out) == {}
    assert b"could not complete run sess-9" in err


# --- the same, end to end: the real bot, the fake Telegram, the approver's taps ---------------


async def prompt_in(fake, sqlite_url: str, chat: int, needle: str):
    """The bot's ForceReply prompt containing ``needle``, once its prompt row is stored."""
    from storage.store import Store

    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat
                               and needle in str(c.params["text"]), timeout=30)
    message_id = call.response["result"]["message_id"]
    store = Store.from_url(sqlite_url)
    try:
        for _ in range(500):
            if store.find_prompt(chat, message_id) is not None:
                return message_id
            await asyncio.sleep(0.02)
    finally:
        store.close()
    raise AssertionError(f"no prompt stored for message {message_id}")


async def test_an_approvers_edit_in_telegram_reaches_claude_code(fake, bot, sqlite_url):
    command = "git push --force origin main # e2e edit"
    event = event_for("claude-code", command)
    hook = await Hook.start("claude-code", event, socket=bot.socket_path)
    msg, _ = await posted_request(fake, command)
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✏️ Edit")
    ask = await prompt_in(fake, sqlite_url, CHAT_A, "Edit and approve")
    fake.send_text(CHAT_A, ALICE, "git push origin HEAD:review/e2e", reply_to=ask)
    *_, answer = await hook.answer()
    specific = answer["hookSpecificOutput"]
    assert specific["permissionDecision"] == "allow"
    assert specific["updatedInput"] == {**event["tool_input"],
                                        "command": "git push origin HEAD:review/e2e"}


async def test_a_reason_typed_in_telegram_reaches_claude_code(fake, bot, sqlite_url):
    command = "rm -rf ~/.cache # e2e reason"
    hook = await Hook.start("claude-code", event_for("claude-code", command),
                            socket=bot.socket_path)
    msg, _ = await posted_request(fake, command)
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="💬 Deny with reason")
    ask = await prompt_in(fake, sqlite_url, CHAT_A, "Deny with a reason")
    fake.send_text(CHAT_A, ALICE, "clear only ~/.cache/pip, the rest is shared", reply_to=ask)
    decision, reason, _ = await hook.answer()
    assert decision == "deny"
    assert reason.endswith("@alice) via Tapgate: clear only ~/.cache/pip, the rest is shared")


async def test_codex_edit_is_refused_with_a_popup_and_the_request_stays_open(fake, bot):
    command = "make deploy # e2e codex"
    hook = await Hook.start("codex", event_for("codex", command), socket=bot.socket_path)
    msg, approval_id = await posted_request(fake, command)
    query = fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✏️ Edit")
    call = await fake.wait_for("answerCallbackQuery",
                               lambda c: c.params["callback_query_id"] == query, timeout=30)
    assert "can't run an edited request" in call.params["text"]
    async with AsyncTapgateClient(bot.socket_path) as client:
        assert (await client.get_approval(approval_id)).status == "pending"
    fake.tap(msg.chat_id, msg.message_id, ALICE, button_text="✅ Approve")
    decision, _, answer = await hook.answer()
    assert decision == "allow"
    assert answer == {"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                             "decision": {"behavior": "allow"}}}
