"""The shared core of ``tapgate hook <agent>``: event JSON in, one approval, a decision out.

An agent runs the hook before a tool call, with the event as JSON on stdin, and reads
its answer from stdout. The core reads the event, lets the agent's adapter (one small
module per agent, see :data:`ADAPTERS`) translate it into a :class:`HookRequest`,
submits one approval over the socket API (creating the session's run on first use),
waits for a person, and hands a :class:`Verdict` back to the adapter to print.

Failing safe is the point: the hook must never crash, because a crashed hook lets
the tool run. Every error — unreadable stdin, an invalid setting, an unreachable
bot, a refused request, a bug — ends in the agent's fallback answer with the reason,
on stdout, exit code 0.

The hook runs before every tool call, so until the request is posted only the
standard library is used (:class:`LightSocket`); the agents' client (:mod:`bot.client`)
is imported after, to wait for the decision.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

from bot.integrations import approvers
from bot.integrations.light_socket import LightSocket, SocketError
from bot.integrations.summary import payload_of, summarize

MAX_STDIN = 8 * 1024 * 1024  # a Write of a big file arrives whole; more is not an event
WAIT_GRACE = 5.0  # seconds past the TTL: the bot marks the request expired, then we stop
# The API's limits (bot/api/schemas.py, which costs pydantic models to import; a test
# keeps these equal): ids and kinds, a run's name (a payload's: bot.integrations.summary).
MAX_KEY, MAX_NAME = 200, 500

Decision = Literal["allow", "deny", "ask", "pass"]


class HookInputError(ValueError):
    """The event on stdin is not what the agent's contract promises (the reason says how)."""


@dataclass(frozen=True)
class Verdict:
    """What the hook answers: ``allow``, ``deny``, ``ask`` (the agent asks locally) or
    ``pass`` (no opinion: the agent decides as if there were no hook), and why.

    ``updated_input``: with ``allow``, the tool input to run instead of the agent's (the
    approver edited it); only for adapters that declare ``accepts_edits``."""

    decision: Decision
    reason: str = ""
    updated_input: dict[str, Any] | None = None


@dataclass
class HookRequest:
    """One tool call to gate, as the core needs it (built by an adapter)."""

    event: str  # the agent's hook_event_name, e.g. PreToolUse, PermissionRequest, BeforeTool
    tool_name: str
    tool_input: dict[str, Any]
    session_id: str | None = None
    cwd: str | None = None
    tool_use_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more context for the payload


class Adapter(Protocol):
    """One agent's translation. Adding an agent is one module exposing ``ADAPTER`` and a
    line in :data:`ADAPTERS` (and its name in ``bot/integrations/cli.py``)."""

    agent: str  # the approval's ``agent``
    default_event: str  # the event assumed when stdin is too broken to name one
    has_ask: bool  # False: an ``ask`` fallback is answered as deny (the agent cannot ask)
    accepts_edits: bool  # the agent runs a tool input the hook rewrote (an approver's edit)
    session_end: str | None  # the event that ends a session (its run completes), if any

    def parse(self, event: dict[str, Any]) -> HookRequest:
        """The request in ``event``; :class:`HookInputError` when it is not one."""

    def render(self, verdict: Verdict, event: str) -> dict[str, Any]:
        """The JSON object to print for ``verdict`` in a hook of ``event``."""


ADAPTERS = {"claude-code": "bot.integrations.claude_code", "codex": "bot.integrations.codex",
            "gemini": "bot.integrations.gemini"}


def load_adapter(agent: str) -> Adapter:
    """The adapter of ``agent`` (imported on use: a hook loads only its own)."""
    return importlib.import_module(ADAPTERS[agent]).ADAPTER


# --- the command ----------------------------------------------------------------------------


