"""Approvers per route: who may decide a request in Telegram.

A route may name its approvers (Telegram user ids). A request it matched keeps them
(``approval.approvers``) and, until it escalates, only they may decide it in Telegram:
every tap, command, reply, digest line and rule-making tap ends in the compare-and-set
of :meth:`storage.approvals.ApprovalStore._transition` or a vote of
:func:`storage.quorum.cast_vote`, and both hold this condition. Deciders that are not
Telegram users (the socket API, the CLI, expiry) are the operator's tools and are not
limited. Once a request escalates, any allowed user may decide it: escalation is asking
someone else.
"""

from __future__ import annotations

import re

_TELEGRAM = re.compile(r"^telegram:(\d+)(?:\s|$)")


def encode(ids: list[int] | None) -> str | None:
    """``[1001, 1002]`` → ``",1001,1002,"`` (the column's form); None stays None."""
    return None if ids is None else "," + ",".join(str(i) for i in ids) + ","


def decode(text: str | None) -> list[int] | None:
    return None if text is None else [int(part) for part in text.strip(",").split(",") if part]


def telegram_user(decided_by: str) -> int | None:
    """``telegram:1001 (@alice)`` → 1001; None for every other decider."""
    found = _TELEGRAM.match(decided_by or "")
    return int(found.group(1)) if found else None


def like_pattern(decided_by: str) -> str:
    """The compare-and-set's parameter: a Telegram user must be in the list; anyone
    else matches every list (``%``)."""
    uid = telegram_user(decided_by)
    return "%" if uid is None else f"%,{uid},%"


def may_decide(approvers: list[int] | None, escalated: bool, decided_by: str) -> bool:
    """The rule the compare-and-set holds, for callers with the record in hand."""
    uid = telegram_user(decided_by)
    return approvers is None or escalated or uid is None or uid in approvers


def rule_applies(approvers: list[int] | None, created_by: str) -> bool:
    """A standing rule stands in for the person who made it: it approves a request with
    approvers only if that person is one (rules made with the CLI or the API: always)."""
    uid = telegram_user(created_by)
    return approvers is None or uid is None or uid in approvers
