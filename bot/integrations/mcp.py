"""``tapgate mcp``: an MCP server over stdio, so any MCP client can ask a human.

Built on the official ``mcp`` SDK (``MCPServer``, stdio transport); every tool goes
through :class:`bot.client.AsyncTapgateClient` to the running bot's socket, like any
other agent. stdout carries the protocol, so every message of ours (settings errors,
logs) goes to stderr.

Tools: ``request_approval`` (waits for the decision, reporting progress while it does
when the client sent a progress token; with ``accepts_edits`` an approver may approve an
edited payload, returned as ``edited_payload``), ``get_approval`` (for clients that time out
long tool calls: submit with ``wait=false``, then poll) and ``spend``.

``tapgate mcp --requested-by USER_ID --required-approvals N`` sends those with every
request (:mod:`bot.integrations.approvers`). They are the server's options, not tool
arguments: the model is the governed party and must not choose whom its requests act for.

``tapgate mcp install claude-code`` registers the server the way ``claude mcp add``
does: ``.mcp.json`` (project scope), ``~/.claude.json`` top level (user) or its
``projects[<cwd>]`` entry (local), with those options in the registered command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from bot.client import AsyncTapgateClient, ClientError, ConnectionFailed
from bot.config import Settings, load_settings
from bot.integrations import approvers
from storage.errors import TapgateError
from storage.records import Approval

log = logging.getLogger("tapgate.mcp")

SERVER_NAME = "tapgate"
DEFAULT_AGENT = "mcp"
MAX_AGENT = 200  # the API's bound on an identifier
# Often enough that a client showing progress sees the wait is alive, rarely enough
# not to flood it during a wait of hours.
PROGRESS_EVERY = 10.0

INSTRUCTIONS = (
    "Ask a human (over Telegram) before doing something risky: call request_approval "
    "with a short kind (e.g. 'shell', 'deploy') and a one-line summary a person can judge "
    "at a glance, and act only if the status is 'approved'. A denial's reason is the "
    "person's answer to you. If you can carry out a changed version, pass "
    "accepts_edits=true: an approval may then come with edited_payload, which is what you "
    "must do instead."
)


class Decision(BaseModel):
    """What ``request_approval`` and ``get_approval`` return."""

    id: str = Field(description="the request's id (give it to get_approval)")
    status: str = Field(description="pending, approved, denied, expired or cancelled")
    reason: str | None = Field(None, description="the approver's reason, if any")
    decided_by: str | None = Field(None, description="who decided, once decided")
    edited_payload: Any = Field(None, description="approved with an edit (only when "
                                                  "accepts_edits was true): the payload "
                                                  "to act on instead of yours")

    @classmethod
    def of(cls, approval: Approval) -> Decision:
        return cls(id=approval.id, status=approval.status, reason=approval.reason,
                   decided_by=approval.decided_by, edited_payload=approval.edited_payload)


# --- the server ------------------------------------------------------------------------------


def build_server(settings: Settings, *, requested_by: int | None = None,
                 required_approvals: int | None = None) -> MCPServer:
    """The MCP server with its three tools, talking to the bot at ``settings.socket_path``.

    ``requested_by`` and ``required_approvals`` go with every request ``request_approval``
    makes; the tool has no arguments for them (see :mod:`bot.integrations.approvers`)."""
    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level=settings.log_level)

    @asynccontextmanager
    async def bot() -> AsyncIterator[AsyncTapgateClient]:
        """A client for one tool call; the bot's refusals become tool errors.

        A client per call keeps no connection state across calls, so a restart of the
        bot between calls costs nothing."""
        try:
            async with AsyncTapgateClient(settings.socket_path,
                                          server_uid=settings.expected_server_uid) as client:
                yield client
        except ConnectionFailed as exc:  # its message already says what to check
            raise ToolError(exc.message) from None
        except ClientError as exc:  # "code: message", as the API answered it
            raise ToolError(str(exc)) from None

    @server.tool()
    async def request_approval(
        kind: Annotated[str, Field(description="what sort of action, e.g. shell, deploy, "
                                               "payment (1..200 characters)")],
        summary: Annotated[str, Field(description="one line a person can judge at a glance")],
        ctx: Context,
        payload: Annotated[Any, Field(description="details shown to the approver "
                                                  "(any JSON)")] = None,
        ttl_seconds: Annotated[float | None, Field(description="how long the request may "
                                                               "wait (default: the bot's)")]
        = None,
        wait: Annotated[bool, Field(description="wait for the decision (false: return the "
                                                "pending id at once; poll get_approval)")]
        = True,
        accepts_edits: Annotated[bool, Field(description="true if you will act on "
                                                         "edited_payload when the approver "
                                                         "approves an edited version (else "
                                                         "they cannot edit)")]
        = False,
    ) -> Decision:
        """Ask a human to approve an action; by default waits for the decision.

        Act only when the returned status is 'approved'; if it carries an edited_payload,
        do that instead of what you asked."""
        async with bot() as client:
            approval = await client.request_approval(
                _agent_name(ctx), kind, summary, payload, ttl_seconds,
                accepts_edits=accepts_edits, required_approvals=required_approvals,
                requested_by=requested_by)
            log.info("request %s submitted (%s: %s)", approval.id, kind, summary)
            if wait and not approval.is_final:
                approval = await _wait_reporting(client, approval, ctx)
        return Decision.of(approval)

    @server.tool()
    async def get_approval(
        id: Annotated[str, Field(description="the id request_approval returned")],
        wait_seconds: Annotated[float, Field(ge=0, description="wait up to this long for a "
                                                               "decision (0: answer at once)")]
        = 0,
    ) -> Decision:
        """The state of an approval request, optionally waiting for its decision."""
        async with bot() as client:
            if wait_seconds > 0:
                approval = await client.wait_for_decision(id, timeout=wait_seconds)
            else:
                approval = await client.get_approval(id)
        return Decision.of(approval)

    @server.tool()
    async def spend(
        by: Annotated[str, Field(description="provider, model, day, name or "
                                             "metadata.KEY")] = "model",
        since: Annotated[str | None, Field(description="RFC 3339 or YYYY-MM-DD")] = None,
        until: Annotated[str | None, Field(description="RFC 3339 or YYYY-MM-DD")] = None,
    ) -> dict[str, Any]:
        """The spend summary of the agents' recorded model calls, grouped by ``by``."""
        async with bot() as client:
            summary = await client.spend(by, since, until)
        return summary.model_dump(mode="json")

    return server


