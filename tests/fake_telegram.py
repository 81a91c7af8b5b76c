"""A fake Telegram Bot API server for tests.

``FakeTelegram`` is a real HTTP server (aiohttp on 127.0.0.1, random port) that speaks the
Bot API closely enough for the real python-telegram-bot ``Bot``/``Application`` to run
against it::

    fake = FakeTelegram()
    await fake.start()
    bot = telegram.Bot(fake.token, base_url=f"{fake.url}/bot",
                       base_file_url=f"{fake.url}/file/bot")

It models the places where bots trip on real Telegram: entity parsing (HTML, MarkdownV2,
Markdown) with Telegram's error texts, text limits measured after parsing in UTF-16 code
units, the 64-byte ``callback_data`` limit, "message is not modified", editMessageText
without ``reply_markup`` removing the inline keyboard, callback queries that expire or are
answered twice, long-polling ``getUpdates`` with offsets, ``allowed_updates`` and 409
conflicts, flood control (injected or per-group pacing) and outages (HTTP 502, non-JSON),
and webhook delivery (``setWebhook``: updates POSTed in order with the secret header,
redelivered until answered 2xx; ``webhook_target`` maps the https URL to a local one).

Everything runs on the test's event loop. The injection helpers (``tap``, ``send_text``,
``fail_next``, ``set_down``...) are plain methods: call them from that loop's thread.
Waiting is event driven: ``wait_for``/``wait_until`` wake on every request and every
injected update, never poll with sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import json
import math
import re
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

__all__ = [
    "Call",
    "FakeClock",
    "FakeTelegram",
    "ForumTopic",
    "Message",
    "User",
    "WaitTimeout",
    "WebhookDelivery",
    "parse_html",
    "parse_markdown",
    "parse_markdown_v2",
    "utf16_len",
]

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)
CONFLICT_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
BAD_GATEWAY_BODY = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n"
    "</body>\r\n</html>\r\n"
)

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_ANSWER_TEXT = 200
PACED_METHODS = frozenset(
    {"sendMessage", "editMessageText", "editMessageReplyMarkup", "editMessageCaption",
     "sendPhoto", "createForumTopic"}
)
MAX_TOPIC_NAME = 128  # TDLib cuts a longer topic name to 128 characters (clean_name)
TOPIC_ICON_COLORS = (0x6FB9F0, 0xFFD67E, 0xCB86DB, 0x8EEE98, 0xFF93B2, 0xFB6F5F)
BUTTON_STYLES = frozenset({"danger", "success", "primary"})  # Bot API 9.4
# Update types Telegram only sends when asked for explicitly.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})


# --------------------------------------------------------------------------- helpers


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (how Telegram measures text and offsets)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _w16(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


class EntityParseError(ValueError):
    """Raised by the parsers; ``str(exc)`` is Telegram's reason text."""


