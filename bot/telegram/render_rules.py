"""Texts and keyboards of the decisions beyond Approve/Deny: the ForceReply prompts for a
reason or an edit, rules (the widen offer, ``/rules``, the hourly digest line) and the
popups of those buttons. Pure functions, HTML parse mode, escaped everywhere.

Whose voice: a request's summary, agent, kind and values are the governed party's
words: quoted (``<blockquote>``, ``<pre>``, ``<code>``) or shown as bounded one-line
fields, never as a sentence of the bot's.
"""

from __future__ import annotations

from collections.abc import Sequence

from telegram import CopyTextButton, ForceReply, InlineKeyboardButton, InlineKeyboardMarkup

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
from storage.clock import as_utc
from storage.records import Approval
from storage.rule_records import Rule, RuleUse

PROMPT_SUMMARY_MAX = 300
NAME_MAX = 60  # agent and kind, inline
MATCH_MAX = 300
COPY_MAX = 256  # CopyTextButton.text: 1-256 characters
PLACEHOLDER_MAX = 64
EDIT_VALUE_NOTE = "\n✂️ <i>Value truncated: showing {shown:,} of {total:,} characters.</i>"
RULES_LISTED = 20  # at most this many rules in one /rules message (one Revoke button each)
LISTED_MATCH_MAX = 120
LISTED_NAME_MAX = 40


def rule_data(rule_id: int, action: str) -> str:
    """Callback data of a rule's button: ``rule:<id>:revoke|w<n>|keep`` (≤ 64 bytes)."""
    return f"rule:{rule_id}:{action}"


def _name(value: str, limit: int = NAME_MAX) -> str:
    return esc(clip(one_line(value), limit))


def _request_line(approval: Approval) -> str:
    return (f"request <code>{esc(approval.id)}</code> from agent <b>{_name(approval.agent)}</b> "
            f"(<code>{_name(approval.kind)}</code>)")


def _quoted_summary(approval: Approval) -> str:
    return f"<blockquote>{esc(clip(approval.summary, PROMPT_SUMMARY_MAX))}</blockquote>"


def field_name(path: Sequence[str]) -> str:
    """The editable part's name as the prompt shows it: its last key, or "payload"."""
    return path[-1] if path else "payload"


# --- ForceReply prompts ----------------------------------------------------------------


def reason_prompt(approval: Approval, asker: str) -> str:
    """Asks ``asker`` (``@alice``) for the reason of a denial, naming the request."""
    return (f"💬 <b>Deny with a reason</b>: {_request_line(approval)}\n"
            f"{_quoted_summary(approval)}\n"
            f"{esc(asker)}, reply to this message with the reason. Your reply denies the "
            "request and the reason is sent to the agent.")


def reason_markup() -> ForceReply:
    return ForceReply(selective=True, input_field_placeholder="Why is it denied?")


def edit_prompt(approval: Approval, path: Sequence[str], value: str, asker: str) -> str:
    """Shows the editable part (in ``<pre>``, cut to fit with a note) and asks ``asker``
    for the edited version; the reply approves the request with it."""
    name = esc(clip(one_line(field_name(path)), NAME_MAX))
    head = (f"✏️ <b>Edit and approve</b>: {_request_line(approval)}\n"
            f"Current <code>{name}</code>:\n")
    tail = (f"\n{esc(asker)}, reply to this message with the edited <code>{name}</code>. "
            "Your reply approves the request with it.")
    full = f"{head}<pre>{esc(value)}</pre>{tail}"
    if visible_length(full) <= MAX_TEXT:
        return full
    total = units(value)
    frame = visible_length(f"{head}<pre>…</pre>{tail}") + visible_length(
        EDIT_VALUE_NOTE.format(shown=total, total=total))
    shown = cut(value, MAX_TEXT - frame)
    note = EDIT_VALUE_NOTE.format(shown=units(shown), total=total)
    return f"{head}<pre>{esc(shown)}…</pre>{note}{tail}"


