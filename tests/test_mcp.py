"""``tapgate mcp`` end to end: the SDK's own stdio client drives ``python -m bot mcp``
against a real ``tapgate run`` and the fake Telegram; ``mcp install`` on real files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from bot.client import AsyncTapgateClient
from tests.botproc import BotProcess, bot_env
from tests.test_api import lite  # noqa: F401  (the fixture: the API in the test's loop)
from tests.test_telegram import ALICE, BOB, CHAT_A, CHAT_B, posted

ROOT = Path(__file__).resolve().parent.parent
WAITING = re.compile(r"decide on request (\S+)")


@pytest.fixture
async def bot(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url) as proc:
        yield proc


@asynccontextmanager
async def mcp_session(env: dict[str, str], errlog: Path, client_name: str = "test-agent",
                      args: tuple[str, ...] = ()):
    """An initialized SDK client session with ``python -m bot mcp [args]`` (stderr to
    ``errlog``)."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "bot", "mcp", *args],
                                   env=env, cwd=str(ROOT))
    with errlog.open("a") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(
                read, write, client_info=types.Implementation(name=client_name, version="1")
        ) as session:
            await session.initialize()
            yield session


def structured(result: types.CallToolResult) -> dict:
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result: types.CallToolResult) -> str:
    assert result.is_error, result
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_tools_are_listed(bot, tmp_path):
    async with mcp_session(bot.env, tmp_path / "mcp.log") as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"request_approval", "get_approval", "spend"}
    schema = tools["request_approval"].input_schema
    assert set(schema["required"]) == {"kind", "summary"}
    assert {"payload", "ttl_seconds", "wait", "accepts_edits"} <= set(schema["properties"])
    assert "ctx" not in schema["properties"]  # the SDK's context is not an argument


async def test_request_is_posted_and_approved_with_progress(bot, fake, tmp_path):
    progress: list[tuple[float, float | None, str | None]] = []
    reported = asyncio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))
        reported.set()

    async with mcp_session(bot.env, tmp_path / "mcp.log") as session:
        call = asyncio.create_task(session.call_tool(
            "request_approval", {"kind": "shell", "summary": "rm -rf build/",
                                 "payload": {"cwd": "/srv/app"}, "ttl_seconds": 600},
            progress_callback=on_progress))
        await asyncio.wait_for(reported.wait(), 30)
        approval_id = WAITING.search(progress[0][2]).group(1)
        assert progress[0][1] == pytest.approx(600)  # the total is the request's TTL
        msg = await posted(fake, CHAT_A, approval_id)
        assert "rm -rf build/" in msg.text
        assert not call.done()  # still waiting for a person
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        result = structured(await asyncio.wait_for(call, 30))
    assert result["id"] == approval_id
    assert result["status"] == "approved"
    assert result["decided_by"]
    async with AsyncTapgateClient(bot.socket_path) as client:
        stored = await client.get_approval(approval_id)
    assert stored.agent == "test-agent"  # the MCP client's name from initialize
    assert stored.payload == {"cwd": "/srv/app"}


async def test_deny_reason_reaches_the_agent(bot, fake, tmp_path):
    async with mcp_session(bot.env, tmp_path / "mcp.log", client_name="") as session:
        call = asyncio.create_task(session.call_tool(
            "request_approval", {"kind": "deploy", "summary": "ship v2 to prod"}))
        sent = await fake.wait_for("sendMessage",
                                   lambda c: "ship v2 to prod" in c.params["text"], timeout=30)
        async with AsyncTapgateClient(bot.socket_path) as client:
            approval_id = (await client.list_approvals(status="pending"))[0].id
        assert approval_id in sent.params["text"]
        fake.send_text(CHAT_B, BOB, f"/deny {approval_id} not on a Friday")
        result = structured(await asyncio.wait_for(call, 30))
    assert result["status"] == "denied"
    assert result["reason"] == "not on a Friday"
    assert result["decided_by"]
    async with AsyncTapgateClient(bot.socket_path) as client:
        assert (await client.get_approval(approval_id)).agent == "mcp"  # no client name


async def test_an_edit_reaches_the_agent_only_when_it_accepts_edits(fake, sqlite_url, lite,  # noqa: F811
                                                                    tmp_path):
    """accepts_edits goes to the bot; an approval with an edit returns edited_payload."""
    edited = {"command": "deploy staging"}

    def approve_edited(approval, created: bool) -> None:
        if created:
            asyncio.get_running_loop().create_task(lite.manager.resolve(
                approval.id, "approved", "telegram:1 (@alice)",
                edited_payload=edited if approval.accepts_edits else None))

    lite.manager.subscribe(approve_edited)
    async with mcp_session(bot_env(fake, sqlite_url, lite.path), tmp_path / "mcp.log") as s:
        result = structured(await s.call_tool("request_approval", {
            "kind": "deploy", "summary": "deploy prod", "payload": {"command": "deploy prod"},
            "accepts_edits": True}))
        plain = structured(await s.call_tool("request_approval", {
            "kind": "deploy", "summary": "deploy prod"}))
        polled = structured(await s.call_tool("get_approval", {"id": result["id"]}))
    assert result["status"] == "approved" and result["edited_payload"] == edited
    assert polled == result
    assert plain["status"] == "approved" and plain["edited_payload"] is None
    stored = await lite.manager.get(result["id"])
    assert stored.accepts_edits is True and stored.payload == {"command": "deploy prod"}


