"""``/spend`` texts: the monospace table, its chart caption, its argument errors.

Pure functions, like :mod:`bot.telegram.render`. The table keeps the most
expensive groups (the summary's order) that fit in one message and says how
many more there are; the total line always counts every group.
"""

from __future__ import annotations

from bot.telegram.fit import MAX_CAPTION, MAX_TEXT, clip, esc, one_line, visible_length
from storage.records import UsageSummary

KEY_MAX = 28  # a wider key column would push the numbers off a phone's screen
BY_MAX = 60
WINDOW_TEXT = "between 1970-01-01 and 9998-12-31"


def _cells(key: str, calls: int, tokens: int, dollars: float) -> list[str]:
    return [clip(one_line(key), KEY_MAX), f"{calls:,}", f"{tokens:,}", f"${dollars:,.4f}"]


def spend_table(summary: UsageSummary, window_label: str) -> str:
    """``/spend``: a table of the groups and a total line, at most 4096 visible characters."""
    header = ["KEY", "CALLS", "TOKENS", "DOLLARS"]
    rows = [_cells(g.key or "(empty)", g.calls, g.prompt_tokens + g.completion_tokens,
                   g.dollars) for g in summary.groups]
    total = summary.total
    footer = _cells("TOTAL", total.calls, total.prompt_tokens + total.completion_tokens,
                    total.dollars)
    widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(4)]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(row))

    title = (f"💸 <b>Spend by {esc(clip(one_line(summary.by), BY_MAX))}</b> · "
             f"{esc(clip(one_line(window_label), BY_MAX))}")
    extra = ""
    if summary.unpriced_calls:
        extra = (f"\n⚠️ {summary.unpriced_calls:,} unpriced call(s) (unknown model price) "
                 "are counted in calls and tokens but not in dollars.")
    rule = "-" * len(fmt(header))

    def text(shown: int) -> str:
        lines = [fmt(header), *[fmt(r) for r in rows[:shown]]]
        if shown < len(rows):
            lines.append(f"… {len(rows) - shown:,} more groups")
        lines += [rule, fmt(footer)]
        return f"{title}\n<pre>{esc(chr(10).join(lines))}</pre>{extra}"

    if visible_length(text(len(rows))) <= MAX_TEXT:
        return text(len(rows))
    low, high = 0, len(rows)  # text(low) fits, text(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if visible_length(text(mid)) <= MAX_TEXT else (low, mid)
    return text(low)


def spend_caption(label: str, dollars: float) -> str:
    """The chart's caption (Telegram allows 1024 characters for one)."""
    caption = f"Daily spend · {esc(clip(one_line(label), BY_MAX))} · total ${dollars:,.2f}"
    return caption if visible_length(caption) <= MAX_CAPTION else "Daily spend"


def spend_error(message: str) -> str:
    """A ``/spend`` argument error (the message may echo what was typed: bounded)."""
    return (f"⚠️ {esc(clip(one_line(message), 300))}\nUsage: /spend [by] [since] [until] — by: "
            "model, provider, day, name or metadata.KEY; since/until: today, 7d, 30d, "
            f"YYYY-MM-DD or RFC 3339, {WINDOW_TEXT}")
