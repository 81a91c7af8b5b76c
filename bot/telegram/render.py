"""Texts and keyboards for Telegram, in HTML parse mode, escaped everywhere.

Pure functions of records: no I/O, no decisions. Every text fits Telegram's
limits as Telegram counts them (see :mod:`bot.telegram.fit`): fields have
bounds, and what can be long (a payload, a reason) is cut with a note saying
so — the full value stays stored.

Whose voice: a request an agent submitted is shown under the agent's name with
its summary quoted, so nothing an agent writes can pass for the bot's own
words. Only ``budget.grant`` approvals (reserved: the bot writes their summary
and payload itself) are shown in the bot's voice, as "💸 Budget alert".
"""

from __future__ import annotations

import json
import re
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.rules import editable_field
from bot.telegram.fit import (
    MAX_ANSWER,
    MAX_TEXT,
    clip,
    cut,
    esc,
    fmt_time,
    one_line,
    units,
    visible_length,
)
from bot.telegram.render_spend import spend_caption, spend_error, spend_table
from storage.errors import NotAnApprover, SelfApproval
from storage.records import Approval
from storage.rules import NEVER_RULED

__all__ = [
    "MAX_ANSWER", "MAX_TEXT", "PARSE_MODE", "already_answer", "callback_data", "decided_answer",
    "decided_reply", "esc", "fmt_time", "outcome_line", "payload_text", "pending_listing",
    "request_keyboard", "request_text", "spend_caption", "spend_error", "spend_table",
    "visible_length", "who",
]

PARSE_MODE = "HTML"
GRANT_KIND = "budget.grant"

FIELD_MAX = 200  # agent, kind, run id: the API's bound, in UTF-16 units as a backstop
SUMMARY_MAX = 1000  # 500 characters, each possibly astral
WHO_MAX = 100
PAYLOAD_RESERVE = 500  # a long reason leaves at least this much for the payload preview

OUTCOME_ICON = {"approved": "✅", "denied": "❌", "expired": "⌛", "cancelled": "↩️",
                "pending": "⏳"}
OUTCOME_WORD = {"approved": "Approved", "denied": "Denied", "expired": "Expired",
                "cancelled": "Withdrawn", "pending": "Pending"}

PAYLOAD_NOTE = "\n✂️ <i>Payload truncated: showing {shown:,} of {total:,} characters.</i>"
REASON_NOTE = "\n✂️ <i>Reason truncated: showing {shown:,} of {total:,} characters.</i>"


RULE_DECIDER = re.compile(r"^rule:(\d+) \((.+)\)$")
EDITED_MAX = 600  # the edited value an outcome shows (the full value is stored)


def who(decided_by: str | None) -> str:
    """``telegram:123 (@alice)`` → ``@alice``; ``rule:12 (@alice)`` → ``rule #12 (made by
    @alice)``; other deciders as they are (one line, bounded)."""
    if not decided_by:
        return "unknown"
    rule = RULE_DECIDER.match(decided_by)
    if rule:
        return clip(one_line(f"rule #{rule.group(1)} (made by {rule.group(2)})"), WHO_MAX)
    match = re.search(r"\((.+)\)$", decided_by)
    return clip(one_line(match.group(1) if match else decided_by), WHO_MAX)


def edited_value(approval: Approval) -> str | None:
    """The edited part of a request approved with an edit (plain text), else None."""
    edited = approval.edited_payload
    if approval.status != "approved" or edited is None:
        return None
    found = editable_field(edited)
    return found[1] if found is not None else payload_text(edited)


def payload_text(payload: Any) -> str:
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, indent=2, ensure_ascii=False)


def callback_data(approval_id: str, action: str) -> str:
    return f"appr:{approval_id}:{action}"


def _field(value: str) -> str:
    """An agent-supplied inline field, escaped: one line, bounded."""
    return esc(clip(one_line(value), FIELD_MAX))


def request_keyboard(approval: Approval) -> InlineKeyboardMarkup:
    """Approve / Deny; 🔁 This session (with a run) / ♾️ Always (kinds rules may decide);
    💬 Deny with reason / ✏️ Edit (when the request has an editable part). A budget
    alert keeps its two buttons: grant more budget, or keep it as is."""
    def button(text: str, action: str, style: str | None = None) -> InlineKeyboardButton:
        return InlineKeyboardButton(text, callback_data=callback_data(approval.id, action),
                                    style=style)

    if approval.kind == GRANT_KIND:
        return InlineKeyboardMarkup([[button("➕ Grant +50% budget", "approve"),
                                      button("✋ Keep as is", "deny")]])
    rows = [[button("✅ Approve", "approve", "success"), button("❌ Deny", "deny", "danger")]]
    if approval.required_approvals > 1:  # each approver approves it as it is: no rule, no edit
        return InlineKeyboardMarkup(rows + [[button("💬 Deny with reason", "reason")]])
    if approval.kind not in NEVER_RULED:
        rows.append(([button("🔁 This session", "session")] if approval.run_id else [])
                    + [button("♾️ Always", "always")])
    rows.append([button("💬 Deny with reason", "reason")]
                + ([button("✏️ Edit", "edit")] if editable_field(approval.payload) else []))
    return InlineKeyboardMarkup(rows)


