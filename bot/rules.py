"""Rules and edits as an approver makes them: what a tap on "This session" or "Always"
creates, how far "Always" may be widened, and which part of a request "Edit" changes.

Pure functions of records; the rows live in :mod:`storage.rules`, which also holds
the matcher (it runs inside the transaction that creates a request).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from storage.errors import InvalidArgument
from storage.records import Approval
from storage.rule_records import NewRule
from storage.rules import NEVER_RULED, SHELL_CONTROL, expires_in, is_shell_kind

MAX_MATCH = 500  # a summary's bound: a glob is at most one summary long
MAX_WIDEN = 2
EDIT_KEYS = ("command", "cmd", "query", "url", "path", "file_path", "content", "text", "prompt")

def validate_new_rule(agent: str, kind: str, match: str) -> None:
    """InvalidArgument naming what is wrong with a rule a person asked for."""
    if kind in NEVER_RULED:
        raise InvalidArgument(f"kind {kind!r} is never decided by a rule (budget grants and "
                              "tool calls are decided one by one)")
    for name, value in (("agent", agent), ("kind", kind), ("match", match)):
        if not value or not value.strip():
            raise InvalidArgument(f"{name} must not be empty")
        if "\x00" in value:
            raise InvalidArgument(f"{name} must not contain NUL")
        if len(value) > (MAX_MATCH if name == "match" else 200):
            raise InvalidArgument(f"{name} is too long")


def _one_approver(approval: Approval) -> None:
    if approval.required_approvals > 1:
        raise InvalidArgument(f"this request needs {approval.required_approvals} approvers: a "
                              "rule, one person's standing decision, cannot stand in for them")


def session_rule(approval: Approval, by: str, chat_id: int | None, ttl_seconds: float,
                 now: datetime) -> NewRule:
    """"This session": the same agent and kind, this exact summary, in this run only, until
    the run ends or ``ttl_seconds`` pass."""
    if approval.run_id is None:
        raise InvalidArgument("a session rule needs a request with a run_id")
    _one_approver(approval)
    validate_new_rule(approval.agent, approval.kind, approval.summary)
    return NewRule(agent=approval.agent, kind=approval.kind, match=approval.summary,
                   run_id=approval.run_id, created_by=by, expires_at=expires_in(now, ttl_seconds),
                   chat_id=chat_id, origin=approval.summary, source_approval_id=approval.id,
                   submitter_uid=approval.submitter_uid)


def always_rule(approval: Approval, by: str, chat_id: int | None) -> NewRule:
    """"Always": the same agent and kind, this exact summary, any run, until revoked
    (a shell-like request may then be widened: :func:`widen_options`)."""
    _one_approver(approval)
    validate_new_rule(approval.agent, approval.kind, approval.summary)
    return NewRule(agent=approval.agent, kind=approval.kind, match=approval.summary,
                   created_by=by, chat_id=chat_id, origin=approval.summary,
                   source_approval_id=approval.id, submitter_uid=approval.submitter_uid)


def widen_options(summary: str | None, kind: str) -> list[str]:
    """The wider globs an approver may pick for an "Always" rule on a shell command:
    ``git status -s`` → ``["git status *", "git *"]``. None for other kinds, for a
    command that chains or redirects (a prefix would say nothing about the rest), or
    for one holding ``*`` itself (a glob of it would match more than it says)."""
    if not summary or not is_shell_kind(kind) or SHELL_CONTROL.search(summary) or "*" in summary:
        return []
    words = summary.split()
    options = []
    for keep in range(min(len(words) - 1, MAX_WIDEN), 0, -1):
        options.append(" ".join(words[:keep]) + " *")
    return options


def _string_at(container: Any, key: str) -> bool:
    return isinstance(container, dict) and isinstance(container.get(key), str)


def editable_field(payload: Any) -> tuple[tuple[str, ...], str] | None:
    """Where the request's editable part is, and its value: the payload itself when it
    is a string; else the first of :data:`EDIT_KEYS` holding a string, in
    ``payload["tool_input"]`` (the hooks' shape) first, then in the payload."""
    if isinstance(payload, str):
        return (), payload
    if not isinstance(payload, dict):
        return None
    tool_input = payload.get("tool_input")
    for key in EDIT_KEYS:
        if _string_at(tool_input, key):
            return ("tool_input", key), tool_input[key]
        if _string_at(payload, key):
            return (key,), payload[key]
    return None


def with_edit(payload: Any, path: tuple[str, ...], value: str) -> Any:
    """A copy of ``payload`` with the string at ``path`` replaced by ``value``."""
    if not path:
        return value
    edited = copy.deepcopy(payload)
    holder = edited
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return edited
