"""Measuring and cutting text the way Telegram counts it.

Telegram's limits (4096 for a message, 1024 for a caption, 200 for a callback
answer) apply to the text the user sees: tags removed, HTML entities decoded,
counted in UTF-16 code units, so an emoji or any other astral character counts
twice. Everything here works in those units so a cut never splits a surrogate
pair and a measured text never surprises Telegram.
"""

from __future__ import annotations

import html
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_ANSWER = 200
ELLIPSIS = "…"

_TAG = re.compile(r"<[^>]+>")
# Characters that could make agent-supplied text masquerade as the bot's own lines
# when shown inline: line and paragraph breaks, other controls, and the bidi
# overrides that reorder what follows them on screen.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def esc(value: Any) -> str:
    """Escape any value for HTML parse mode."""
    return html.escape(str(value), quote=False)


def fmt_time(value: datetime | None) -> str:
    """A time as the chat shows it, in UTC."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def units(text: str) -> int:
    """Length of plain ``text`` in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def visible_length(html_text: str) -> int:
    """Length Telegram counts for HTML ``html_text``: tags stripped, entities decoded, UTF-16.

    Telegram also trims leading and trailing whitespace, so this never undercounts.
    """
    return units(html.unescape(_TAG.sub("", html_text)))


def cut(text: str, limit: int) -> str:
    """The longest prefix of plain ``text`` of at most ``limit`` UTF-16 units (no split pairs)."""
    encoded = text.encode("utf-16-le")[: max(limit, 0) * 2]
    return encoded.decode("utf-16-le", errors="ignore")


def clip(text: str, limit: int) -> str:
    """Plain ``text`` itself if it fits in ``limit`` UTF-16 units, else cut with "…" at the end."""
    if units(text) <= limit:
        return text
    return cut(text, limit - 1) + ELLIPSIS


def one_line(text: str) -> str:
    """``text`` with line breaks, controls and bidi overrides turned into spaces.

    For fields shown inline (agent, kind, run id): an agent must not be able to
    start a line of its own that reads like the bot's.
    """
    return "".join(" " if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp")
                   else ch for ch in text)