def run_hook(agent: str, args: Any, stdin: Any = None, stdout: Any = None) -> int:
    """``tapgate hook <agent>``: read the event, ask, print the answer; always exit 0.

    ``args``: ``fallback`` (ask|deny|allow|None), ``ttl`` (a duration), ``only`` (a
    regex on the tool name), ``requested_by`` and ``required_approvals`` (as text or
    None: see :mod:`bot.integrations.approvers`), ``socket`` and ``env_file`` (paths or
    None).
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    adapter = load_adapter(agent)
    event_name = adapter.default_event
    fallback = _fallback(adapter, getattr(args, "fallback", None))
    try:
        event = read_event(stdin)
        if isinstance(event.get("hook_event_name"), str):
            event_name = event["hook_event_name"]
        verdict = _decide(adapter, event, args, fallback)
    except HookInputError as exc:
        verdict = _fall_back(fallback, f"unreadable hook input: {exc}")
    except SocketError as exc:
        verdict = _fall_back(fallback, str(exc))
    except Exception as exc:  # noqa: BLE001 (a crashed hook lets the tool run: never crash)
        verdict = _fall_back(fallback, f"{type(exc).__name__}: {exc}")
    _emit(adapter, verdict, event_name, stdout)
    return 0


def _emit(adapter: Adapter, verdict: Verdict, event_name: str, stdout: Any) -> None:
    try:
        answer = adapter.render(verdict, event_name)
    except Exception:  # noqa: BLE001 (an unknown event name, say: the agent's default shape)
        answer = adapter.render(verdict, adapter.default_event)
    stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
    stdout.flush()
    if verdict.decision != "allow" and verdict.reason:
        # The agent's log, for whoever wonders why the hook did not allow.
        print(f"tapgate: {verdict.reason}", file=sys.stderr)


def read_event(stdin: Any) -> dict[str, Any]:
    """The event object on ``stdin`` (bytes); :class:`HookInputError` when it is not one."""
    data = stdin.read(MAX_STDIN + 1)
    if len(data) > MAX_STDIN:
        raise HookInputError(f"more than {MAX_STDIN} bytes on stdin")
    if not data.strip():
        raise HookInputError("stdin is empty (expected the event as JSON)")
    try:
        event = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise HookInputError(f"stdin is not JSON ({str(exc)[:200]})") from None
    if not isinstance(event, dict):
        raise HookInputError(f"expected a JSON object, got {type(event).__name__}")
    return event


def _fallback(adapter: Adapter, chosen: str | None) -> str:
    if chosen == "allow":
        return "allow"  # only ever when the user asked for it
    if chosen == "deny" or not adapter.has_ask:
        return "deny"
    return "ask"


def _fall_back(fallback: str, why: str) -> Verdict:
    return Verdict(fallback, f"Tapgate could not get a decision ({' '.join(why.split())}); "
                             f"fallback: {fallback}")


def _decide(adapter: Adapter, event: dict[str, Any], args: Any, fallback: str) -> Verdict:
    """Everything between the event and the verdict; raises on any failure."""
    if adapter.session_end and event.get("hook_event_name") == adapter.session_end:
        return _end_session(event, args)
    request = adapter.parse(event)
    only = getattr(args, "only", None)
    if only:
        try:
            pattern = re.compile(only)
        except re.error as exc:
            raise HookInputError(f"--only {only!r} is not a regex: {exc}") from None
        if not pattern.fullmatch(request.tool_name):
            return Verdict("pass", f"{request.tool_name} is not gated (--only {only})")

    # Light on purpose: the bot's full settings (pydantic-settings) would cost a hook
    # about half its time budget, and a hook needs only the socket and its server's uid.
    from bot.client_settings import load_client_settings
    from bot.durations import parse_duration

    try:
        ttl = parse_duration(getattr(args, "ttl", None) or "10m")
    except ValueError as exc:
        raise HookInputError(f"--ttl: {exc}") from None
    if not 1 <= ttl <= 30 * 86400:
        raise HookInputError("--ttl: must be between 1s and 30d")
    try:
        # Checked here, not by argparse, as --ttl is: a bad value must end in the
        # fallback answer, never in an exit that leaves the agent without one.
        quorum = approvers.fields(args)
    except ValueError as exc:
        raise HookInputError(str(exc)) from None
    settings = load_client_settings(getattr(args, "env_file", None))
    socket_path = str(getattr(args, "socket", None) or settings.socket_path)
    server_uid = settings.server_uid

    # The request is posted over the standard library (see LightSocket) before the client's
    # heavier imports: that is the hook's whole overhead as the approver sees it.
    sock = LightSocket(socket_path, server_uid)
    try:
        body = {"agent": adapter.agent, "kind": request.tool_name[:MAX_KEY],
                "summary": summarize(request), "payload": payload_of(request),
                "ttl_seconds": ttl, "run_id": _run_for(sock, request),
                "idempotency_key": _key(request.tool_use_id),
                # Without it the bot refuses an approver's Edit: the agent would run the
                # original, not what was approved.
                "accepts_edits": True if adapter.accepts_edits else None, **quorum}
        submitted = sock.call("POST", "/v1/approvals", {k: v for k, v in body.items()
                                                        if v is not None})
    finally:
        sock.close()

    from bot.client import ClientError, TapgateClient
    from storage.records import Approval

    approval = Approval.model_validate(submitted)
    with TapgateClient(socket_path, server_uid=server_uid) as client:
        try:
            # The client's wait long-polls and rides out a restart of the bot.
            approval = client.wait_for_decision(approval, timeout=ttl + WAIT_GRACE)
        except ClientError as exc:
            return _fall_back(fallback, f"waiting for {approval.id}: {exc}")
    return _verdict(approval, fallback, request, adapter.accepts_edits)


def _end_session(event: dict[str, Any], args: Any) -> Verdict:
    """The agent's session ended: complete its run, which ends the session's rules ("This
    session" taps). Nothing to decide, so the answer is always "no opinion"."""
    session = event.get("session_id")
    run_id = _key(session) if isinstance(session, str) else None
    if run_id is None:
        return Verdict("pass")
    try:
        from bot.client_settings import load_client_settings

        settings = load_client_settings(getattr(args, "env_file", None))
        sock = LightSocket(str(getattr(args, "socket", None) or settings.socket_path),
                           settings.server_uid)
        try:
            sock.call("POST", "/v1/runs/" + quote(run_id, safe="") + "/complete")
        finally:
            sock.close()
    except SocketError as exc:
        if exc.status not in (404, 409):  # no run (nothing was asked), or already complete
            return Verdict("pass", f"could not complete run {run_id}: {exc}")
    except Exception as exc:  # noqa: BLE001 (a session's end must never fail the agent)
        return Verdict("pass", f"could not complete run {run_id}: {type(exc).__name__}: {exc}")
    return Verdict("pass")


def _verdict(approval: Any, fallback: str, request: HookRequest | None = None,
             accepts_edits: bool = False) -> Verdict:
    who = approval.decided_by or "an approver"
    if approval.status == "approved" and approval.edited_payload is not None:
        from bot.integrations.edits import edited_verdict

        return edited_verdict(approval, who, request, accepts_edits)
    if approval.status == "approved":
        return Verdict("allow", f"Approved by {who} via Tapgate ({approval.id})")
    if approval.status == "denied":
        why = approval.reason or "no reason given"
        return Verdict("deny", f"Denied by {who} via Tapgate: {why}")
    how = "still pending" if approval.status == "pending" else approval.status
    reason = f": {approval.reason}" if approval.reason else ""
    return _fall_back(fallback, f"request {approval.id} {how}{reason}")


def _key(value: str | None) -> str | None:
    # Only the agent's own id of the call: a key made up from the call's content would
    # hand an old approval to a later, identical call.
    return value if value and len(value) <= MAX_KEY and "\x00" not in value else None


def _run_for(sock: LightSocket, request: HookRequest) -> str | None:
    """The session's run id, creating the run on first use (``None``: no session id)."""
    run_id = _key(request.session_id)
    if run_id is None:
        return None
    path = "/v1/runs/" + quote(run_id, safe="")
    try:
        sock.call("GET", path)
        return run_id
    except SocketError as exc:
        if exc.status != 404:
            raise
    try:
        # Only on a 404: an agent's uid may create a run but not rewrite an existing
        # one's budgets, which a PUT of an existing run would.
        sock.call("PUT", path, {"name": (request.cwd or "")[-MAX_NAME:]})
    except SocketError:
        sock.call("GET", path)  # a parallel hook of the same session created it first
    return run_id


# --- helpers for the adapters ---------------------------------------------------------------


def text_field(event: dict[str, Any], key: str, required: bool = False) -> str | None:
    """``event[key]`` as a string (None when absent and not required)."""
    value = event.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise HookInputError(f"{key!r} must be a non-empty string, got {value!r:.80}")
    return value


def tool_request(event: dict[str, Any], default_event: str,
                 extra_keys: tuple[str, ...] = ()) -> HookRequest:
    """The fields every agent's tool event shares (``tool_name``, ``tool_input``,
    ``session_id``, ``cwd``, ``tool_use_id``, ``transcript_path``, ``hook_event_name``)."""
    tool_input = event.get("tool_input", {})
    if not isinstance(tool_input, dict):
        raise HookInputError(f"'tool_input' must be an object, got {type(tool_input).__name__}")
    extra = {k: event[k] for k in ("transcript_path", *extra_keys) if event.get(k) is not None}
    return HookRequest(
        event=text_field(event, "hook_event_name") or default_event,
        tool_name=text_field(event, "tool_name", required=True),
        tool_input=tool_input,
        session_id=text_field(event, "session_id"),
        cwd=text_field(event, "cwd"),
        tool_use_id=text_field(event, "tool_use_id"),
        extra=extra)