def outcome_line(approval: Approval, reason_room: int | None = None) -> str:
    """How the request ended (HTML); a reason longer than ``reason_room`` units is cut
    with a note."""
    status = approval.status
    icon, word = OUTCOME_ICON[status], OUTCOME_WORD[status]
    if status == "pending":
        line = f"{icon} <b>{word}</b> · expires {fmt_time(approval.expires_at)}"
        if approval.required_approvals > 1:
            line += f"\n{progress(approval)}"
        if approval.escalated_at is not None:
            line += "\n⏫ <b>escalated</b>"
        return line
    if status == "expired":
        return f"{icon} <b>{word}</b>\n<i>{fmt_time(approval.decided_at or approval.expires_at)}</i>"
    line = f"{icon} <b>{word}</b>"
    if status in ("approved", "denied"):
        line = f"{icon} <b>{word} by {esc(who(approval.decided_by))}</b>"
    if status == "approved" and approval.required_approvals > 1:
        line = f"{icon} <b>{word} by {_approvers(approval)}</b>"
    edited = edited_value(approval)
    if edited is not None:  # the approver's words: quoted, bounded
        line += f", ✏️ <b>edited</b>:<pre>{esc(clip(edited, EDITED_MAX))}</pre>"
    if approval.reason:
        # Inline after "Denied by …:"; a withdrawal's reason may be an agent's words, which
        # must not start lines of their own.
        reason = one_line(approval.reason)
        total = units(reason)
        if reason_room is not None and total > reason_room:
            shown = cut(reason, max(reason_room - 1, 0))
            note = REASON_NOTE.format(shown=units(shown), total=total)
            line += f": {esc(shown)}…{note}"
        else:
            line += f": {esc(reason)}"
    return f"{line}\n<i>{fmt_time(approval.decided_at)}</i>"


def _head(approval: Approval) -> list[str]:
    """Who is asking, and what: the agent's words quoted, the bot's only for budget alerts."""
    run = [f"Run: <code>{_field(approval.run_id)}</code>"] if approval.run_id else []
    if approval.kind == GRANT_KIND:  # the bot's own sentence (it quotes the run's label)
        return ["💸 <b>Budget alert</b>",
                f"<b>{esc(clip(one_line(approval.summary), SUMMARY_MAX))}</b>", *run]
    summary = esc(clip(approval.summary, SUMMARY_MAX))
    return [f"🔐 Request from agent <b>{_field(approval.agent)}</b>",
            f"Kind: <code>{_field(approval.kind)}</code>", *run,
            f"<blockquote>{summary}</blockquote>"]


def request_text(approval: Approval) -> str:
    """The request message: who asks, the quoted summary, run, payload preview,
    expiry/outcome, id — at most 4096 visible characters whatever the field lengths.

    A too-long reason is cut first (leaving room for a payload preview), then the
    payload preview takes what is left; each cut says how much is shown.
    """
    head = "\n".join(_head(approval))
    tail = f"ID: <code>{esc(approval.id)}</code>"
    body = payload_text(approval.payload)

    def compose(outcome: str, payload_html: str) -> str:
        middle = f"\n\n{payload_html}" if payload_html else ""
        return f"{head}{middle}\n\n{outcome}\n{tail}"

    outcome = outcome_line(approval)
    if approval.reason:
        bare = approval.model_copy(update={"reason": None})
        frame = visible_length(compose(outcome_line(bare), "<pre>…</pre>" if body else ""))
        room = (MAX_TEXT - frame - (PAYLOAD_RESERVE if body else 0) - 2  # ": " before it
                - visible_length(REASON_NOTE.format(shown=10**6, total=10**6)))
        outcome = outcome_line(approval, room)
    if not body:
        return compose(outcome, "")
    full = compose(outcome, f"<pre>{esc(body)}</pre>")
    if visible_length(full) <= MAX_TEXT:
        return full
    total = units(body)
    budget = (MAX_TEXT - visible_length(compose(outcome, "<pre>…</pre>"))
              - visible_length(PAYLOAD_NOTE.format(shown=total, total=total)))
    shown = cut(body, budget)
    note = PAYLOAD_NOTE.format(shown=units(shown), total=total)
    return compose(outcome, f"<pre>{esc(shown)}…</pre>{note}")