ACTS_FOR = ("--requested-by", "1001", "--required-approvals", "2")
# What a model might try to pass to choose whom its request acts for, or fewer approvers.
OVERRIDE = {"requested_by": 6666, "required_approvals": 1}


async def test_the_servers_requested_by_and_quorum_go_with_every_request(fake, sqlite_url,
                                                                        lite, tmp_path):  # noqa: F811
    """Set on the server's command line, sent with each request; the model has no say:
    no such tool arguments, and the ones it makes up are not used."""
    env = bot_env(fake, sqlite_url, lite.path)
    async with mcp_session(env, tmp_path / "mcp.log", args=ACTS_FOR) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        properties = tools["request_approval"].input_schema["properties"]
        assert not {"requested_by", "required_approvals"} & set(properties)
        first = structured(await session.call_tool(
            "request_approval", {"kind": "deploy", "summary": "ship v3", "wait": False}))
        second = structured(await session.call_tool(
            "request_approval", {"kind": "deploy", "summary": "ship v4", "wait": False,
                                 **OVERRIDE}))
    for result in (first, second):
        stored = await lite.manager.get(result["id"])
        assert (stored.requested_by, stored.required_approvals) == (1001, 2)
    # A server started without them sends none, whatever the model passes.
    async with mcp_session(env, tmp_path / "mcp.log") as session:
        plain = structured(await session.call_tool(
            "request_approval", {"kind": "deploy", "summary": "ship v5", "wait": False,
                                 **OVERRIDE}))
    stored = await lite.manager.get(plain["id"])
    assert (stored.requested_by, stored.required_approvals) == (None, 1)


@pytest.mark.parametrize("argv", [["--requested-by", "-5"], ["--required-approvals", "0"]])
def test_a_bad_approver_option_stops_the_server_on_stderr(tmp_path, argv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    done = subprocess.run([sys.executable, "-m", "bot", "mcp", *argv], cwd=ROOT, env=env,
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""  # stdout is the protocol's
    assert done.stderr.splitlines()[-1].startswith(f"tapgate mcp: error: argument {argv[0]}")


async def test_no_wait_then_get_approval(bot, fake, tmp_path):
    async with mcp_session(bot.env, tmp_path / "mcp.log") as session:
        first = structured(await session.call_tool(
            "request_approval", {"kind": "email", "summary": "mail the board", "wait": False}))
        assert first["status"] == "pending"
        assert first["decided_by"] is None
        polled = structured(await session.call_tool("get_approval", {"id": first["id"]}))
        assert polled == first
        msg = await posted(fake, CHAT_A, first["id"])
        waiting = asyncio.create_task(session.call_tool(
            "get_approval", {"id": first["id"], "wait_seconds": 30}))
        fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
        decided = structured(await asyncio.wait_for(waiting, 40))
        assert decided["status"] == "approved"
        assert decided["id"] == first["id"]
        missing = await session.call_tool("get_approval", {"id": "nope"})
        assert "not_found" in error_text(missing)


async def test_spend_summary(bot, tmp_path):
    async with AsyncTapgateClient(bot.socket_path) as client:
        await client.put_run("r1", name="crawler")
        await client.record_call("r1", "gpt-4o", provider="openai", prompt_tokens=100,
                                 completion_tokens=20, dollars=0.5)
    async with mcp_session(bot.env, tmp_path / "mcp.log") as session:
        summary = structured(await session.call_tool("spend", {}))
        by_provider = structured(await session.call_tool("spend", {"by": "provider"}))
        bad = await session.call_tool("spend", {"since": "not a date"})
    assert summary["by"] == "model"
    assert [(g["key"], g["calls"], g["dollars"]) for g in summary["groups"]] == [
        ("gpt-4o", 1, 0.5)]
    assert summary["total"]["prompt_tokens"] == 100
    assert [g["key"] for g in by_provider["groups"]] == ["openai"]
    assert "validation_error" in error_text(bad)


async def test_validation_error_is_a_tool_error(bot, tmp_path):
    async with mcp_session(bot.env, tmp_path / "mcp.log") as session:
        result = await session.call_tool("request_approval", {"kind": "shell", "summary": ""})
        text = error_text(result)
        assert "validation_error" in text and "summary" in text
        assert (await session.call_tool("get_approval", {"id": "x", "wait_seconds": -1})
                ).is_error


async def test_unreachable_bot_is_a_tool_error_and_server_lives(fake, sqlite_url, tmp_path):
    socket = tmp_path / "absent.sock"
    env = bot_env(fake, sqlite_url, socket)
    async with mcp_session(env, tmp_path / "mcp.log") as session:
        for _ in range(2):  # the second call proves the server survived the first
            result = await session.call_tool("request_approval",
                                             {"kind": "shell", "summary": "ls"})
            text = error_text(result)
            assert "cannot reach tapgate" in text and str(socket) in text
            assert text.count("tapgate run") == 1, text  # the hint, once
        assert "cannot reach tapgate" in error_text(await session.call_tool("spend", {}))
        assert len((await session.list_tools()).tools) == 3
    assert "Traceback" not in (tmp_path / "mcp.log").read_text()


def test_bad_settings_go_to_stderr_not_stdout(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    done = subprocess.run([sys.executable, "-m", "bot", "--env-file", str(tmp_path / "none"),
                           "mcp"], cwd=ROOT, env=env, input="", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "does not exist" in done.stderr


# --- install -----------------------------------------------------------------------------------


def run_install(cwd: Path, home: Path, *extra: str, socket: str | None = None
                ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_STATE_HOME=str(home / ".local/state"))
    env.pop("XDG_RUNTIME_DIR", None)
    if socket:
        env["TAPGATE_SOCKET_PATH"] = socket
    return subprocess.run([sys.executable, "-m", "bot", "mcp", "install", "claude-code",
                           *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "proj").mkdir()
    return tmp_path / "proj", tmp_path / "home"


OTHER = {"command": "npx", "args": ["-y", "@example/server"], "env": {"TOKEN": "t"}}


def test_install_project_scope_keeps_other_servers(project):
    proj, home = project
    path = proj / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"other": OTHER}, "extra": 1}))
    first = run_install(proj, home, "--scope", "project", socket="/tmp/tg-x/tapgate.sock")
    assert first.returncode == 0, first.stderr
    written = path.read_bytes()
    config = json.loads(written)
    assert config["extra"] == 1
    assert config["mcpServers"]["other"] == OTHER
    entry = config["mcpServers"]["tapgate"]
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][-1] == "mcp"
    assert entry["env"] == {"TAPGATE_SOCKET_PATH": "/tmp/tg-x/tapgate.sock"}
    second = run_install(proj, home, "--scope", "project", socket="/tmp/tg-x/tapgate.sock")
    assert second.returncode == 0, second.stderr
    assert path.read_bytes() == written
    assert "already installed" in second.stdout


