"""An approver's edit, applied to the tool call the hook gates.

The approval comes back with ``edited_payload``: the request's payload with its editable
field (:func:`bot.rules.editable_field`: the shell command, or the main string argument)
changed. The agent gets its own tool input back with only that field replaced.
"""

from __future__ import annotations

import copy
from typing import Any

from bot.integrations.core import HookRequest, Verdict


def edited_verdict(approval: Any, who: str, request: HookRequest | None,
                   accepts_edits: bool) -> Verdict:
    """Allow with the agent's own tool input, only the field the approver edited replaced.

    The edited payload is never sent back whole: its tool input may have been cut to fit
    the API's limit (:func:`bot.integrations.summary.payload_of`). What cannot be applied
    is denied, never run as the original: that is not what was approved."""
    updated = edited_input(approval.edited_payload, request) if accepts_edits else None
    if updated is None:
        return Verdict("deny", f"Approved by {who} via Tapgate ({approval.id}) only with an "
                               "edit this agent cannot run; not running the original")
    return Verdict("allow", f"Approved with an edit by {who} via Tapgate ({approval.id})",
                   updated)


def edited_input(edited_payload: Any, request: HookRequest | None) -> dict[str, Any] | None:
    """``request.tool_input`` with the edited field (:func:`bot.rules.editable_field` of the
    edited payload) replaced; None when the edit is not a string field of the tool input
    that the original had as a string too."""
    from bot.rules import editable_field

    found = editable_field(edited_payload) if request is not None else None
    if found is None:
        return None
    where, value = found
    if len(where) < 2 or where[0] != "tool_input" or not isinstance(value, str):
        return None
    updated = copy.deepcopy(request.tool_input)
    node: Any = updated
    for key in where[1:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not isinstance(node.get(where[-1]), str):
        return None
    node[where[-1]] = value
    return updated