def edit_markup(path: Sequence[str]) -> ForceReply:
    placeholder = clip(one_line(f"Edited {field_name(path)}"), PLACEHOLDER_MAX)
    return ForceReply(selective=True, input_field_placeholder=placeholder)


COPY_TEXT = "📋 Tap to copy the current value; edit it and send it as a reply."


def copy_markup(value: str) -> InlineKeyboardMarkup | None:
    """A "📋 Copy" button holding ``value``; None when it is too long for one (256)."""
    if not value or len(value) > COPY_MAX:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton("📋 Copy",
                                                       copy_text=CopyTextButton(value))]])


def prompt_for_other(name: str | None) -> str:
    """The answer to a reply to a prompt that asked someone else."""
    return f"⚠️ This prompt is for {esc(name) if name else 'another approver'}."


PROMPT_ANSWERED = "⚠️ This prompt was already answered."
EMPTY_REPLY = "⚠️ Reply with some text."
REPLIES_DECIDE_NOTHING = ("ℹ️ A reply decides nothing: use the buttons, /approve or /deny. "
                          "💬 asks for a reason, ✏️ for an edit.")


# --- popups (≤ 200 characters) ---------------------------------------------------------


def popup(text: str) -> str:
    return clip(one_line(text), MAX_ANSWER)


def rule_made_answer(rule: Rule) -> str:
    """The popup after 🔁 This session or ♾️ Always."""
    if rule.run_id is not None:
        until = fmt_time(rule.expires_at) if rule.expires_at else "the run ends"
        return popup(f"✅ Approved. 🔁 Rule #{rule.id} approves the same request from "
                     f"{one_line(rule.agent)} in this session (until {until}).")
    return popup(f"✅ Approved. ♾️ Rule #{rule.id} always approves the same request from "
                 f"{one_line(rule.agent)}. /rules to revoke.")


def cannot_edit_answer(approval: Approval) -> str:
    return popup(f"{clip(one_line(approval.agent), 60)} can't run an edited request: "
                 "approve or deny it as is.")


NOTHING_TO_EDIT = "Nothing in this request can be edited: approve or deny it as is."
NO_SESSION = "This request has no session (run id): use ♾️ Always or ✅ Approve."
NO_RULES_FOR_KIND = "Rules can't be made for this kind of request."
REASON_ASKED = "💬 Reply to my message with the reason."
EDIT_ASKED = "✏️ Reply to my message with the edited value."


# --- rules -----------------------------------------------------------------------------


def scope_text(rule: Rule) -> str:
    """``session <run> until …`` or ``always`` (plus an end if it has one)."""
    if rule.run_id is not None:
        until = f" until {fmt_time(rule.expires_at)}" if rule.expires_at else ""
        return f"🔁 session <code>{_name(rule.run_id, LISTED_NAME_MAX)}</code>{until}"
    if rule.expires_at is not None:
        return f"♾️ until {fmt_time(rule.expires_at)}"
    return "♾️ always"


def _rule_subject(rule: Rule, match_max: int = MATCH_MAX) -> str:
    return (f"<code>{esc(clip(one_line(rule.match), match_max))}</code> from "
            f"<b>{_name(rule.agent)}</b> (<code>{_name(rule.kind)}</code>)")


def widen_offer(rule: Rule, options: Sequence[str]) -> tuple[str, InlineKeyboardMarkup]:
    """After ♾️ Always on a shell-like request: widen the rule to a prefix, keep it exact,
    or revoke it. Nothing is widened unless a button is tapped."""
    text = (f"♾️ Rule #{rule.id} always approves {_rule_subject(rule)}.\n"
            "Widen it? Until you pick, it matches this exact command only.")
    rows = [[InlineKeyboardButton(f"♾️ {clip(one_line(option), 40)}",
                                  callback_data=rule_data(rule.id, f"w{n}"))]
            for n, option in enumerate(options)]
    rows.append([InlineKeyboardButton("🎯 Keep exact", callback_data=rule_data(rule.id, "keep")),
                 InlineKeyboardButton("🗑 Revoke", callback_data=rule_data(rule.id, "revoke"),
                                      style="danger")])
    return text, InlineKeyboardMarkup(rows)