class FakeClock:
    """A manual clock for ``FakeTelegram(clock=...)``: time moves only by ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WaitTimeout(AssertionError, TimeoutError):
    """Raised by ``wait_for``/``wait_until``; both an AssertionError and a TimeoutError."""


@dataclass(frozen=True)
class User:
    """A Telegram user that taps buttons or writes to the bot."""

    id: int
    username: str | None = None
    first_name: str = "Tester"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.username:
            d["username"] = self.username
        return d


@dataclass
class Call:
    """One recorded HTTP request: canonical method name, decoded params, arrival time (the
    fake's clock), the JSON answer (for a non-JSON 502 a stand-in dict), the HTTP status and
    the uploaded files (field name -> bytes)."""

    method: str
    params: dict[str, Any]
    at: float
    response: dict[str, Any]
    status: int = 200
    files: dict[str, bytes] = field(default_factory=dict)
    token: str = ""  # the token in the URL: tells apart instances given different aliases

    @property
    def ok(self) -> bool:
        return self.response.get("ok") is True

    @property
    def description(self) -> str | None:
        return self.response.get("description")

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "text"}
        if "text" in self.params:
            text = str(self.params["text"])
            shown["text"] = text if len(text) <= 60 else text[:57] + "..."
        outcome = "ok" if self.ok else f"{self.status} {self.description!r}"
        return f"<Call {self.method} {shown} -> {outcome}>"


@dataclass
class WebhookDelivery:
    """One webhook POST: the update, the URL it went to, the HTTP status (None: no answer),
    the decoded JSON answer, the error that makes it count as failed (None: delivered)."""

    update: dict[str, Any]
    url: str
    status: int | None
    answer: Any
    error: str | None
    at: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def update_id(self) -> int:
        return self.update["update_id"]


@dataclass
class Message:
    """A message as the fake stores it. ``text``/``caption`` are what the user sees
    (markup removed, entities decoded, trimmed); ``raw_text``/``raw_caption`` are as sent.
    ``from_user`` is None for messages the bot sent. ``history`` holds a snapshot dict of
    the previous state before each edit."""

    chat_id: int
    message_id: int
    text: str | None
    raw_text: str | None = None
    parse_mode: str | None = None
    reply_markup: dict[str, Any] | None = None
    photo: bytes | None = None
    caption: str | None = None
    edited_count: int = 0
    entities: list[dict[str, Any]] = field(default_factory=list)
    raw_caption: str | None = None
    caption_entities: list[dict[str, Any]] = field(default_factory=list)
    from_user: User | None = None
    date: int = 0
    edit_date: int | None = None
    deleted: bool = False
    photo_file_id: str | None = None
    photo_size: tuple[int, int] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    reply_to_message_id: int | None = None
    """The message (same chat) this one replies to; its dict goes into ``reply_to_message``."""
    message_thread_id: int | None = None
    """The forum topic the message is in (None: the chat's main thread, or General)."""

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """All inline buttons, row by row, flattened."""
        if not self.reply_markup:
            return []
        return [b for row in self.reply_markup.get("inline_keyboard", []) for b in row]

    @property
    def button_texts(self) -> list[str]:
        return [b.get("text", "") for b in self.buttons]


@dataclass
class ForumTopic:
    """A topic of a chat with topics enabled (a forum supergroup, or a private chat since Bot
    API 9.4). ``message_thread_id`` is the id of the topic's (unstored) creation message."""

    chat_id: int
    message_thread_id: int
    name: str
    icon_color: int
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"message_thread_id": self.message_thread_id, "name": self.name,
                "icon_color": self.icon_color}


class _ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False, "error_code": self.code, "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


def _flood(retry_after: int) -> _ApiError:
    return _ApiError(
        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


class _Down(Exception):
    pass


# --------------------------------------------------------------------------- entity parsing

_TD_TYPE_NAMES = {
    "bold": "Bold", "italic": "Italic", "underline": "Underline",
    "strikethrough": "Strikethrough", "spoiler": "Spoiler", "code": "Code", "pre": "Pre",
    "pre_code": "PreCode", "text_link": "TextUrl", "custom_emoji": "CustomEmoji",
    "blockquote": "BlockQuote",
}
_TYPE_PRIORITY = {
    "blockquote": 0, "expandable_blockquote": 0, "pre": 11, "code": 20, "text_link": 49,
    "bold": 90, "italic": 91, "underline": 92, "strikethrough": 93, "spoiler": 94,
    "custom_emoji": 99,
}
_LINK_SCHEMES = ("http", "https", "tg", "ton", "ftp")


def _checked_link(url: str) -> str:
    """Roughly tdlib's get_checked_link: '' means "not a link", the entity is dropped."""
    url = url.strip()
    if not url or any(c.isspace() for c in url):
        return ""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    if m:
        return url if m.group(1).lower() in _LINK_SCHEMES else ""
    host = re.split(r"[/?#]", url, maxsplit=1)[0]
    if "." in host and not host.startswith(".") and not host.endswith("."):
        return "http://" + url
    return ""


def _entity(kind: str, offset: int, length: int, **extra: Any) -> dict[str, Any]:
    if kind == "pre_code":
        kind = "pre"
    ent: dict[str, Any] = {"type": kind, "offset": offset, "length": length}
    ent.update({k: v for k, v in extra.items() if v is not None})
    return ent


def _sorted_entities(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        entities,
        key=lambda e: (e["offset"], -e["length"], _TYPE_PRIORITY.get(e["type"], 50)),
    )


_TAGS = frozenset({
    "a", "b", "strong", "i", "em", "s", "strike", "del", "u", "ins", "tg-spoiler", "tg-emoji",
    "span", "pre", "code", "blockquote",
})
_SPACES = " \t\r\n\v\0"  # tdlib's is_space() also counts NUL (the end of the C string)
_HTML_SIMPLE = {
    "i": "italic", "em": "italic", "b": "bold", "strong": "bold", "s": "strikethrough",
    "strike": "strikethrough", "del": "strikethrough", "u": "underline", "ins": "underline",
    "tg-spoiler": "spoiler",
}


def _decode_html_entity(s: str, pos: int) -> tuple[int, int]:
    """tdlib's decode_html_entity: (code point or 0, position after the entity)."""
    n = len(s)

    def at(k: int) -> str:
        return s[k] if k < n else "\0"

    end = pos + 1
    res = 0
    if at(pos + 1) == "#":
        end += 1
        if at(pos + 2) == "x":
            end += 1
            while at(end) in "0123456789abcdefABCDEF" and at(end) != "\0":
                res = res * 16 + int(s[end], 16)
                end += 1
        else:
            while at(end).isascii() and at(end).isdigit():
                res = res * 10 + int(s[end])
                end += 1
        if res == 0 or res >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while at(end).isascii() and at(end).isalpha():
            end += 1
        name = s[pos + 1:end]
        res = {"lt": 0x3C, "gt": 0x3E, "amp": 0x26, "quot": 0x22}.get(name, 0)
        if not res:
            return 0, pos
    if at(end) == ";":
        end += 1
    return res, end


def parse_html(s: str, *, strict_ampersand: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram-HTML like tdlib's parse_html; returns (plain text, entities).

    Raises EntityParseError with Telegram's reason. With ``strict_ampersand`` (default) an
    ``&`` that does not start ``&lt; &gt; &amp; &quot;`` or a numeric reference is an error;
    real Telegram keeps such an ``&`` literally, pass False to get exactly that.
    """
    n = len(s)

    def at(k: int) -> str:
        return s[k] if k < n else "\0"

    def err(reason: str) -> EntityParseError:
        return EntityParseError(reason)

    out: list[str] = []
    u16 = 0
    entities: list[dict[str, Any]] = []
    nested: list[dict[str, Any]] = []
    surrogate = False
    i = 0
    while i < n:
        c = s[i]
        if c == "&":
            code, new_i = _decode_html_entity(s, i)
            if code:
                out.append(chr(code))
                u16 += 2 if code > 0xFFFF else 1
                surrogate |= 0xD800 <= code <= 0xDFFF
                i = new_i
                continue
            if strict_ampersand:
                raise err(
                    f'Character "&" must be escaped as "&amp;" (at byte offset '
                    f"{_byte_offset(s, i)})"
                )
        if c != "<":
            out.append(c)
            u16 += _w16(c)
            i += 1
            continue
        begin = i
        i += 1
        if at(i) != "/":
            while at(i) not in _SPACES and at(i) != ">":
                i += 1
            if at(i) == "\0":
                raise err(f"Unclosed start tag at byte offset {_byte_offset(s, begin)}")
            tag = s[begin + 1:i].lower()
            if tag not in _TAGS:
                raise err(
                    f'Unsupported start tag "{tag}" at byte offset {_byte_offset(s, begin)}'
                )
            argument = ""
            expandable = False
            while at(i) != ">":
                while at(i) != "\0" and at(i) in _SPACES:
                    i += 1
                if at(i) == ">":
                    break
                attr_begin = i
                while at(i) not in _SPACES and at(i) not in "=>":
                    i += 1
                attr = s[attr_begin:i]
                if not attr:
                    raise err(
                        f'Empty attribute name in the tag "{tag}" at byte offset '
                        f"{_byte_offset(s, begin)}"
                    )
                while at(i) != "\0" and at(i) in _SPACES:
                    i += 1
                if at(i) != "=":
                    if tag == "blockquote" and attr.lower() == "expandable" and at(i) != "\0":
                        expandable = True
                        continue
                    raise err(
                        f'Expected equal sign in declaration of an attribute of the tag "{tag}"'
                        f" at byte offset {_byte_offset(s, begin)}"
                    )
                i += 1
                while at(i) != "\0" and at(i) in _SPACES:
                    i += 1
                if at(i) == "\0":
                    raise err(
                        f'Unclosed start tag "{tag}" at byte offset {_byte_offset(s, begin)}'
                    )
                if at(i) not in "'\"":
                    token_begin = i
                    while at(i).isascii() and (at(i).isalnum() or at(i) in ".-"):
                        i += 1
                    value = s[token_begin:i].lower()
                    if at(i) not in _SPACES and at(i) != ">":
                        raise err(
                            f"Unexpected end of name token at byte offset "
                            f"{_byte_offset(s, token_begin)}"
                        )
                else:
                    quote = s[i]
                    i += 1
                    chars: list[str] = []
                    while at(i) != quote and at(i) != "\0":
                        if s[i] == "&":
                            code, new_i = _decode_html_entity(s, i)
                            if code:
                                chars.append(chr(code))
                                i = new_i
                                continue
                        chars.append(s[i])
                        i += 1
                    if at(i) == quote:
                        i += 1
                    value = "".join(chars)
                if at(i) == "\0":
                    raise err(f"Unclosed start tag at byte offset {_byte_offset(s, begin)}")
                if tag == "a" and attr == "href":
                    argument = value
                elif tag == "code" and attr == "class" and value.startswith("language-"):
                    argument = value[9:]
                elif tag == "span" and attr == "class" and value.startswith("tg-"):
                    argument = value[3:]
                elif tag == "tg-emoji" and attr == "emoji-id":
                    argument = value
            if tag == "span" and argument != "spoiler":
                raise err(
                    f'Tag "span" must have class "tg-spoiler" at byte offset '
                    f"{_byte_offset(s, begin)}"
                )
            nested.append({"tag": tag, "arg": argument, "u16": u16, "out": len(out),
                           "expandable": expandable})
        else:
            if not nested:
                raise err(f"Unexpected end tag at byte offset {_byte_offset(s, begin)}")
            while at(i) not in _SPACES and at(i) != ">":
                i += 1
            end_tag = s[begin + 2:i].lower()
            while at(i) != "\0" and at(i) in _SPACES:
                i += 1
            if at(i) != ">":
                raise err(f"Unclosed end tag at byte offset {_byte_offset(s, begin)}")
            top = nested[-1]
            tag = top["tag"]
            if end_tag and end_tag != tag:
                raise err(
                    f'Unmatched end tag at byte offset {_byte_offset(s, begin)}, expected "</{tag}>"'
                    f', found "</{end_tag}>"'
                )
            offset = top["u16"]
            length = u16 - offset
            if length > 0:
                if tag in _HTML_SIMPLE:
                    entities.append(_entity(_HTML_SIMPLE[tag], offset, length))
                elif tag == "span":
                    entities.append(_entity("spoiler", offset, length))
                elif tag == "tg-emoji":
                    if not top["arg"].isdigit() or int(top["arg"]) == 0:
                        raise err("Invalid custom emoji identifier specified")
                    entities.append(
                        _entity("custom_emoji", offset, length, custom_emoji_id=top["arg"])
                    )
                elif tag == "a":
                    url = top["arg"] or "".join(out[top["out"]:])
                    checked = _checked_link(url)
                    if checked:
                        entities.append(_entity("text_link", offset, length, url=checked))
                elif tag == "pre":
                    last = entities[-1] if entities else None
                    if (last and last["type"] == "code" and last["offset"] == offset
                            and last["length"] == length and last.get("language")):
                        last["type"] = "pre"
                    else:
                        entities.append(_entity("pre", offset, length))
                elif tag == "code":
                    last = entities[-1] if entities else None
                    if (last and last["type"] == "pre" and last["offset"] == offset
                            and last["length"] == length and top["arg"]):
                        last["language"] = top["arg"]
                    else:
                        entities.append(
                            _entity("code", offset, length, language=top["arg"] or None)
                        )
                elif tag == "blockquote":
                    kind = "expandable_blockquote" if top["expandable"] else "blockquote"
                    entities.append(_entity(kind, offset, length))
            nested.pop()
        i += 1
    if nested:
        raise err(f'Can\'t find end tag corresponding to start tag "{nested[-1]["tag"]}"')
    for ent in entities:
        if ent["type"] == "code":
            ent.pop("language", None)
    if surrogate:
        raise err(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        )
    return "".join(out), _sorted_entities(entities)


def parse_markdown_v2(s: str) -> tuple[str, list[dict[str, Any]]]:
    """Port of tdlib's parse_markdown_v2; returns (plain text, entities)."""
    n = len(s)

    def at(k: int) -> str:
        return s[k] if k < n else "\0"

    def escapable(k: int) -> bool:
        return 0 < ord(at(k)) <= 126

    def reserved(ch: str) -> EntityParseError:
        return EntityParseError(
            f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
        )

    out: list[str] = []
    u16 = 0
    entities: list[dict[str, Any]] = []
    nested: list[dict[str, Any]] = []
    have_blockquote = False
    i = -1
    while True:
        i += 1
        if i >= n:
            break
        c = s[i]
        if c == "\\" and escapable(i + 1):
            i += 1
            u16 += 1
            out.append(s[i])
            continue
        reserved_chars = "_*[]()~`>#+-=|{}.!\n"
        if nested and nested[-1]["type"] in ("code", "pre", "pre_code"):
            reserved_chars = "`"
        if c not in reserved_chars:
            u16 += _w16(c)
            out.append(c)
            continue

        is_end = False
        if nested:
            top_type = nested[-1]["type"]
            if have_blockquote and c == "\n" and (i + 1 == n or s[i + 1] != ">"):
                is_end = True
            else:
                is_end = {
                    "bold": c == "*",
                    "italic": c == "_" and at(i + 1) != "_",
                    "code": c == "`",
                    "pre": c == "`" and at(i + 1) == "`" and at(i + 2) == "`",
                    "pre_code": c == "`" and at(i + 1) == "`" and at(i + 2) == "`",
                    "text_link": c == "]",
                    "underline": c == "_" and at(i + 1) == "_",
                    "strikethrough": c == "~",
                    "spoiler": c == "|" and at(i + 1) == "|",
                    "custom_emoji": c == "]",
                    "blockquote": False,
                }[top_type]

        if not is_end:
            kind: str | None
            argument = ""
            byte_pos = i
            if c == "_":
                if at(i + 1) == "_":
                    kind = "underline"
                    i += 1
                else:
                    kind = "italic"
            elif c == "*":
                kind = "bold"
            elif c == "~":
                kind = "strikethrough"
            elif c == "|":
                if at(i + 1) != "|":
                    raise reserved(c)
                i += 1
                kind = "spoiler"
            elif c == "[":
                kind = "text_link"
            elif c == "`":
                if at(i + 1) == "`" and at(i + 2) == "`":
                    i += 3
                    kind = "pre"
                    lang_end = i
                    while at(lang_end) not in _SPACES and at(lang_end) != "`":
                        lang_end += 1
                    if i != lang_end and lang_end < n and at(lang_end) != "`":
                        kind = "pre_code"
                        argument = s[i:lang_end]
                        i = lang_end
                    if at(i) in "\r\n" and at(i) != "\0":
                        if at(i + 1) in "\r\n" and at(i + 1) != "\0" and at(i) != at(i + 1):
                            i += 2
                        else:
                            i += 1
                    i -= 1
                else:
                    kind = "code"
            elif c == "!":
                if at(i + 1) != "[":
                    raise reserved(c)
                i += 1
                kind = "custom_emoji"
            elif c == "\n":
                u16 += 1
                out.append("\n")
                kind = None
                if i + 1 < n and s[i + 1] == ">":
                    i += 1
                    if not have_blockquote:
                        kind = "blockquote"
                        have_blockquote = True
            elif c == ">":
                if i != 0:
                    raise reserved(c)
                kind = "blockquote"
                have_blockquote = True
            else:
                raise reserved(c)
            if kind is None:
                continue
            nested.append({"type": kind, "arg": argument, "u16": u16, "byte": byte_pos,
                           "out": len(out)})
            continue

        top = nested[-1]
        kind = top["type"]
        if c == "\n" and kind != "blockquote":
            raise EntityParseError(
                f"Can't find end of {_TD_TYPE_NAMES[kind]} entity at byte offset "
                f"{_byte_offset(s, top['byte'])}"
            )
        argument = top["arg"]
        skip = u16 == top["u16"]
        extra: dict[str, Any] = {}
        if kind in ("underline", "spoiler"):
            i += 1
        elif kind in ("pre", "pre_code"):
            i += 2
        elif kind in ("text_link", "custom_emoji"):
            if at(i + 1) != "(":
                if kind == "custom_emoji":
                    raise EntityParseError("Custom emoji entity must contain a tg://emoji URL")
                url = "".join(out[top["out"]:])
            else:
                i += 2
                url_begin = i
                chars: list[str] = []
                while i < n and s[i] != ")":
                    if s[i] == "\\" and escapable(i + 1):
                        chars.append(s[i + 1])
                        i += 2
                        continue
                    chars.append(s[i])
                    i += 1
                if at(i) != ")":
                    what = "a custom emoji URL" if kind == "custom_emoji" else "a URL"
                    raise EntityParseError(
                        f"Can't find end of {what} at byte offset {_byte_offset(s, url_begin)}"
                    )
                url = "".join(chars)
            if kind == "custom_emoji":
                m = re.fullmatch(r"tg://emoji\?id=(\d+)", url)
                if not m:
                    raise EntityParseError("Invalid custom emoji URL specified")
                extra["custom_emoji_id"] = m.group(1)
            else:
                checked = _checked_link(url)
                if checked:
                    extra["url"] = checked
                else:
                    skip = True
        elif kind == "blockquote":
            have_blockquote = False
            out.append(s[i])
            u16 += 1
        if not skip:
            if kind == "pre_code":
                extra["language"] = argument
            entities.append(_entity(kind, top["u16"], u16 - top["u16"], **extra))
        nested.pop()

    if have_blockquote and nested and nested[-1]["type"] == "blockquote":
        top = nested.pop()
        if u16 - top["u16"]:
            entities.append(_entity("blockquote", top["u16"], u16 - top["u16"]))
    if nested:
        top = nested[-1]
        raise EntityParseError(
            f"Can't find end of {_TD_TYPE_NAMES[top['type']]} entity at byte offset "
            f"{_byte_offset(s, top['byte'])}"
        )
    return "".join(out), _sorted_entities(entities)


def parse_markdown(s: str) -> tuple[str, list[dict[str, Any]]]:
    """Port of tdlib's legacy parse_markdown (parse_mode "Markdown")."""
    n = len(s)

    def at(k: int) -> str:
        return s[k] if k < n else "\0"

    out: list[str] = []
    u16 = 0
    entities: list[dict[str, Any]] = []
    i = 0
    while i < n:
        c = s[i]
        if c == "\\" and at(i + 1) in "_*`[" and at(i + 1) != "\0":
            out.append(s[i + 1])
            u16 += 1
            i += 2
            continue
        if c not in "_*`[":
            out.append(c)
            u16 += _w16(c)
            i += 1
            continue
        begin = i
        end_char = "]" if c == "[" else c
        is_pre = False
        language = ""
        i += 1
        if c == "`" and at(i) == "`" and at(i + 1) == "`":
            i += 2
            is_pre = True
            lang_end = i
            while at(lang_end) not in _SPACES and at(lang_end) != "`":
                lang_end += 1
            if i != lang_end and lang_end < n and at(lang_end) != "`":
                language = s[i:lang_end]
                i = lang_end
            if at(i) in "\r\n" and at(i) != "\0":
                if at(i + 1) in "\r\n" and at(i + 1) != "\0" and at(i) != at(i + 1):
                    i += 2
                else:
                    i += 1
        start16 = u16
        while i < n and (s[i] != end_char or (is_pre and not (at(i + 1) == "`" == at(i + 2)))):
            out.append(s[i])
            u16 += _w16(s[i])
            i += 1
        if i >= n:
            raise EntityParseError(
                f"Can't find end of the entity starting at byte offset {_byte_offset(s, begin)}"
            )
        length = u16 - start16
        if c == "[":
            url_text = s[begin + 1:i]
            if at(i + 1) == "(":
                i += 2
                url_chars = []
                while i < n and s[i] != ")":
                    url_chars.append(s[i])
                    i += 1
                url_text = "".join(url_chars)
            checked = _checked_link(url_text)
            if length and checked:
                entities.append(_entity("text_link", start16, length, url=checked))
        elif length:
            if c == "_":
                entities.append(_entity("italic", start16, length))
            elif c == "*":
                entities.append(_entity("bold", start16, length))
            elif is_pre:
                entities.append(_entity("pre", start16, length, language=language or None))
            else:
                entities.append(_entity("code", start16, length))
        if is_pre:
            i += 2
        i += 1
    return "".join(out), _sorted_entities(entities)


_TRIM = " \t\n\r\v\f"


def _trim(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims leading/trailing whitespace after parsing; shift entities to match."""
    stripped = text.strip(_TRIM)
    lead = utf16_len(text[: len(text) - len(text.lstrip(_TRIM))])
    total = utf16_len(stripped)
    result = []
    for ent in entities:
        start = max(ent["offset"] - lead, 0)
        end = min(ent["offset"] + ent["length"] - lead, total)
        if end > start:
            result.append({**ent, "offset": start, "length": end - start})
    return stripped, result


# --------------------------------------------------------------------------- params

_JSON_PARAMS = frozenset({
    "reply_markup", "entities", "caption_entities", "allowed_updates", "commands", "scope",
    "link_preview_options", "reply_parameters", "media",
})
_INT_PARAMS = frozenset({
    "chat_id", "message_id", "offset", "limit", "timeout", "cache_time", "from_chat_id",
    "message_thread_id", "reply_to_message_id", "max_connections",
})
_BOOL_PARAMS = frozenset({
    "show_alert", "disable_notification", "drop_pending_updates", "protect_content",
    "disable_web_page_preview", "allow_sending_without_reply", "has_spoiler",
    "show_caption_above_media",
})


def _coerce(params: dict[str, Any]) -> dict[str, Any]:
    """Decode form/query strings the way the Bot API does (JSON objects inside fields)."""
    result: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, str) and key in _JSON_PARAMS:
            try:
                value = json.loads(value)
            except ValueError:
                if key == "reply_markup":
                    raise _bad("can't parse reply keyboard markup JSON object") from None
                raise _bad(f"can't parse {key} JSON object") from None
        elif isinstance(value, str) and key in _INT_PARAMS:
            if re.fullmatch(r"-?\d+", value.strip()):
                value = int(value)
            elif key != "chat_id":
                raise _bad(f"invalid {key} specified")
        elif isinstance(value, str) and key in _BOOL_PARAMS:
            value = value.strip().lower() in ("true", "1")
        elif isinstance(value, float) and key in _INT_PARAMS and value.is_integer():
            value = int(value)
        result[key] = value
    return result


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width/height of an image Telegram could process, or None."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib here
        return _png_size(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            img.verify()
            return size
    except Exception:
        return None


@dataclass
class _Query:
    id: str
    created: float
    chat_id: int
    message_id: int
    answered: bool = False


@dataclass
class _File:
    file_id: str
    unique_id: str
    data: bytes
    path: str
    width: int
    height: int


# --------------------------------------------------------------------------- the server


class FakeTelegram:
    """Fake Bot API server. See the module docstring.

    Args:
        token: the only token accepted; any other gets 401 Unauthorized.
        bot_username: username reported by getMe.
        callback_query_ttl: seconds after a tap during which answerCallbackQuery succeeds.
        group_limit_per_minute: if set, more than this many paced calls (send/edit/photo)
            to one group chat (negative id) within ``group_window_seconds`` get 429.
        group_window_seconds: the sliding window for ``group_limit_per_minute``.
        clock: monotonic clock for TTLs, pacing and ``Call.at``; pass a ``FakeClock`` to
            move time without sleeping (long-poll timeouts always use real time).
        strict_html_ampersand: reject an ``&`` that starts no valid HTML entity (stricter
            than Telegram, which shows it literally).
        validate_images: reject photos Pillow cannot read (IMAGE_PROCESS_FAILED) like
            Telegram does.
        webhook_target: where webhook deliveries go instead of the https URL setWebhook
            was given (see the attribute); while a webhook is set, getUpdates gets 409.
        webhook_retry_delay: seconds before a failed webhook delivery is retried.
    """

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        bot_username: str = "tapgate_bot",
        callback_query_ttl: float = 15.0,
        group_limit_per_minute: int | None = None,
        *,
        group_window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        strict_html_ampersand: bool = True,
        validate_images: bool = True,
        bot_first_name: str = "Tapgate",
        webhook_target: str | Callable[[str], str] | None = None,
        webhook_retry_delay: float = 0.2,
    ) -> None:
        self.token = token
        self.aliases: set[str] = set()
        """More tokens accepted as the same bot (tests give each bot process its own)."""
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        self.callback_query_ttl = callback_query_ttl
        self.group_limit_per_minute = group_limit_per_minute
        self.group_window_seconds = group_window_seconds
        self.clock = clock
        self.strict_html_ampersand = strict_html_ampersand
        self.validate_images = validate_images
        try:
            self.bot_id = int(token.split(":", 1)[0])
        except ValueError:
            self.bot_id = 1

        self.url = ""
        self.calls: list[Call] = []
        self.answered_queries: dict[str, dict[str, Any]] = {}
        self.allowed_updates: list[str] | None = None
        """Last ``allowed_updates`` a getUpdates call gave (None: never given)."""
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        """setMyCommands storage keyed by (scope JSON, language_code)."""
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        """The ``secret_token`` of the last setWebhook (sent in X-Telegram-Bot-Api-Secret-Token)."""
        self.webhook_target = webhook_target
        """Where webhook POSTs go instead of ``webhook_url`` (tests have no TLS): a base URL
        (``http://127.0.0.1:8081``; the webhook URL's path is kept) or a callable mapping
        the webhook URL to the URL of each attempt (a load balancer). None: the URL itself."""
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_deliveries: list[WebhookDelivery] = []
        """Every webhook POST the fake made, oldest first."""
        self.webhook_lost_answers = 0
        """The next this-many 2xx webhook answers count as lost (redelivered, like an answer
        that never reached Telegram)."""
        self._webhook_task: asyncio.Task | None = None
        self._webhook_error: tuple[int, str] | None = None
        self.dropped_updates: list[dict[str, Any]] = []
        """Updates discarded because their type was not in ``allowed_updates``."""
        self.internal_errors: list[BaseException] = []
        """Exceptions raised inside the fake (a bug in the fake; answered with 500)."""

        self._messages: dict[tuple[int, int], Message] = {}
        self._next_message_id: dict[int, int] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._next_update_id = 500_000_001
        self._queries: dict[str, _Query] = {}
        self._query_ids = itertools.count(4_200_000_000_000_000_001)
        self._files: dict[str, _File] = {}
        self._file_seq = itertools.count(1)
        self._failures: dict[str, deque[tuple[int, str, dict | None]]] = {}
        self._chat_errors: dict[int, tuple[int, str, dict | None]] = {}
        self._group_sends: dict[int, deque[float]] = {}
        self._forums: set[int] = set()  # chats with topics enabled (enable_topics)
        self._topics: dict[tuple[int, int], ForumTopic] = {}
        self._down = False
        self._closing = False
        self._poll_token: object | None = None
        self._waiting_polls = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._handlers: dict[str, Callable[[dict, dict], Any]] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "deleteWebhook": self._delete_webhook,
            "setWebhook": self._set_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageCaption": self._edit_message_caption,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "sendPhoto": self._send_photo,
            "getFile": self._get_file,
            "sendChatAction": self._send_chat_action,
            "getChat": self._get_chat,
            "createForumTopic": self._create_forum_topic,
        }
        self._by_lower = {name.lower(): name for name in self._handlers}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve; sets ``url``."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._closing = False

    async def stop(self) -> None:
        """Release held long polls (they answer ``[]``) and shut the server down."""
        self._closing = True
        self._notify()
        if self._webhook_task is not None:
            task, self._webhook_task = self._webhook_task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.sleep(0)  # let released polls write their answers
            await runner.cleanup()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ inspection

    def calls_of(self, method: str) -> list[Call]:
        """Recorded calls of ``method`` (any outcome), oldest first."""
        return [c for c in self.calls if c.method == method]

    def messages(self, chat_id: int, *, include_users: bool = False) -> list[Message]:
        """Messages the bot sent to ``chat_id`` and did not delete, by message_id.
        ``include_users=True`` adds the messages injected with ``send_text``."""
        return sorted(
            (m for (cid, _), m in self._messages.items()
             if cid == chat_id and not m.deleted and (include_users or m.from_user is None)),
            key=lambda m: m.message_id,
        )

    def message(self, chat_id: int, message_id: int) -> Message:
        """The stored message (deleted ones too); KeyError if it never existed."""
        try:
            return self._messages[(chat_id, message_id)]
        except KeyError:
            raise KeyError(f"no message {message_id} in chat {chat_id}") from None

    def topics(self, chat_id: int) -> list[ForumTopic]:
        """The topics of ``chat_id`` nobody deleted, oldest first."""
        return sorted((t for (cid, _), t in self._topics.items()
                       if cid == chat_id and not t.deleted),
                      key=lambda t: t.message_thread_id)

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by a getUpdates offset."""
        return list(self._pending)

    @property
    def polling(self) -> bool:
        """True while some getUpdates long poll is held open."""
        return self._waiting_polls > 0

    async def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 10.0,
        *,
        include_failed: bool = False,
    ) -> Call:
        """First recorded call (past or future) of ``method`` matching ``predicate`` whose
        answer was ok (any answer with ``include_failed=True``). Raises WaitTimeout."""

        def match(call: Call) -> bool:
            return (call.method == method and (include_failed or call.ok)
                    and (predicate is None or predicate(call)))

        return await self._wait_calls(match, timeout, f"a call of {method}")

    async def wait_for_error(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 10.0,
    ) -> Call:
        """Like ``wait_for`` but only matches calls that got an error answer."""

        def match(call: Call) -> bool:
            return (call.method == method and not call.ok
                    and (predicate is None or predicate(call)))

        return await self._wait_calls(match, timeout, f"a failed call of {method}")

    async def wait_until(
        self, condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
    ) -> Any:
        """Re-check ``condition()`` after every request/update until truthy; return it."""
        return await self._wait(condition, timeout, lambda: f"{what} not met")

    async def wait_polling(self, timeout: float = 10.0) -> None:
        """Wait until a getUpdates long poll is held open (the bot is listening)."""
        await self._wait(lambda: self.polling, timeout, lambda: "no getUpdates long poll")

    async def _wait_calls(self, match: Callable[[Call], bool], timeout: float,
                          what: str) -> Call:
        index = 0

        def check() -> Call | None:
            nonlocal index
            while index < len(self.calls):
                call = self.calls[index]
                index += 1
                if match(call):
                    return call
            return None

        return await self._wait(check, timeout, lambda: f"no {what} matched")

    async def _wait(self, check: Callable[[], Any], timeout: float,
                    describe: Callable[[], str]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "\n  ".join(repr(c) for c in self.calls[-15:]) or "(none)"
                raise WaitTimeout(
                    f"{describe()} within {timeout}s; last calls:\n  {recent}"
                )
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # ------------------------------------------------------------------ injection

    def tap(self, chat_id: int, message_id: int, user: User, data: str | None = None,
            button_text: str | None = None) -> str:
        """Tap an inline button: queue a callback_query update, return the query id.

        Pick the button by ``button_text`` (its callback_data is used) or by exact ``data``.
        ``data`` alone may be forged (no such button, or an unknown/deleted message, which
        arrives as an inaccessible message with date 0).
        """
        if data is None and button_text is None:
            raise ValueError("give data or button_text")
        msg = self._messages.get((chat_id, message_id))
        if msg is not None and msg.deleted:
            msg = None
        if button_text is not None:
            if msg is None:
                raise LookupError(f"no message {message_id} in chat {chat_id} to tap")
            found = [b for b in msg.buttons if b.get("text") == button_text
                     and (data is None or b.get("callback_data") == data)]
            if not found:
                raise LookupError(
                    f"message {message_id} has no button {button_text!r}; "
                    f"buttons: {msg.button_texts}"
                )
            data = found[0].get("callback_data")
            if data is None:
                raise LookupError(f"button {button_text!r} has no callback_data")
        query_id = str(next(self._query_ids))
        if msg is not None:
            message = self._message_dict(msg)
        else:
            message = {"message_id": message_id, "chat": self._chat(chat_id), "date": 0}
        payload = {
            "id": query_id,
            "from": user.to_dict(),
            "message": message,
            "chat_instance": str(abs(chat_id) * 7 + 13),
            "data": data,
        }
        self._queries[query_id] = _Query(query_id, self.clock(), chat_id, message_id)
        self._enqueue("callback_query", payload)
        return query_id

    def send_text(self, chat_id: int, user: User, text: str,
                  chat_type: str = "private", reply_to: int | None = None,
                  thread_id: int | None = None) -> int:
        """A user writes ``text`` to ``chat_id``: queue a message update, return update_id.
        A leading /command gets a bot_command entity like Telegram adds. ``reply_to``: the
        id of a message of that chat it replies to (the update carries it as
        ``reply_to_message``; an unknown or deleted one is left out, as Telegram does).
        ``thread_id``: the topic it is written in (default: the replied message's)."""
        if chat_id not in self._chats or self._chats[chat_id]["type"] != chat_type:
            if chat_type == "private":
                self._chats[chat_id] = {"id": chat_id, "type": "private", **{
                    k: v for k, v in user.to_dict().items() if k in ("first_name", "username")
                }}
            else:
                self._chats[chat_id] = {"id": chat_id, "type": chat_type,
                                        "title": f"Chat {chat_id}"}
        entities = []
        m = re.match(r"/[A-Za-z0-9_]{1,64}(@[A-Za-z0-9_]{3,32})?(?![A-Za-z0-9_/<>@])", text)
        if m:
            entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(m[0])})
        target = self._messages.get((chat_id, reply_to)) if reply_to is not None else None
        if thread_id is None and target is not None:
            thread_id = target.message_thread_id
        msg = Message(chat_id=chat_id, message_id=self._new_message_id(chat_id), text=text,
                      raw_text=text, entities=entities, from_user=user, date=int(time.time()),
                      reply_to_message_id=reply_to, message_thread_id=thread_id)
        self._messages[(chat_id, msg.message_id)] = msg
        return self._enqueue("message", self._message_dict(msg))

    def enable_topics(self, chat_id: int) -> None:
        """Turn topics on in ``chat_id``: a supergroup becomes a forum (``is_forum``), a
        private chat gets topics (Bot API 9.4: the bot's topic mode; getMe reports
        ``has_topics_enabled`` from then on, so enable it before the bot starts). A basic
        group cannot (Telegram makes it a supergroup first): ValueError."""
        chat = self._chat(chat_id)
        if chat["type"] == "group":
            raise ValueError(f"chat {chat_id} is a basic group: only supergroups and private "
                             "chats have topics (use an id <= -1000000000000)")
        if chat["type"] == "supergroup":
            self._chats[chat_id]["is_forum"] = True
        self._forums.add(chat_id)
        # Thread id 1 is a forum's General topic: no topic of ours may get it.
        self._next_message_id[chat_id] = max(self._next_message_id.get(chat_id, 1), 2)

    def delete_topic(self, chat_id: int, thread_id: int) -> None:
        """A person deletes a topic: it and every message in it are gone (sending to it
        answers "message thread not found", editing its messages "message to edit not
        found")."""
        topic = self._topics.get((chat_id, thread_id))
        if topic is None or topic.deleted:
            raise LookupError(f"no topic {thread_id} in chat {chat_id}")
        topic.deleted = True
        for (cid, _), msg in self._messages.items():
            if cid == chat_id and msg.message_thread_id == thread_id:
                msg.deleted = True
        self._notify()

    def add_update(self, update_type: str, payload: dict[str, Any]) -> int:
        """Queue an arbitrary update of ``update_type`` (e.g. "my_chat_member")."""
        return self._enqueue(update_type, payload)

    def fail_next(self, method: str, count: int = 1, *, retry_after: int | None = None,
                  error: str | None = None, status: int | None = None) -> None:
        """The next ``count`` calls of ``method`` fail.

        ``retry_after`` (or nothing at all: retry_after=1) gives Telegram's 429 flood answer
        with ``parameters.retry_after``. ``error`` gives that description (write it in full,
        e.g. "Bad Request: chat not found") with ``status`` (default 400).
        """
        if error is not None and retry_after is None:
            spec: tuple[int, str, dict | None] = (status or 400, error, None)
        else:
            seconds = 1 if retry_after is None else retry_after
            spec = (status or 429, error or f"Too Many Requests: retry after {seconds}",
                    {"retry_after": seconds})
        queue = self._failures.setdefault(method.lower(), deque())
        queue.extend(spec for _ in range(count))

    def set_down(self, down: bool) -> None:
        """Outage: while down every request (held long polls too) gets HTTP 502 with an HTML
        body, like a proxy in front of a dead Telegram."""
        self._down = down
        self._notify()

    def set_chat_unavailable(self, chat_id: int,
                             description: str | None = "Forbidden: bot was kicked from the "
                             "supergroup chat", status: int = 403) -> None:
        """Requests for ``chat_id`` fail with ``status``/``description`` (None: clear)."""
        if description is None:
            self._chat_errors.pop(chat_id, None)
        else:
            self._chat_errors[chat_id] = (status, description, None)

    def migrate_chat(self, old_chat_id: int, new_chat_id: int) -> None:
        """The group became a supergroup: requests to the old id get 400 with
        ``parameters.migrate_to_chat_id`` (PTB raises ChatMigrated)."""
        self._chat_errors[old_chat_id] = (
            400, "Bad Request: group chat was upgraded to a supergroup chat",
            {"migrate_to_chat_id": new_chat_id},
        )

    # ------------------------------------------------------------------ HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrival = self.clock()
        if request.path.startswith("/file/bot"):
            return self._serve_file(request)
        m = re.fullmatch(r"/bot([^/]*)/([^/]+)", request.path)
        sent_name = m.group(2) if m else request.path
        name = self._by_lower.get(sent_name.lower()) if m else None
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        status = 200
        body: dict[str, Any]
        try:
            try:
                params, files = await self._read_params(request)
            except _ApiError:
                raise
            except Exception:
                raise _bad("can't parse request body") from None
            if self._down:
                raise _Down()
            if m is None:
                raise _ApiError(404, "Not Found")
            if m.group(1) != self.token and m.group(1) not in self.aliases:
                raise _ApiError(401, "Unauthorized")
            if name is None:
                raise _ApiError(404, "Not Found")
            params = _coerce(params)
            queue = self._failures.get(name.lower())
            if queue:
                raise _ApiError(*queue.popleft())
            result = await self._handlers[name](params, files)
            body = {"ok": True, "result": result}
        except _ApiError as exc:
            status, body = exc.code, exc.body()
        except _Down:
            self._record(name or sent_name, params, arrival, 502, files, {
                "ok": False, "error_code": 502, "description": "Bad Gateway (HTML body)",
            }, m.group(1) if m else "")
            return web.Response(status=502, text=BAD_GATEWAY_BODY, content_type="text/html")
        except asyncio.CancelledError:
            self._record(name or sent_name, params, arrival, 499, files, {
                "ok": False, "error_code": 499, "description": "client closed the request",
            }, m.group(1) if m else "")
            raise
        except Exception as exc:  # a bug in the fake: answer 500, keep it for the test
            self.internal_errors.append(exc)
            status = 500
            body = {"ok": False, "error_code": 500, "description": f"Internal Server Error: {exc!r}"}
        self._record(name or sent_name, params, arrival, status, files, body,
                     m.group(1) if m else "")
        return web.json_response(body, status=status)

    def _record(self, method: str, params: dict, at: float, status: int,
                files: dict[str, bytes], body: dict, token: str = "") -> None:
        self.calls.append(Call(method, params, at, body, status, files, token))
        self._notify()

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, bytes] = {}
        if request.method != "POST" or not request.can_read_body:
            return params, files
        ctype = request.content_type
        if ctype == "application/json":
            data = await request.json()
            if not isinstance(data, dict):
                raise _bad("parameters must be a JSON object")
            params.update(data)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = value.file.read()
                elif isinstance(value, bytes | bytearray):
                    files[key] = bytes(value)
                else:
                    params[key] = value
        return params, files

    def _serve_file(self, request: web.Request) -> web.StreamResponse:
        prefix = f"/file/bot{self.token}/"
        if self._down:
            return web.Response(status=502, text=BAD_GATEWAY_BODY, content_type="text/html")
        if request.path.startswith(prefix):
            path = request.path[len(prefix):]
            for stored in self._files.values():
                if stored.path == path:
                    return web.Response(body=stored.data, content_type="image/jpeg")
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    # ------------------------------------------------------------------ state helpers

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": self.bot_first_name,
                "username": self.bot_username}

    def _chat(self, chat_id: int) -> dict[str, Any]:
        chat = self._chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": f"User{chat_id}"}
            else:
                kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"
                chat = {"id": chat_id, "type": kind, "title": f"Chat {chat_id}"}
            self._chats[chat_id] = chat
        return dict(chat)

    def _new_message_id(self, chat_id: int) -> int:
        mid = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = mid + 1
        return mid

    def _message_dict(self, msg: Message, nested: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "message_id": msg.message_id,
            "from": msg.from_user.to_dict() if msg.from_user else self._bot_user(),
            "chat": self._chat(msg.chat_id),
            "date": msg.date,
        }
        if msg.message_thread_id is not None:
            d["message_thread_id"] = msg.message_thread_id
            d["is_topic_message"] = True
        if msg.edit_date is not None:
            d["edit_date"] = msg.edit_date
        if msg.text is not None:
            d["text"] = msg.text
            if msg.entities:
                d["entities"] = copy.deepcopy(msg.entities)
        if msg.photo is not None and msg.photo_file_id:
            d["photo"] = [self._photo_size(self._files[msg.photo_file_id])]
            if msg.caption:
                d["caption"] = msg.caption
                if msg.caption_entities:
                    d["caption_entities"] = copy.deepcopy(msg.caption_entities)
        if msg.reply_markup and "inline_keyboard" in msg.reply_markup:
            # Message.reply_markup is inline only: a ForceReply or a reply keyboard is not
            # echoed back (it is kept here in ``Message.reply_markup`` for tests).
            d["reply_markup"] = copy.deepcopy(msg.reply_markup)
        target = (self._messages.get((msg.chat_id, msg.reply_to_message_id))
                  if msg.reply_to_message_id is not None else None)
        if target is not None and not target.deleted and nested:
            # Like Telegram: the replied message, itself without its own reply_to_message.
            d["reply_to_message"] = self._message_dict(target, nested=False)
        return d

    @staticmethod
    def _photo_size(f: _File) -> dict[str, Any]:
        return {"file_id": f.file_id, "file_unique_id": f.unique_id, "file_size": len(f.data),
                "width": f.width, "height": f.height}

    def _enqueue(self, update_type: str, payload: dict[str, Any]) -> int:
        update_id = self._next_update_id
        self._next_update_id += 1
        update = {"update_id": update_id, update_type: payload}
        if self._is_allowed(update_type):
            self._pending.append(update)
        else:
            self.dropped_updates.append(update)
        self._notify()
        return update_id

    def _is_allowed(self, update_type: str) -> bool:
        if not self.allowed_updates:
            return update_type not in OPT_IN_UPDATES
        return update_type in self.allowed_updates

    @staticmethod
    def _update_type(update: dict[str, Any]) -> str:
        return next(k for k in update if k != "update_id")

    def _chat_id(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            raise _bad("chat not found")
        if chat_id in self._chat_errors:
            raise _ApiError(*self._chat_errors[chat_id])
        return chat_id

    def _thread_of(self, chat_id: int, p: dict[str, Any], reply_to: int | None) -> int | None:
        """The topic a new message goes to: ``message_thread_id``, else the topic of the
        message it replies to (None: the main thread). As in telegram-bot-api, a group
        without topics ignores ``message_thread_id``; in a forum or a private chat an
        unknown or deleted topic (or 1, the General topic) is refused."""
        thread = p.get("message_thread_id")
        if not thread:
            target = self._messages.get((chat_id, reply_to)) if reply_to is not None else None
            return target.message_thread_id if target is not None else None
        if chat_id < 0 and chat_id not in self._forums:
            return None
        topic = self._topics.get((chat_id, thread))
        if topic is None or topic.deleted:
            raise _bad("message thread not found")
        return thread

    def _pace(self, chat_id: int) -> None:
        if self.group_limit_per_minute is None or chat_id >= 0:
            return
        now = self.clock()
        window = self._group_sends.setdefault(chat_id, deque())
        while window and window[0] <= now - self.group_window_seconds:
            window.popleft()
        if len(window) >= self.group_limit_per_minute:
            wait = window[0] + self.group_window_seconds - now
            raise _flood(max(1, math.ceil(wait)))
        window.append(now)

    def _parse(self, text: Any, parse_mode: Any, entities: Any,
               ) -> tuple[str, list[dict[str, Any]]]:
        text = "" if text is None else str(text)
        mode = (parse_mode or "").strip().lower() if isinstance(parse_mode, str) else ""
        try:
            if mode == "html":
                plain, ents = parse_html(text, strict_ampersand=self.strict_html_ampersand)
            elif mode == "markdownv2":
                plain, ents = parse_markdown_v2(text)
            elif mode == "markdown":
                plain, ents = parse_markdown(text)
            elif mode == "":
                plain = text
                ents = list(entities) if isinstance(entities, list) else []
            else:
                raise _bad(f"unsupported parse_mode \"{parse_mode}\"")
        except EntityParseError as exc:
            raise _bad(f"can't parse entities: {exc}") from None
        return _trim(plain, ents)

    def _parse_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        plain, ents = self._parse(params.get("text"), params.get("parse_mode"),
                                  params.get("entities"))
        if not plain:
            raise _bad("message text is empty")
        if utf16_len(plain) > MAX_TEXT:
            raise _bad("message is too long")
        return plain, ents

    def _parse_caption(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        plain, ents = self._parse(params.get("caption"), params.get("parse_mode"),
                                  params.get("caption_entities"))
        if utf16_len(plain) > MAX_CAPTION:
            raise _bad("message caption is too long")
        return plain, ents

    @staticmethod
    def _markup(params: dict[str, Any], *, inline_only: bool = False) -> dict[str, Any] | None:
        """Validate and normalise reply_markup; None when absent or an empty keyboard."""
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            if inline_only:
                raise _bad("inline keyboard expected")
            if "force_reply" in markup:
                FakeTelegram._check_force_reply(markup)
            return copy.deepcopy(markup)
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array '
                       "of Arrays")
        count = 0
        clean_rows = []
        for row in rows:
            clean_row = []
            for button in row:
                if not isinstance(button, dict):
                    raise _bad("InlineKeyboardButton must be an Object")
                if not isinstance(button.get("text"), str):
                    raise _bad("can't find field \"text\"")
                if not button["text"].strip():
                    raise _bad("BUTTON_TEXT_INVALID")
                data = button.get("callback_data")
                if data is not None and (not isinstance(data, str)
                                         or not 1 <= len(data.encode("utf-8")) <= 64):
                    raise _bad("BUTTON_DATA_INVALID")
                url = button.get("url")
                if url is not None and (not isinstance(url, str) or not _checked_link(url)):
                    raise _bad("BUTTON_URL_INVALID")
                if "style" in button and button["style"] not in BUTTON_STYLES:
                    raise _bad("BUTTON_STYLE_INVALID")
                if "copy_text" in button:
                    copied = button["copy_text"]
                    if not isinstance(copied, dict) or set(copied) != {"text"} \
                            or not isinstance(copied["text"], str) \
                            or not 1 <= len(copied["text"]) <= 256:
                        raise _bad("BUTTON_COPY_TEXT_INVALID")
                # Bot API 9.4: exactly one field besides text, style, icon_custom_emoji_id.
                actions = set(button) - {"text", "style", "icon_custom_emoji_id"}
                if not actions:
                    raise _bad("text buttons are unallowed in the inline keyboard")
                clean_row.append(copy.deepcopy(button))
                count += 1
            if clean_row:
                clean_rows.append(clean_row)
        if count > 100:
            raise _bad("reply markup is too long")
        if not clean_rows:
            return None
        return {"inline_keyboard": clean_rows}

    @staticmethod
    def _check_force_reply(markup: dict[str, Any]) -> None:
        """ForceReply: ``force_reply`` true, optional ``selective`` (bool) and
        ``input_field_placeholder`` (0-64 characters), nothing else."""
        if markup.get("force_reply") is not True:
            raise _bad("can't parse reply keyboard markup JSON object")
        if set(markup) - {"force_reply", "selective", "input_field_placeholder"}:
            raise _bad("can't parse reply keyboard markup JSON object")
        if "selective" in markup and not isinstance(markup["selective"], bool):
            raise _bad("can't parse reply keyboard markup JSON object")
        placeholder = markup.get("input_field_placeholder")
        if placeholder is not None and (not isinstance(placeholder, str)
                                        or len(placeholder) > 64):
            raise _bad("input field placeholder is too long")

    def _editable(self, params: dict[str, Any]) -> Message:
        if params.get("inline_message_id"):
            raise _bad("message to edit not found")
        chat_id = self._chat_id(params)
        message_id = params.get("message_id")
        if message_id is None:
            raise _bad("message identifier is not specified")
        msg = self._messages.get((chat_id, message_id))
        if msg is None or msg.deleted:
            raise _bad("message to edit not found")
        if msg.from_user is not None:
            raise _bad("message can't be edited")
        return msg

    def _snapshot(self, msg: Message) -> None:
        msg.history.append({
            "text": msg.text, "raw_text": msg.raw_text, "entities": copy.deepcopy(msg.entities),
            "caption": msg.caption, "reply_markup": copy.deepcopy(msg.reply_markup),
            "parse_mode": msg.parse_mode,
        })

    def _mark_edited(self, msg: Message) -> None:
        msg.edited_count += 1
        msg.edit_date = int(time.time())

    # ------------------------------------------------------------------ API methods

    async def _get_me(self, p: dict, files: dict) -> Any:
        return {**self._bot_user(), "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False,
                # Bot API 9.3/9.4: the bot's topic mode in private chats (enable_topics).
                "has_topics_enabled": any(chat > 0 for chat in self._forums),
                "allows_users_to_create_topics": False}

    async def _get_updates(self, p: dict, files: dict) -> Any:
        if self.webhook_url:
            raise _ApiError(409, CONFLICT_WEBHOOK)
        offset = p.get("offset")
        limit = p.get("limit")
        limit = 100 if not isinstance(limit, int) or limit <= 0 else min(limit, 100)
        timeout = p.get("timeout") or 0
        if not isinstance(timeout, int | float) or timeout < 0:
            timeout = 0
        allowed = p.get("allowed_updates")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise _bad("can't parse allowed updates")
            self.allowed_updates = list(allowed)
        if isinstance(offset, int) and offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        elif isinstance(offset, int) and offset < 0:
            self._pending = self._pending[offset:]
        token = object()
        self._poll_token = token
        self._notify()  # a held older poll sees the conflict
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                if self._down:
                    raise _Down()
                if self._closing:
                    return []
                if self._poll_token is not token:
                    raise _ApiError(409, CONFLICT_OTHER_POLL)
                kept = self._keep_allowed()
                if kept:
                    return copy.deepcopy(kept[:limit])
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                event = self._changed
                self._waiting_polls += 1
                self._notify()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    pass
                finally:
                    self._waiting_polls -= 1
        finally:
            if self._poll_token is token:
                self._poll_token = None

    async def _delete_webhook(self, p: dict, files: dict) -> Any:
        self.webhook_url = ""
        if p.get("drop_pending_updates"):
            self._pending.clear()
        return True

    async def _set_webhook(self, p: dict, files: dict) -> Any:
        url = p.get("url") or ""
        if url and not str(url).startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = p.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _bad("secret token contains unallowed characters")
        allowed = p.get("allowed_updates")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise _bad("can't parse allowed updates")
            self.allowed_updates = list(allowed)
        self.webhook_url = str(url)
        self.webhook_secret = str(secret) if secret else None
        if p.get("drop_pending_updates"):
            self._pending.clear()
        if self.webhook_url and (self._webhook_task is None or self._webhook_task.done()):
            self._webhook_task = asyncio.create_task(self._deliver_webhook())
        return True

    async def _get_webhook_info(self, p: dict, files: dict) -> Any:
        info: dict[str, Any] = {"url": self.webhook_url, "has_custom_certificate": False,
                                "pending_update_count": len(self._pending)}
        if self.webhook_url and self._webhook_error is not None:
            info["last_error_date"], info["last_error_message"] = self._webhook_error
        if self.webhook_url and self.allowed_updates is not None:
            info["allowed_updates"] = list(self.allowed_updates)
        return info

    def _webhook_post_url(self) -> str:
        target = self.webhook_target
        if target is None:
            return self.webhook_url
        if callable(target):
            return target(self.webhook_url)
        parts = urlsplit(self.webhook_url)
        query = f"?{parts.query}" if parts.query else ""
        return target.rstrip("/") + (parts.path or "/") + query

    def _keep_allowed(self) -> list[dict[str, Any]]:
        """Drop pending updates of types the bot did not ask for (as Telegram does);
        return the rest, still pending."""
        kept = []
        for update in self._pending:
            if self._is_allowed(self._update_type(update)):
                kept.append(update)
            else:
                self.dropped_updates.append(update)
        self._pending = kept
        return kept

    async def _deliver_webhook(self) -> None:
        """While a webhook is set: POST the pending updates one at a time, in order, with
        the secret header. A non-2xx answer or a connection error is retried (the same
        update, after ``webhook_retry_delay``), like Telegram does; a 2xx confirms it."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while self.webhook_url and not self._closing:
                kept = self._keep_allowed()
                if not kept or self._down:
                    event = self._changed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), 1.0)
                    continue
                update = kept[0]
                url = self._webhook_post_url()
                headers = {"Content-Type": "application/json"}
                if self.webhook_secret:
                    headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook_secret
                status: int | None = None
                answer: Any = None
                try:
                    async with session.post(url, data=json.dumps(update),
                                            headers=headers) as response:
                        status = response.status
                        text = await response.text()
                        with contextlib.suppress(ValueError):
                            answer = json.loads(text)
                    error = (None if 200 <= status < 300
                             else f"Wrong response from the webhook: {status} {response.reason}")
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    error = f"Connection failed: {type(exc).__name__}"
                if error is None and self.webhook_lost_answers > 0:
                    self.webhook_lost_answers -= 1
                    error = "Read timeout expired"
                self.webhook_deliveries.append(WebhookDelivery(
                    copy.deepcopy(update), url, status, answer, error, self.clock()))
                if error is None:
                    self._pending = [u for u in self._pending if u is not update]
                    self._notify()
                    continue
                self._webhook_error = (int(time.time()), error)
                self._notify()
                await asyncio.sleep(self.webhook_retry_delay)

    @staticmethod
    def _commands_key(p: dict) -> tuple[str, str]:
        scope = p.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(p.get("language_code") or "")

    async def _set_my_commands(self, p: dict, files: dict) -> Any:
        commands = p.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        clean = []
        for cmd in commands:
            if not isinstance(cmd, dict):
                raise _bad("BotCommand must be an Object")
            name = cmd.get("command")
            desc = cmd.get("description")
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(desc, str) or not 1 <= len(desc) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
            clean.append({"command": name, "description": desc})
        self.commands[self._commands_key(p)] = clean
        return True

    async def _get_my_commands(self, p: dict, files: dict) -> Any:
        return copy.deepcopy(self.commands.get(self._commands_key(p), []))

    async def _delete_my_commands(self, p: dict, files: dict) -> Any:
        self.commands.pop(self._commands_key(p), None)
        return True

    def _check_reply_to(self, chat_id: int, p: dict) -> int | None:
        """The id of the message the new one replies to (None: none, or a missing one
        allowed by ``allow_sending_without_reply``); 400 if it is missing otherwise."""
        reply = p.get("reply_parameters")
        reply_id = p.get("reply_to_message_id")
        allow = bool(p.get("allow_sending_without_reply"))
        if isinstance(reply, dict):
            reply_id = reply.get("message_id")
            allow = allow or bool(reply.get("allow_sending_without_reply"))
        if reply_id is None:
            return None
        target = self._messages.get((chat_id, reply_id))
        if target is None or target.deleted:
            if allow:
                return None
            raise _bad("message to be replied not found")
        return reply_id

    async def _send_message(self, p: dict, files: dict) -> Any:
        chat_id = self._chat_id(p)
        markup = self._markup(p)
        plain, ents = self._parse_text(p)
        reply_to = self._check_reply_to(chat_id, p)
        thread = self._thread_of(chat_id, p, reply_to)
        self._pace(chat_id)
        msg = Message(
            chat_id=chat_id, message_id=self._new_message_id(chat_id), text=plain,
            raw_text=str(p.get("text")), parse_mode=p.get("parse_mode"), reply_markup=markup,
            entities=ents, date=int(time.time()), reply_to_message_id=reply_to,
            message_thread_id=thread,
        )
        self._messages[(chat_id, msg.message_id)] = msg
        return self._message_dict(msg)

    async def _edit_message_text(self, p: dict, files: dict) -> Any:
        msg = self._editable(p)
        if msg.text is None:
            raise _bad("there is no text in the message to edit")
        markup = self._markup(p, inline_only=True)  # absent => keyboard removed
        plain, ents = self._parse_text(p)
        if plain == msg.text and ents == msg.entities and markup == msg.reply_markup:
            raise _bad(NOT_MODIFIED[len("Bad Request: "):])
        self._pace(msg.chat_id)
        self._snapshot(msg)
        msg.text, msg.entities, msg.reply_markup = plain, ents, markup
        msg.raw_text, msg.parse_mode = str(p.get("text")), p.get("parse_mode")
        self._mark_edited(msg)
        return self._message_dict(msg)

    async def _edit_message_reply_markup(self, p: dict, files: dict) -> Any:
        msg = self._editable(p)
        markup = self._markup(p, inline_only=True)
        if markup == msg.reply_markup:
            raise _bad(NOT_MODIFIED[len("Bad Request: "):])
        self._pace(msg.chat_id)
        self._snapshot(msg)
        msg.reply_markup = markup
        self._mark_edited(msg)
        return self._message_dict(msg)

    async def _edit_message_caption(self, p: dict, files: dict) -> Any:
        msg = self._editable(p)
        if msg.photo is None:
            raise _bad("there is no caption in the message to edit")
        markup = self._markup(p, inline_only=True)
        plain, ents = self._parse_caption(p)
        if plain == (msg.caption or "") and ents == msg.caption_entities \
                and markup == msg.reply_markup:
            raise _bad(NOT_MODIFIED[len("Bad Request: "):])
        self._pace(msg.chat_id)
        self._snapshot(msg)
        msg.caption, msg.caption_entities, msg.reply_markup = plain or None, ents, markup
        msg.raw_caption = p.get("caption")
        self._mark_edited(msg)
        return self._message_dict(msg)

    async def _delete_message(self, p: dict, files: dict) -> Any:
        chat_id = self._chat_id(p)
        msg = self._messages.get((chat_id, p.get("message_id")))
        if msg is None or msg.deleted:
            raise _bad("message to delete not found")
        msg.deleted = True
        return True

    async def _answer_callback_query(self, p: dict, files: dict) -> Any:
        query = self._queries.get(str(p.get("callback_query_id") or ""))
        if (query is None or query.answered
                or self.clock() - query.created > self.callback_query_ttl):
            raise _bad(QUERY_TOO_OLD[len("Bad Request: "):])
        text = p.get("text")
        if isinstance(text, str) and utf16_len(text) > MAX_ANSWER_TEXT:
            raise _bad("MESSAGE_TOO_LONG")
        query.answered = True
        self.answered_queries[query.id] = dict(p)
        return True

    async def _send_photo(self, p: dict, files: dict) -> Any:
        chat_id = self._chat_id(p)
        ref = p.get("photo")
        data = files.get("photo")
        stored: _File | None = None
        width = height = 0
        if data is None and isinstance(ref, str) and ref.startswith("attach://"):
            data = files.get(ref[len("attach://"):])
        if data is None and isinstance(ref, str):
            stored = self._files.get(ref)
            if stored is None:
                raise _bad("wrong file identifier/HTTP URL specified")
        if data is None and stored is None:
            raise _bad("there is no photo in the request")
        if stored is None:
            assert data is not None
            if not data:
                raise _bad("file must be non-empty")
            size = _image_size(data) if self.validate_images else (_png_size(data) or (0, 0))
            if size is None:
                raise _bad("IMAGE_PROCESS_FAILED")
            width, height = size
            if self.validate_images and (
                width + height > 10000 or max(width, height) > 20 * max(1, min(width, height))
            ):
                raise _bad("PHOTO_INVALID_DIMENSIONS")
        markup = self._markup(p)
        plain, ents = self._parse_caption(p)
        thread = self._thread_of(chat_id, p, self._check_reply_to(chat_id, p))
        self._pace(chat_id)
        if stored is None:
            assert data is not None
            n = next(self._file_seq)
            stored = _File(f"AgACAgIAAxkDAAI{n:08d}fake", f"AQAD{n:06d}", data,
                           f"photos/file_{n}.jpg", width, height)
            self._files[stored.file_id] = stored
        msg = Message(
            chat_id=chat_id, message_id=self._new_message_id(chat_id), text=None,
            parse_mode=p.get("parse_mode"), reply_markup=markup, photo=stored.data,
            caption=plain or None, raw_caption=p.get("caption"), caption_entities=ents,
            date=int(time.time()), photo_file_id=stored.file_id,
            photo_size=(stored.width, stored.height), message_thread_id=thread,
        )
        self._messages[(chat_id, msg.message_id)] = msg
        return self._message_dict(msg)

    async def _get_file(self, p: dict, files: dict) -> Any:
        stored = self._files.get(str(p.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        return {"file_id": stored.file_id, "file_unique_id": stored.unique_id,
                "file_size": len(stored.data), "file_path": stored.path}

    async def _send_chat_action(self, p: dict, files: dict) -> Any:
        self._chat_id(p)
        return True

    async def _get_chat(self, p: dict, files: dict) -> Any:
        return self._chat(self._chat_id(p))

    async def _create_forum_topic(self, p: dict, files: dict) -> Any:
        # Texts from TDLib's ForumTopicManager as telegram-bot-api words them.
        chat_id = self._chat_id(p)
        if chat_id not in self._forums:
            raise _bad("the chat is not a forum")
        name = str(p.get("name") or "").strip()[:MAX_TOPIC_NAME]
        if not name:
            raise _bad("title must be non-empty")
        color = p.get("icon_color", TOPIC_ICON_COLORS[0])
        try:
            color = int(color)
        except (TypeError, ValueError):
            raise _bad("invalid icon color specified") from None
        if not 0 <= color <= 0xFFFFFF:
            raise _bad("invalid icon color specified")
        self._pace(chat_id)  # a service message in the chat: Telegram's flood control counts it
        topic = ForumTopic(chat_id, self._new_message_id(chat_id), name, color)
        self._topics[(chat_id, topic.message_thread_id)] = topic
        return topic.to_dict()