def _agent_name(ctx: Context) -> str:
    """The MCP client's name from its initialize request, so the approver sees which
    agent asks; ``mcp`` when the client gave none."""
    params = ctx.session.client_params
    name = params.client_info.name.strip() if params and params.client_info else ""
    return name[:MAX_AGENT] or DEFAULT_AGENT


async def _wait_reporting(client: AsyncTapgateClient, approval: Approval,
                          ctx: Context) -> Approval:
    """Wait for the decision, reporting progress every :data:`PROGRESS_EVERY` seconds.

    The SDK makes a report a no-op unless the client sent a progress token; the progress
    is seconds waited out of the request's TTL, so it grows as the protocol requires."""
    started = time.monotonic()
    ttl = (approval.expires_at - approval.created_at).total_seconds()
    message = f"waiting for a person to decide on request {approval.id}"
    result: Approval | None = None
    failure: ClientError | None = None

    async def tick() -> None:
        while True:
            await ctx.report_progress(round(time.monotonic() - started, 1), ttl, message)
            await anyio.sleep(PROGRESS_EVERY)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        try:
            # No timeout: the request's own expiry ends the wait, and the client's
            # retries ride out a restart of the bot meanwhile.
            result = await client.wait_for_decision(approval)
        except ClientError as exc:
            failure = exc  # raised outside the group, so it is not wrapped in a group
        finally:
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    assert result is not None
    return result