@pytest.mark.parametrize("where", ["after", "before"])
def test_install_puts_requested_by_and_quorum_into_the_command(project, where):
    proj, home = project
    argv = (["install", "claude-code", "--scope", "project", *ACTS_FOR] if where == "after"
            else [*ACTS_FOR, "install", "claude-code", "--scope", "project"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "bot", "mcp", *argv], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = json.loads((proj / ".mcp.json").read_text())["mcpServers"]["tapgate"]
    assert entry["args"][-5:] == ["mcp", *ACTS_FOR]
    # Registered again without them: the entry is replaced, the options gone.
    assert run_install(proj, home, "--scope", "project").returncode == 0
    entry = json.loads((proj / ".mcp.json").read_text())["mcpServers"]["tapgate"]
    assert entry["args"][-1] == "mcp"


def test_installed_command_starts_the_server(project, tmp_path):
    proj, home = project
    assert run_install(proj, home, "--scope", "project").returncode == 0
    entry = json.loads((proj / ".mcp.json").read_text())["mcpServers"]["tapgate"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(entry.get("env", {}))

    async def tools() -> list[str]:
        params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env,
                                       cwd=str(home))
        with (tmp_path / "mcp.log").open("a") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(
                    read, write) as session:
                await session.initialize()
                return sorted(t.name for t in (await session.list_tools()).tools)

    assert asyncio.run(tools()) == ["get_approval", "request_approval", "spend"]


def test_install_user_and_local_scopes_merge_claude_json(project):
    proj, home = project
    claude = home / ".claude.json"
    original = {"numStartups": 7, "mcpServers": {"other": OTHER},
                "projects": {"/elsewhere": {"allowedTools": ["Bash"]}}}
    claude.write_text(json.dumps(original))
    assert run_install(proj, home, "--scope", "user").returncode == 0
    assert run_install(proj, home, "--scope", "local").returncode == 0
    config = json.loads(claude.read_text())
    assert config["numStartups"] == 7
    assert config["mcpServers"]["other"] == OTHER
    assert "tapgate" in config["mcpServers"]
    assert config["projects"]["/elsewhere"] == {"allowedTools": ["Bash"]}
    assert "tapgate" in config["projects"][str(proj)]["mcpServers"]
    before = claude.read_bytes()
    assert run_install(proj, home, "--scope", "local").returncode == 0
    assert run_install(proj, home, "--scope", "user").returncode == 0
    assert claude.read_bytes() == before


def test_install_dry_run_prints_and_writes_nothing(project):
    proj, home = project
    path = proj / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"other": OTHER}}))
    before = path.read_bytes()
    done = run_install(proj, home, "--scope", "project", "--dry-run")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed["mcpServers"]) == {"other", "tapgate"}
    assert path.read_bytes() == before


def test_install_refuses_a_broken_file(project):
    proj, home = project
    path = proj / ".mcp.json"
    path.write_text("{not json")
    done = run_install(proj, home, "--scope", "project")
    assert done.returncode == 2
    assert str(path) in done.stderr and "Traceback" not in done.stderr
    assert path.read_text() == "{not json"