def revoke_markup(rule: Rule) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(
        f"🗑 Revoke rule #{rule.id}", callback_data=rule_data(rule.id, "revoke"),
        style="danger")]])


def rule_settled(rule: Rule, by: str, widened: bool) -> str:
    """The widen offer once answered: what the rule matches now, and who chose it."""
    verb = "widened" if widened else "kept exact"
    return (f"♾️ Rule #{rule.id} always approves {_rule_subject(rule)}.\n"
            f"<i>{verb} by {esc(clip(one_line(by), 100))}</i>")


def rule_revoked_line(rule_id: int, by: str) -> str:
    return f"🗑 <b>Rule #{rule_id} revoked by {esc(clip(one_line(by), 100))}</b>"


def rule_gone(rule_id: int) -> str:
    return popup(f"Rule #{rule_id} is no longer live (revoked or ended).")


def revoked_reply(rule: Rule) -> str:
    return f"🗑 Rule #{rule.id} revoked: {_rule_subject(rule, LISTED_MATCH_MAX)}"


def no_such_rule(text: str) -> str:
    return f"⚠️ No rule <code>{esc(clip(one_line(text), 40))}</code>."


def rule_not_live(rule_id: int) -> str:
    return f"⚠️ Rule #{rule_id} is already revoked or ended."


REVOKE_USAGE = "Usage: /revoke &lt;rule id&gt; (see /rules)"
RULES_HEADER = "📜 <b>Live rules</b>"


def _listed_rule(rule: Rule) -> str:
    last = fmt_time(rule.last_used_at) if rule.last_used_at else "never"
    return (f"<b>#{rule.id}</b> · agent <b>{_name(rule.agent, LISTED_NAME_MAX)}</b> · "
            f"<code>{_name(rule.kind, LISTED_NAME_MAX)}</code>\n"
            f"   match <code>{esc(clip(one_line(rule.match), LISTED_MATCH_MAX))}</code>\n"
            f"   {scope_text(rule)} · uses {rule.uses:,} · last used {last}")


def rules_listing(rules: list[Rule], more: int = 0) -> tuple[str, InlineKeyboardMarkup | None]:
    """``/rules``: one message (≤ 4096 characters, ≤ 100 buttons), a Revoke button per
    rule, "…and N more" for what does not fit."""
    if not rules:
        return "📜 No live rules. Tap 🔁 This session or ♾️ Always on a request to make one.", None
    total = len(rules) + more
    shown = list(rules[:RULES_LISTED])
    while True:
        hidden = total - len(shown)
        lines = [f"{RULES_HEADER} ({total:,})", ""]
        lines += [_listed_rule(r) for r in shown]
        if hidden:
            lines.append(f"\n…and {hidden:,} more (tapgate rules list).")
        text = "\n".join(lines)
        if visible_length(text) <= MAX_TEXT or len(shown) == 1:
            break
        shown.pop()
    buttons = [InlineKeyboardButton(f"🗑 Revoke #{r.id}", callback_data=rule_data(r.id, "revoke"))
               for r in shown]
    rows = [buttons[i:i + 2] for i in range(0, len(buttons), 2)]
    return text, InlineKeyboardMarkup(rows)


def is_rules_listing(text: str | None) -> bool:
    return bool(text) and text.startswith("📜 Live rules")


def digest_line(use: RuleUse, rule_id: int | None = None) -> str:
    """The hourly line of a rule's automatic approvals, edited in place as they grow."""
    count = use.uses
    noun = "request" if count == 1 else "requests"
    hour = as_utc(use.window_start).strftime("%H:%M UTC")
    return (f"♾️ Rule #{rule_id or use.rule_id} approved {count:,} {noun} from "
            f"<b>{_name(use.agent)}</b> in the hour from {esc(hour)}: "
            f"<code>{esc(clip(one_line(use.match), LISTED_MATCH_MAX))}</code>")


def digest_markup(use: RuleUse) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(
        f"🗑 Revoke rule #{use.rule_id}", callback_data=rule_data(use.rule_id, "revoke"))]])