def already_answer(approval: Approval) -> str:
    """The callback popup for a tap on a request that is already final (≤ 200 chars)."""
    status = approval.status
    if status in ("approved", "denied"):
        text = f"Already {status} by {who(approval.decided_by)}"
        if edited_value(approval) is not None:
            text += " (edited)"
        if approval.reason:
            text += f": {approval.reason}"
    elif status == "expired":
        text = "This request has expired."
    elif status == "cancelled":
        text = "This request was withdrawn."
    else:
        text = "This request is still pending."
    return clip(text, MAX_ANSWER)


def decided_answer(approval: Approval) -> str:
    if approval.status == "pending" and approval.required_approvals > 1:
        return (f"✅ Counted: {len(approval.approvals)} of {approval.required_approvals} "
                "approvals")
    return f"{OUTCOME_ICON[approval.status]} {OUTCOME_WORD[approval.status]}"


def _approvers(approval: Approval) -> str:
    names = ", ".join(who(v.by) for v in approval.approvals) or "nobody yet"
    return esc(clip(names, WHO_MAX * 2))


def progress(approval: Approval) -> str:
    """``✅ 1 of 2: @alice`` for a request that needs several approvers (HTML)."""
    line = f"✅ {len(approval.approvals)} of {approval.required_approvals}"
    if approval.approvals:
        line += f": {_approvers(approval)}"
    if approval.requested_by is not None:
        line += f"\n<i>for user {approval.requested_by}, whose own approval does not count</i>"
    return line


NOT_AN_APPROVER = ("🚫 Only this route's approvers may decide this request (anyone allowed "
                   "may once it escalates).")


def vote_refused(error) -> str:
    """The popup for a decision that did not count (a second tap, the requester's own, or
    one by someone not among the request's route approvers)."""
    approval = error.approval
    if isinstance(error, NotAnApprover):
        return NOT_AN_APPROVER
    if isinstance(error, SelfApproval):
        return clip("🚫 This request acts for you: your approval does not count (separation "
                    f"of duties). It needs {approval.required_approvals} other approvers.",
                    MAX_ANSWER)
    return clip(f"You already approved this. It needs {approval.required_approvals} distinct "
                f"approvers ({len(approval.approvals)} so far).", MAX_ANSWER)


def decided_reply(approval: Approval) -> str:
    """The reply to ``/approve`` or ``/deny``: the outcome, the id, whose request it was."""
    asker = ("💸 Budget alert" if approval.kind == GRANT_KIND
             else f"request from agent <b>{esc(clip(one_line(approval.agent), 60))}</b>")
    return (f"{decided_answer(approval)}: <code>{esc(approval.id)}</code> · {asker}\n"
            f"<i>{esc(clip(one_line(approval.summary), 200))}</i>")


PENDING_LISTED = 10
LISTED_FIELD_MAX = 40
LISTED_SUMMARY_MAX = 120


def _listed(n: int, approval: Approval) -> str:
    """One entry of ``/pending``: bounded, one line per part, the agent's words quoted."""
    if approval.kind == GRANT_KIND:
        who_asks = "💸 Budget alert"
    else:
        who_asks = (f"agent <b>{esc(clip(one_line(approval.agent), LISTED_FIELD_MAX))}</b> · "
                    f"<code>{esc(clip(one_line(approval.kind), LISTED_FIELD_MAX))}</code>")
    summary = esc(clip(one_line(approval.summary), LISTED_SUMMARY_MAX))
    if approval.kind != GRANT_KIND:
        summary = f"<i>“{summary}”</i>"
    return (f"{n}. <code>{esc(approval.id)}</code> · {who_asks}\n   {summary}\n"
            f"   expires {fmt_time(approval.expires_at)}")


def pending_listing(approvals: list[Approval], more: int) -> tuple[str, InlineKeyboardMarkup | None]:
    """``/pending``: one message, oldest first, buttons per request, "and N more"."""
    if not approvals:
        return "No pending requests. 🎉", None
    total = len(approvals) + more
    shown = list(approvals)
    while True:  # the bounds above make 10 entries fit; this keeps it so whatever they are
        hidden = total - len(shown)
        lines = [f"⏳ <b>Pending requests</b> ({total})", ""]
        lines += [_listed(n, a) for n, a in enumerate(shown, 1)]
        if hidden:
            lines.append(f"\n…and {hidden} more.")
        text = "\n".join(lines)
        if visible_length(text) <= MAX_TEXT or len(shown) == 1:
            break
        shown.pop()
    rows = [[InlineKeyboardButton(f"✅ {n}", callback_data=callback_data(a.id, "approve")),
             InlineKeyboardButton(f"❌ {n}", callback_data=callback_data(a.id, "deny"))]
            for n, a in enumerate(shown, 1)]
    return text, InlineKeyboardMarkup(rows)


