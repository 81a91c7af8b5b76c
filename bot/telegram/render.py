"""Texts and keyboards for Telegram, in HTML parse mode, escaped everywhere.

Pure functions of records: no I/O, no decisions. Telegram's 4096-character
limit applies to the text the user sees (tags removed, entities decoded,
counted in UTF-16 code units), so lengths are measured that way.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from storage.records import Approval, UsageSummary

PARSE_MODE = "HTML"
MAX_TEXT = 4096
MAX_ANSWER = 200
PENDING_LISTED = 10
_TAG = re.compile(r"<[^>]+>")

OUTCOME_ICON = {"approved": "✅", "denied": "❌", "expired": "⌛", "cancelled": "↩️",
                "pending": "⏳"}
OUTCOME_WORD = {"approved": "Approved", "denied": "Denied", "expired": "Expired",
                "cancelled": "Withdrawn", "pending": "Pending"}


def esc(value: Any) -> str:
    """Escape any value for HTML parse mode."""
    return html.escape(str(value), quote=False)


def visible_length(text: str) -> int:
    """Length Telegram counts: tags stripped, entities decoded, in UTF-16 code units."""
    plain = html.unescape(_TAG.sub("", text))
    return len(plain.encode("utf-16-le")) // 2


def _utf16_cut(text: str, units: int) -> str:
    """The longest prefix of ``text`` that is at most ``units`` UTF-16 code units."""
    encoded = text.encode("utf-16-le")[: max(units, 0) * 2]
    return encoded.decode("utf-16-le", errors="ignore")


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def who(decided_by: str | None) -> str:
    """``telegram:123 (@alice)`` → ``@alice``; other deciders as they are."""
    if not decided_by:
        return "unknown"
    match = re.search(r"\((.+)\)$", decided_by)
    return match.group(1) if match else decided_by


def payload_text(payload: Any) -> str:
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, indent=2, ensure_ascii=False)


def callback_data(approval_id: str, action: str) -> str:
    return f"appr:{approval_id}:{action}"


GRANT_KIND = "budget.grant"


def request_keyboard(approval: Approval) -> InlineKeyboardMarkup:
    """Approve / Deny; a budget alert's Approve grants more budget."""
    yes, no = ("✅ Approve", "❌ Deny")
    if approval.kind == GRANT_KIND:
        yes, no = ("➕ Grant +50% budget", "✋ Keep as is")
    return InlineKeyboardMarkup([[
        InlineKeyboardButton(yes, callback_data=callback_data(approval.id, "approve")),
        InlineKeyboardButton(no, callback_data=callback_data(approval.id, "deny")),
    ]])


def outcome_line(approval: Approval) -> str:
    """One line saying how the request ended (HTML)."""
    status = approval.status
    icon, word = OUTCOME_ICON[status], OUTCOME_WORD[status]
    if status in ("approved", "denied"):
        line = f"{icon} <b>{word} by {esc(who(approval.decided_by))}</b>"
        if approval.reason:
            line += f": {esc(approval.reason)}"
        return f"{line}\n<i>{fmt_time(approval.decided_at)}</i>"
    if status == "expired":
        return f"{icon} <b>{word}</b>\n<i>{fmt_time(approval.decided_at or approval.expires_at)}</i>"
    if status == "cancelled":
        line = f"{icon} <b>{word}</b>"
        if approval.reason:
            line += f": {esc(approval.reason)}"
        return f"{line}\n<i>{fmt_time(approval.decided_at)}</i>"
    return f"{icon} <b>{word}</b> · expires {fmt_time(approval.expires_at)}"


def request_text(approval: Approval) -> str:
    """The request message: kind, summary, agent, run, payload preview, expiry/outcome, id.

    The payload preview is cut (with a note saying how much is shown) so the
    visible text fits in 4096 characters; the full payload stays stored.
    """
    title = "💸 Budget alert" if approval.kind == GRANT_KIND else "🔐 Approval request"
    head = [f"{title} · <code>{esc(approval.kind)}</code>",
            f"<b>{esc(approval.summary)}</b>",
            f"Agent: {esc(approval.agent)}"]
    if approval.run_id:
        head.append(f"Run: <code>{esc(approval.run_id)}</code>")
    tail = [outcome_line(approval), f"ID: <code>{esc(approval.id)}</code>"]
    body = payload_text(approval.payload)
    if not body:
        return "\n".join(head + [""] + tail)
    frame_before = "\n".join(head) + "\n\n<pre>"
    frame_after = "</pre>\n\n" + "\n".join(tail)
    full = frame_before + esc(body) + frame_after
    if visible_length(full) <= MAX_TEXT:
        return full
    total = len(body.encode("utf-16-le")) // 2
    note_template = "\n✂️ <i>Payload truncated: showing {shown:,} of {total:,} characters.</i>"
    budget = (MAX_TEXT - visible_length(frame_before + frame_after)
              - visible_length(note_template.format(shown=total, total=total)) - 1)
    cut = _utf16_cut(body, budget)
    shown = len(cut.encode("utf-16-le")) // 2
    note = note_template.format(shown=shown, total=total)
    return frame_before + esc(cut) + "…</pre>" + note + "\n\n" + "\n".join(tail)


