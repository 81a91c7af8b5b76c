"""Claude Code's hook contract: ``PreToolUse`` and ``PermissionRequest`` command hooks.

stdin: ``{session_id, transcript_path, cwd, permission_mode, hook_event_name, tool_name,
tool_input, tool_use_id}`` (MCP tools are named ``mcp__<server>__<tool>``).

- ``PreToolUse``: ``{"hookSpecificOutput": {"hookEventName": "PreToolUse",
  "permissionDecision": "allow"|"deny"|"ask", "permissionDecisionReason": "..."}}``; a
  denial's reason is shown to the model, so the approver's reason reaches the agent.
- ``PermissionRequest`` (only where Claude Code would show its dialog):
  ``{"hookSpecificOutput": {"hookEventName": "PermissionRequest", "decision":
  {"behavior": "allow"}}}`` or ``{"behavior": "deny", "message": "..."}``; no decision
  leaves the local dialog in place (the reason goes to the user as ``systemMessage``).
- An approver's edit: ``allow`` with the tool input to run, ``updatedInput`` beside
  ``permissionDecision`` (PreToolUse) or in the ``decision`` (PermissionRequest); it
  replaces the whole input, so it is the agent's own input with one field changed.

"No opinion" (a tool outside ``--only``) is ``{}``: Claude Code decides as usual.
``SessionEnd`` (stdin ``{session_id, ..., reason}``) completes the session's run, which ends
the rules an approver made for "this session"; the answer is ``{}``.
"""

from __future__ import annotations

from typing import Any

from bot.integrations.core import HookRequest, Verdict, tool_request

PERMISSION_REQUEST = "PermissionRequest"


class ClaudeCode:
    agent = "claude-code"
    default_event = "PreToolUse"
    has_ask = True
    accepts_edits = True
    session_end = "SessionEnd"

    def parse(self, event: dict[str, Any]) -> HookRequest:
        return tool_request(event, self.default_event, ("permission_mode",))

    def render(self, verdict: Verdict, event: str) -> dict[str, Any]:
        if verdict.decision == "pass":
            return {}
        if event == PERMISSION_REQUEST:
            if verdict.decision == "ask":  # no decision: the local dialog stays
                return {"systemMessage": verdict.reason} if verdict.reason else {}
            decision: dict[str, Any] = {"behavior": verdict.decision}
            if verdict.decision == "deny":
                decision["message"] = verdict.reason
            elif verdict.updated_input is not None:
                decision["updatedInput"] = verdict.updated_input
            return {"hookSpecificOutput": {"hookEventName": PERMISSION_REQUEST,
                                           "decision": decision}}
        specific = {"hookEventName": "PreToolUse", "permissionDecision": verdict.decision,
                    "permissionDecisionReason": verdict.reason}
        if verdict.decision == "allow" and verdict.updated_input is not None:
            specific["updatedInput"] = verdict.updated_input
        return {"hookSpecificOutput": specific}


ADAPTER = ClaudeCode()