def serve(args: argparse.Namespace) -> int:
    """``tapgate mcp``: serve MCP over stdin/stdout until the client closes stdin."""
    try:
        settings = load_settings(args.env_file)
    except TapgateError as exc:
        print(f"tapgate mcp: {exc}", file=sys.stderr)
        return 2
    # Configured before the SDK's own basicConfig (which then does nothing), so every
    # log line goes to stderr whatever the SDK's defaults.
    logging.basicConfig(stream=sys.stderr, level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every socket request at INFO: one line per long-poll slice is noise.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    server = build_server(settings, **approvers.fields(args))
    log.info("serving MCP on stdio; bot socket %s", settings.socket_path)
    anyio.run(server.run_stdio_async)
    return 0


# --- install ---------------------------------------------------------------------------------


def server_entry(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The ``mcpServers`` entry that starts this server with these settings."""
    command = _command()
    extra: list[str] = []
    if args.env_file:
        extra = ["--env-file", str(Path(args.env_file).resolve())]
    env: dict[str, str] = {}
    socket = Path(settings.socket_path)
    # The client starts the server in its own working directory: a relative socket
    # path would point elsewhere there, so it is written out absolute.
    if not socket.is_absolute() or socket != _default_socket():
        env["TAPGATE_SOCKET_PATH"] = str(socket.resolve())
    if settings.socket_server_uid is not None:
        env["TAPGATE_SOCKET_SERVER_UID"] = str(settings.socket_server_uid)
    entry: dict[str, Any] = {"type": "stdio", "command": command[0],
                             "args": [*command[1:], *extra, "mcp", *approvers.argv(args)]}
    if env:
        entry["env"] = env
    return entry


def _command() -> list[str]:
    """How to start ``tapgate``: the script next to this interpreter (a venv's), else
    this interpreter with ``-m bot``; absolute, since the client's PATH may differ."""
    script = Path(sys.executable).parent / "tapgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "bot"]


def _default_socket() -> Path:
    default = Settings.model_fields["socket_path"].get_default(call_default_factory=True)
    return Path(default)


def _target(scope: str) -> tuple[Path, list[str]]:
    """The file ``claude mcp add --scope`` writes, and the keys down to its servers."""
    if scope == "project":
        return Path.cwd() / ".mcp.json", ["mcpServers"]
    home = Path.home() / ".claude.json"
    if scope == "user":
        return home, ["mcpServers"]
    return home, ["projects", str(Path.cwd()), "mcpServers"]


def merged(document: dict[str, Any], keys: list[str], entry: dict[str, Any]
           ) -> dict[str, Any]:
    """A copy of ``document`` with ``entry`` as server ``tapgate`` under ``keys``; every
    other key and server kept as it was."""
    result = json.loads(json.dumps(document))  # a deep copy; the input stays untouched
    node = result
    for key in keys:
        child = node.get(key)
        if not isinstance(child, dict):
            if child is not None:
                raise TapgateError(f"{'.'.join(keys[:keys.index(key) + 1])} is not an object")
            child = node[key] = {}
        node = child
    node[SERVER_NAME] = entry
    return result


def install(args: argparse.Namespace, settings: Settings) -> int:
    """``tapgate mcp install claude-code``: merge the server into Claude Code's config."""
    path, keys = _target(args.scope)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        current = json.loads(text) if text.strip() else {}
        if not isinstance(current, dict):
            raise TapgateError("the file is not a JSON object")
        updated = merged(current, keys, server_entry(args, settings))
    except (OSError, ValueError, TapgateError) as exc:
        print(f"tapgate mcp install: {path}: {exc}", file=sys.stderr)
        return 2
    output = json.dumps(updated, indent=2, ensure_ascii=False) + "\n"
    if args.dry_run:
        sys.stdout.write(output)
        return 0
    if updated == current:
        print(f"tapgate MCP server already installed in {path} ({args.scope} scope)")
        return 0
    try:
        _write_atomically(path, output)
    except OSError as exc:
        print(f"tapgate mcp install: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"tapgate MCP server installed in {path} ({args.scope} scope); "
          "restart Claude Code to load it")
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, keeping its mode: Claude Code rewrites
    ``~/.claude.json`` itself, and a half-written file would lose all its settings."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
