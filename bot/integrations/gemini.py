"""Gemini CLI's ``BeforeTool`` hook contract.

stdin: ``{session_id, transcript_path, cwd, hook_event_name, timestamp, tool_name,
tool_input, mcp_context?}`` (tools such as ``run_shell_command``, ``write_file``,
``replace``; MCP tools ``mcp__<server>__<tool>``).

Answer (exit 0): ``{"decision": "allow"|"deny", "reason": "..."}``; the reason of a
denial is what the model is told. Gemini CLI has no "ask the local user" answer, so
an ``ask`` fallback is a deny. "No opinion" (a tool outside ``--only``) is ``{}``.
``SessionEnd`` completes the session's run (ending its "this session" rules); ``{}``.
An approver's edit: ``allow`` with ``hookSpecificOutput.tool_input``, which "merges
with and overrides the model's arguments before execution" (docs/hooks/reference.md).
"""

from __future__ import annotations

from typing import Any

from bot.integrations.core import HookRequest, Verdict, tool_request


class Gemini:
    agent = "gemini"
    default_event = "BeforeTool"
    has_ask = False
    accepts_edits = True
    session_end = "SessionEnd"

    def parse(self, event: dict[str, Any]) -> HookRequest:
        return tool_request(event, self.default_event, ("mcp_context",))

    def render(self, verdict: Verdict, event: str) -> dict[str, Any]:
        if verdict.decision == "pass":
            return {}
        decision = "allow" if verdict.decision == "allow" else "deny"
        answer: dict[str, Any] = {"decision": decision, "reason": verdict.reason}
        if decision == "allow" and verdict.updated_input is not None:
            answer["hookSpecificOutput"] = {"tool_input": verdict.updated_input}
        return answer


ADAPTER = Gemini()