def already_reply(approval: Approval) -> str:
    return esc(already_answer(approval))


def no_such_request(approval_id: str) -> str:
    return f"⚠️ No request <code>{esc(clip(one_line(approval_id), 40))}</code>."


def usage(verb: str) -> str:
    if verb == "approve":
        return "Usage: /approve &lt;id&gt;"
    return "Usage: /deny &lt;id&gt; [reason]"


FAILED = "⚠️ Something went wrong; the error was logged. Please try again."
"""What a user sees when a handler fails (the message and the callback popup)."""

REFUSE_TAP_STRANGER = "⛔ You are not allowed to decide on requests."
REFUSE_TAP_ELSEWHERE = "⛔ Requests can only be decided in an approver chat."
INVALID_BUTTON = "⚠️ This button is not valid."
UNKNOWN_REQUEST = "⚠️ Unknown request."


def refusal(stranger: bool, user_id: int | None) -> str:
    """The one short answer a command gets where it is not allowed: a stranger in an
    approver chat, or anyone in a chat that is not an approver chat. It tells the
    sender their own user id (what the owner needs to add them) and nothing else."""
    uid = "?" if user_id is None else str(user_id)
    if stranger:
        return (f"⛔ You are not an approver here. Your Telegram user id is <code>{uid}</code>; "
                "the bot's owner can add it to TAPGATE_APPROVER_USER_IDS.")
    return (f"⛔ This is not an approver chat. Your Telegram user id is <code>{uid}</code>.")


HELP = (
    "<b>Tapgate</b> asks you before an AI agent acts.\n\n"
    "Tap <b>Approve</b> or <b>Deny</b> on a request; 🔁 <b>This session</b> or ♾️ "
    "<b>Always</b> approves it and the same request again (a rule); 💬 denies it with a "
    "reason; ✏️ approves it edited. Or use:\n"
    "/pending – requests waiting for a decision\n"
    "/approve &lt;id&gt; – approve a request\n"
    "/deny &lt;id&gt; [reason] – deny a request\n"
    "/rules – rules approving requests by themselves (revoke them there)\n"
    "/revoke &lt;rule id&gt; – revoke a rule\n"
    "/spend [by] [since] [until] – what the agents cost "
    "(by: model, provider, day, name, metadata.KEY; since: today, 7d, 30d or a date)\n"
    "/help – this message"
)

COMMANDS = [
    ("pending", "Requests waiting for a decision"),
    ("approve", "Approve a request: /approve <id>"),
    ("deny", "Deny a request: /deny <id> [reason]"),
    ("rules", "Rules that approve requests by themselves"),
    ("revoke", "Revoke a rule: /revoke <rule id>"),
    ("spend", "What the agents cost: /spend [by] [since] [until]"),
    ("help", "How to use Tapgate"),
]


DIGEST_KIND_MAX = 40


def outcomes_digest(items: list[tuple[str, str, str]]) -> str:
    """One message for requests decided before their copy could be posted in a chat
    (after an outage, or while the chat refused the bot), instead of replaying each.

    ``items`` are ``(approval id, kind, status)``, newest first; as many lines as
    fit in Telegram's 4096 visible characters are listed, then "…and N more".
    """
    head = (f"🗂 <b>{len(items):,} requests were decided before they could be posted "
            "here</b>\n<i>Newest first; they are not posted one by one.</i>\n")
    used, lines = visible_length(head), []
    for n, (approval_id, kind, status) in enumerate(items):
        icon, word = OUTCOME_ICON.get(status, "•"), OUTCOME_WORD.get(status, status)
        line = (f"\n{icon} <code>{esc(approval_id)}</code> · "
                f"{esc(clip(one_line(kind), DIGEST_KIND_MAX))} · {esc(word)}")
        left = len(items) - n - 1
        tail = visible_length(f"\n…and {left:,} more.") if left else 0
        if used + visible_length(line) + tail > MAX_TEXT:
            break
        used += visible_length(line)
        lines.append(line)
    more = len(items) - len(lines)
    return head + "".join(lines) + (f"\n…and {more:,} more." if more else "")
