"""Codex's ``PermissionRequest`` hook contract.

stdin: ``{session_id, turn_id, transcript_path, cwd, model, permission_mode,
hook_event_name, tool_name, tool_input}``; ``tool_name`` is ``Bash`` (shell and exec
approvals) or ``NetworkAccess``, ``tool_input`` is ``{command, description?}``. There is
no ``tool_use_id``, so a retried Codex hook is not deduplicated.

Answer: ``{"hookSpecificOutput": {"hookEventName": "PermissionRequest", "decision":
{"behavior": "allow"}}}`` or ``{"behavior": "deny", "message": "..."}``. Codex's schema
(``codex-rs/hooks/schema/generated/permission-request.command.output.schema.json``)
refuses unknown keys at every level, and ``updatedInput`` or ``interrupt: true`` make
the hook fail closed, so only these are printed, and the hook tells the bot it cannot
take an approver's edit (the bot then refuses the Edit button). No decision (``{}``, or only a
``systemMessage``) sends the request down Codex's normal approval path: that is ``ask``.
"""

from __future__ import annotations

from typing import Any

from bot.integrations.core import HookRequest, Verdict, tool_request


class Codex:
    agent = "codex"
    default_event = "PermissionRequest"
    has_ask = True
    accepts_edits = False  # Codex fails closed on updatedInput
    session_end = None  # Codex has no hook at the end of a session

    def parse(self, event: dict[str, Any]) -> HookRequest:
        return tool_request(event, self.default_event, ("turn_id", "model", "permission_mode"))

    def render(self, verdict: Verdict, event: str) -> dict[str, Any]:
        if verdict.decision == "pass":
            return {}
        if verdict.decision == "ask":
            return {"systemMessage": verdict.reason} if verdict.reason else {}
        decision: dict[str, Any] = {"behavior": verdict.decision}
        if verdict.decision == "deny":
            decision["message"] = verdict.reason
        return {"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                       "decision": decision}}


ADAPTER = Codex()