def already_answer(approval: Approval) -> str:
    """The callback popup for a tap on a request that is already final (≤ 200 chars)."""
    status = approval.status
    if status in ("approved", "denied"):
        text = f"Already {status} by {who(approval.decided_by)}"
        if approval.reason:
            text += f": {approval.reason}"
    elif status == "expired":
        text = "This request has expired."
    elif status == "cancelled":
        text = "This request was withdrawn."
    else:
        text = "This request is still pending."
    return text[:MAX_ANSWER]


def decided_answer(approval: Approval) -> str:
    return f"{OUTCOME_ICON[approval.status]} {OUTCOME_WORD[approval.status]}"[:MAX_ANSWER]


def pending_listing(approvals: list[Approval], more: int) -> tuple[str, InlineKeyboardMarkup | None]:
    """``/pending``: one message, oldest first, buttons per request, "and N more"."""
    if not approvals:
        return "No pending requests. 🎉", None
    lines = [f"⏳ <b>Pending requests</b> ({len(approvals) + more})", ""]
    rows = []
    for n, a in enumerate(approvals, 1):
        summary = a.summary if len(a.summary) <= 120 else a.summary[:119] + "…"
        lines.append(f"{n}. <code>{esc(a.id)}</code> · {esc(a.kind)} · {esc(a.agent)}\n"
                     f"   {esc(summary)}\n   expires {fmt_time(a.expires_at)}")
        rows.append([
            InlineKeyboardButton(f"✅ {n}", callback_data=callback_data(a.id, "approve")),
            InlineKeyboardButton(f"❌ {n}", callback_data=callback_data(a.id, "deny")),
        ])
    if more:
        lines.append(f"\n…and {more} more.")
    return "\n".join(lines), InlineKeyboardMarkup(rows)


HELP = (
    "<b>Tapgate</b> asks you before an AI agent acts.\n\n"
    "Tap <b>Approve</b> or <b>Deny</b> on a request, or use:\n"
    "/pending – requests waiting for a decision\n"
    "/approve &lt;id&gt; – approve a request\n"
    "/deny &lt;id&gt; [reason] – deny a request\n"
    "/spend [by] [since] [until] – what the agents cost "
    "(by: model, provider, day, name, metadata.KEY; since: today, 7d, 30d or a date)\n"
    "/help – this message"
)

COMMANDS = [
    ("pending", "Requests waiting for a decision"),
    ("approve", "Approve a request: /approve <id>"),
    ("deny", "Deny a request: /deny <id> [reason]"),
    ("spend", "What the agents cost: /spend [by] [since] [until]"),
    ("help", "How to use Tapgate"),
]


def spend_table(summary: UsageSummary, window_label: str) -> str:
    """``/spend``: a monospace table of the groups and a total line."""
    header = ["KEY", "CALLS", "TOKENS", "DOLLARS"]
    rows = [[g.key or "(empty)", f"{g.calls:,}", f"{g.prompt_tokens + g.completion_tokens:,}",
             f"${g.dollars:,.4f}"] for g in summary.groups]
    total = summary.total
    footer = ["TOTAL", f"{total.calls:,}", f"{total.prompt_tokens + total.completion_tokens:,}",
              f"${total.dollars:,.4f}"]
    for row in rows:
        if len(row[0]) > 28:
            row[0] = row[0][:27] + "…"
    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(4)]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(row))

    lines = [fmt(header), *[fmt(r) for r in rows], "-" * len(fmt(header)), fmt(footer)]
    title = f"💸 <b>Spend by {esc(summary.by)}</b> · {esc(window_label)}"
    extra = ""
    if summary.unpriced_calls:
        extra = (f"\n⚠️ {summary.unpriced_calls:,} unpriced call(s) (unknown model price) "
                 "are counted in calls and tokens but not in dollars.")
    text = f"{title}\n<pre>{esc(chr(10).join(lines))}</pre>{extra}"
    if visible_length(text) > MAX_TEXT:
        keep = max(1, len(rows) - (visible_length(text) - MAX_TEXT) // (sum(widths) + 8) - 2)
        cut = [fmt(r) for r in rows[:keep]]
        lines = [fmt(header), *cut, f"… {len(rows) - keep} more groups", "-" * len(fmt(header)),
                 fmt(footer)]
        text = f"{title}\n<pre>{esc(chr(10).join(lines))}</pre>{extra}"
    return text
