"""Tests of the fake Telegram Bot API server, with raw HTTP and with the real PTB Bot."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import struct
import time
import zlib

import httpx
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
)

try:
    from tests.fake_telegram import FakeClock, FakeTelegram, User, WaitTimeout
except ImportError:  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
    from fake_telegram import FakeClock, FakeTelegram, User, WaitTimeout

ALICE = User(id=1001, username="alice", first_name="Alice")
BOB = User(id=1002, username="bob", first_name="Bob")
PRIVATE = ALICE.id
GROUP = -100777
SUPERGROUP = -1001234567890


def make_png(width: int = 4, height: int = 3) -> bytes:
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def ptb_bot(fake: FakeTelegram, token: str | None = None) -> Bot:
    return Bot(token or fake.token, base_url=f"{fake.url}/bot",
               base_file_url=f"{fake.url}/file/bot")


def keyboard(*pairs: tuple[str, str]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(t, callback_data=d) for t, d in pairs]])


@pytest.fixture
async def make_fake():
    fakes: list[FakeTelegram] = []

    async def factory(**kwargs) -> FakeTelegram:
        fake = FakeTelegram(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    yield factory
    for fake in fakes:
        await fake.stop()
        assert not fake.internal_errors


@pytest.fixture
async def fake(make_fake) -> FakeTelegram:
    return await make_fake()


@pytest.fixture
async def bot(fake):
    async with ptb_bot(fake) as b:
        yield b


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def api(client: httpx.AsyncClient, fake: FakeTelegram, method: str, **params):
    return await client.post(f"{fake.url}/bot{fake.token}/{method}", json=params)


# ---------------------------------------------------------------- basics


async def test_get_me_raw_and_ptb(fake, client):
    r = await client.get(f"{fake.url}/bot{fake.token}/getMe")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert body["result"]["username"] == "tapgate_bot"
    assert body["result"]["is_bot"] is True
    async with ptb_bot(fake) as b:
        assert b.username == "tapgate_bot"
        assert b.id == 123456
    assert [c.method for c in fake.calls] == ["getMe", "getMe"]


async def test_wrong_token_is_401(fake, client):
    r = await client.post(f"{fake.url}/bot999:WRONG/getMe")
    assert r.status_code == 401
    assert r.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    with pytest.raises(InvalidToken):
        async with ptb_bot(fake, token="999:WRONG"):
            pass


async def test_unknown_method_is_404(fake, client):
    r = await api(client, fake, "sendTelepathy", chat_id=1)
    assert r.status_code == 404
    assert r.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert fake.calls[-1].method == "sendTelepathy"
    assert fake.calls[-1].status == 404


async def test_method_names_are_case_insensitive(fake, client):
    r = await api(client, fake, "SENDMESSAGE", chat_id=PRIVATE, text="hi")
    assert r.json()["ok"] is True
    assert fake.calls_of("sendMessage")[0].params["text"] == "hi"


async def test_params_as_json_form_query_and_json_strings(fake, client):
    markup = {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}
    url = f"{fake.url}/bot{fake.token}/sendMessage"
    r1 = await client.post(url, json={"chat_id": str(PRIVATE), "text": "json",
                                      "reply_markup": markup})
    r2 = await client.post(url, data={"chat_id": str(PRIVATE), "text": "form",
                                      "reply_markup": json.dumps(markup)})
    r3 = await client.post(url, json={"chat_id": PRIVATE, "text": "json string",
                                      "reply_markup": json.dumps(markup)})
    r4 = await client.get(url, params={"chat_id": PRIVATE, "text": "query"})
    for r in (r1, r2, r3, r4):
        assert r.status_code == 200, r.text
    msgs = fake.messages(PRIVATE)
    assert [m.text for m in msgs] == ["json", "form", "json string", "query"]
    assert [m.message_id for m in msgs] == [1, 2, 3, 4]
    assert all(m.reply_markup == markup for m in msgs[:3])
    assert msgs[3].reply_markup is None
    assert fake.calls_of("sendMessage")[1].params["chat_id"] == PRIVATE
    r = await client.post(url, data={"chat_id": PRIVATE, "text": "x", "reply_markup": "{oops"})
    assert r.json()["description"] == "Bad Request: can't parse reply keyboard markup JSON object"


async def test_send_message_returns_telegram_shape(fake, client):
    r = await api(client, fake, "sendMessage", chat_id=GROUP, text="<b>hi</b> you",
                  parse_mode="HTML")
    result = r.json()["result"]
    assert result["message_id"] == 1
    assert result["chat"] == {"id": GROUP, "type": "group", "title": f"Chat {GROUP}"}
    assert result["from"]["username"] == "tapgate_bot"
    assert result["text"] == "hi you"
    assert result["entities"] == [{"type": "bold", "offset": 0, "length": 2}]
    assert isinstance(result["date"], int)
    assert "reply_markup" not in result
    r = await api(client, fake, "sendMessage", chat_id=SUPERGROUP, text="x")
    assert r.json()["result"]["chat"]["type"] == "supergroup"


# ---------------------------------------------------------------- parse modes and limits


async def test_html_escaped_text_is_shown_verbatim(fake, bot):
    shown = '<b>&"x\''
    sent = await bot.send_message(PRIVATE, html.escape(shown), parse_mode=ParseMode.HTML)
    assert sent.text == shown
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.text == shown
    assert stored.raw_text == html.escape(shown)
    assert stored.parse_mode == "HTML"
    assert stored.entities == []


async def test_html_entities_offsets_are_utf16(fake, bot):
    sent = await bot.send_message(
        PRIVATE, '😀 <b>bold</b> <a href="https://example.com/?a=1&amp;b=2">link</a>',
        parse_mode=ParseMode.HTML,
    )
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.text == "😀 bold link"
    assert stored.entities == [
        {"type": "bold", "offset": 3, "length": 4},
        {"type": "text_link", "offset": 8, "length": 4, "url": "https://example.com/?a=1&b=2"},
    ]
    assert sent.entities[0].offset == 3


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("<foo>x</foo>", 'Unsupported start tag "foo" at byte offset 0'),
        ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("é<b", "Unclosed start tag at byte offset 2"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("AT&T", "at byte offset 2"),
    ],
)
async def test_malformed_html_is_rejected(fake, bot, text, reason):
    with pytest.raises(BadRequest) as exc_info:
        await bot.send_message(PRIVATE, text, parse_mode=ParseMode.HTML)
    # PTB capitalizes the description (str.capitalize lowercases the rest): compare lowered
    assert "can't parse entities" in exc_info.value.message.lower()
    assert reason.lower() in exc_info.value.message.lower()
    assert fake.calls[-1].description.startswith("Bad Request: can't parse entities: ")
    assert reason in fake.calls[-1].description
    assert fake.messages(PRIVATE) == []
    assert fake.calls[-1].status == 400


async def test_html_supported_tags(fake, bot):
    text = (
        "<b>b</b><strong>s</strong><i>i</i><em>e</em><u>u</u><ins>n</ins><s>s</s>"
        "<strike>k</strike><del>d</del><tg-spoiler>p</tg-spoiler>"
        '<span class="tg-spoiler">q</span><code>c</code>'
        '<pre><code class="language-python">x = 1</code></pre>'
        "<blockquote>bq</blockquote><blockquote expandable>ex</blockquote>&#33;&#x21;"
    )
    sent = await bot.send_message(PRIVATE, text, parse_mode=ParseMode.HTML)
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.text == "bsieunskdpqcx = 1bqex!!"
    types = [e["type"] for e in stored.entities]
    assert types == [
        "bold", "bold", "italic", "italic", "underline", "underline", "strikethrough",
        "strikethrough", "strikethrough", "spoiler", "spoiler", "code", "pre", "blockquote",
        "expandable_blockquote",
    ]
    assert stored.entities[12]["language"] == "python"


async def test_lenient_ampersand_mode_matches_telegram(make_fake):
    fake = await make_fake(strict_html_ampersand=False)
    async with ptb_bot(fake) as b:
        sent = await b.send_message(PRIVATE, "AT&T &foo; &lt;", parse_mode=ParseMode.HTML)
    assert sent.text == "AT&T &foo; <"


async def test_markdown_v2(fake, bot):
    with pytest.raises(BadRequest) as exc_info:
        await bot.send_message(PRIVATE, "Done.", parse_mode=ParseMode.MARKDOWN_V2)
    assert fake.calls[-1].description == (
        "Bad Request: can't parse entities: Character '.' is reserved and must be escaped "
        "with the preceding '\\'"
    )
    assert "can't parse entities" in exc_info.value.message.lower()
    sent = await bot.send_message(PRIVATE, "Done\\.", parse_mode=ParseMode.MARKDOWN_V2)
    assert sent.text == "Done."
    sent = await bot.send_message(
        PRIVATE, "*b* _i_ __u__ ~s~ ||p|| `c` [l](https://x\\.com) *_n_*",
        parse_mode=ParseMode.MARKDOWN_V2,
    )
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.text == "b i u s p c l n"
    assert [e["type"] for e in stored.entities] == [
        "bold", "italic", "underline", "strikethrough", "spoiler", "code", "text_link",
        "bold", "italic",
    ]
    assert stored.entities[6]["url"] == "https://x.com"
    with pytest.raises(BadRequest, match="(?i)can't find end of bold entity at byte offset 2"):
        await bot.send_message(PRIVATE, "a *bold", parse_mode=ParseMode.MARKDOWN_V2)
    with pytest.raises(BadRequest, match="(?i)character '-' is reserved"):
        await bot.send_message(PRIVATE, "cost: 5-3", parse_mode=ParseMode.MARKDOWN_V2)


async def test_legacy_markdown(fake, bot):
    sent = await bot.send_message(PRIVATE, "*b* _i_ 1.5-2", parse_mode=ParseMode.MARKDOWN)
    assert sent.text == "b i 1.5-2"
    with pytest.raises(BadRequest, match="(?i)can't find end of the entity starting at byte"):
        await bot.send_message(PRIVATE, "*open", parse_mode=ParseMode.MARKDOWN)


async def test_text_length_counts_visible_utf16(fake, bot):
    sent = await bot.send_message(PRIVATE, "&amp;" * 4096, parse_mode=ParseMode.HTML)
    assert fake.message(PRIVATE, sent.message_id).text == "&" * 4096
    with pytest.raises(BadRequest, match="(?i)^Message is too long$"):
        await bot.send_message(PRIVATE, "&amp;" * 4097, parse_mode=ParseMode.HTML)
    await bot.send_message(PRIVATE, "😀" * 2048)  # 4096 UTF-16 code units
    with pytest.raises(BadRequest, match="(?i)too long"):
        await bot.send_message(PRIVATE, "😀" * 2048 + "a")
    await bot.send_message(PRIVATE, "<b>x</b>" + "y" * 4095, parse_mode=ParseMode.HTML)


@pytest.mark.parametrize(
    ("text", "parse_mode"), [("", None), ("   \n ", None), ("<b></b>", "HTML"), ("  ", "HTML")]
)
async def test_empty_text_is_rejected(fake, client, text, parse_mode):
    params = {"chat_id": PRIVATE, "text": text}
    if parse_mode:
        params["parse_mode"] = parse_mode
    r = await api(client, fake, "sendMessage", **params)
    assert r.status_code == 400
    assert r.json()["description"] == "Bad Request: message text is empty"


async def test_text_is_trimmed_and_entities_shift(fake, bot):
    sent = await bot.send_message(PRIVATE, "  \n<b>hi</b>  ", parse_mode=ParseMode.HTML)
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.text == "hi"
    assert stored.entities == [{"type": "bold", "offset": 0, "length": 2}]


# ---------------------------------------------------------------- keyboards and edits


async def test_callback_data_is_limited_to_64_bytes(fake, bot):
    ok_data = "é" * 32  # 64 bytes, 32 characters
    sent = await bot.send_message(PRIVATE, "pick", reply_markup=keyboard(("ok", ok_data)))
    assert fake.message(PRIVATE, sent.message_id).buttons[0]["callback_data"] == ok_data
    with pytest.raises(BadRequest, match="(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(PRIVATE, "pick", reply_markup=keyboard(("no", "é" * 32 + "a")))
    with pytest.raises(BadRequest, match="(?i)BUTTON_DATA_INVALID"):
        await bot.send_message(PRIVATE, "pick", reply_markup=keyboard(("no", "x" * 65)))
    await bot.send_message(PRIVATE, "pick", reply_markup=keyboard(("ok", "x" * 64)))
    assert len(fake.messages(PRIVATE)) == 2


async def test_bad_buttons_raw(fake, client):
    r = await api(client, fake, "sendMessage", chat_id=PRIVATE, text="x",
                  reply_markup={"inline_keyboard": [[{"callback_data": "a"}]]})
    assert r.json()["description"] == 'Bad Request: can\'t find field "text"'
    r = await api(client, fake, "sendMessage", chat_id=PRIVATE, text="x",
                  reply_markup={"inline_keyboard": [[{"text": "a", "callback_data": ""}]]})
    assert r.json()["description"] == "Bad Request: BUTTON_DATA_INVALID"


async def test_edit_text_without_markup_removes_keyboard(fake, bot):
    sent = await bot.send_message(GROUP, "Approve?", reply_markup=keyboard(("Yes", "y")))
    assert fake.message(GROUP, sent.message_id).button_texts == ["Yes"]
    edited = await bot.edit_message_text("Approved", GROUP, sent.message_id)
    assert edited.reply_markup is None
    stored = fake.message(GROUP, sent.message_id)
    assert stored.text == "Approved"
    assert stored.reply_markup is None
    assert stored.edited_count == 1
    assert stored.history[0]["text"] == "Approve?"
    with pytest.raises(BadRequest, match="(?i)not modified"):
        await bot.edit_message_reply_markup(GROUP, sent.message_id, reply_markup=None)


async def test_edit_same_content_is_not_modified(fake, bot):
    kb = keyboard(("Yes", "y"))
    sent = await bot.send_message(PRIVATE, "<b>Q</b>", parse_mode="HTML", reply_markup=kb)
    with pytest.raises(BadRequest, match="(?i)^message is not modified"):
        await bot.edit_message_text("<b>Q</b>", PRIVATE, sent.message_id, parse_mode="HTML",
                                    reply_markup=kb)
    assert fake.calls[-1].description == (
        "Bad Request: message is not modified: specified new message content and reply markup "
        "are exactly the same as a current content and reply markup of the message"
    )
    # same visible text, other entities: modified
    await bot.edit_message_text("Q", PRIVATE, sent.message_id, reply_markup=kb)
    # same text, other keyboard: modified
    await bot.edit_message_text("Q", PRIVATE, sent.message_id, reply_markup=keyboard(("N", "n")))
    with pytest.raises(BadRequest, match="(?i)not modified"):
        await bot.edit_message_reply_markup(PRIVATE, sent.message_id,
                                            reply_markup=keyboard(("N", "n")))
    await bot.edit_message_reply_markup(PRIVATE, sent.message_id, reply_markup=None)
    assert fake.message(PRIVATE, sent.message_id).edited_count == 3


async def test_edit_missing_message(fake, bot):
    with pytest.raises(BadRequest, match="(?i)^Message to edit not found$"):
        await bot.edit_message_text("x", PRIVATE, 42)
    with pytest.raises(BadRequest, match="(?i)Message to edit not found"):
        await bot.edit_message_reply_markup(PRIVATE, 42, reply_markup=None)
    sent = await bot.send_message(PRIVATE, "bye")
    assert await bot.delete_message(PRIVATE, sent.message_id) is True
    assert fake.messages(PRIVATE) == []
    with pytest.raises(BadRequest, match="(?i)Message to edit not found"):
        await bot.edit_message_text("x", PRIVATE, sent.message_id)
    with pytest.raises(BadRequest, match="(?i)Message to delete not found"):
        await bot.delete_message(PRIVATE, sent.message_id)


async def test_edit_text_of_photo_fails(fake, bot):
    sent = await bot.send_photo(PRIVATE, make_png(), caption="chart")
    with pytest.raises(BadRequest, match="(?i)There is no text in the message to edit"):
        await bot.edit_message_text("x", PRIVATE, sent.message_id)
    await bot.edit_message_caption(PRIVATE, sent.message_id, caption="<i>new</i>",
                                   parse_mode="HTML")
    assert fake.message(PRIVATE, sent.message_id).caption == "new"


# ---------------------------------------------------------------- callback queries


async def test_tap_and_answer(fake, bot):
    sent = await bot.send_message(GROUP, "Approve?", reply_markup=keyboard(("Yes", "a:1")))
    query_id = fake.tap(GROUP, sent.message_id, ALICE, button_text="Yes")
    updates = await bot.get_updates(timeout=0)
    query = updates[0].callback_query
    assert query.id == query_id
    assert query.data == "a:1"
    assert query.from_user.username == "alice"
    assert query.message.message_id == sent.message_id
    assert query.message.reply_markup == keyboard(("Yes", "a:1"))
    assert await query.answer("Noted", show_alert=True) is True
    assert fake.answered_queries[query_id]["text"] == "Noted"
    assert fake.answered_queries[query_id]["show_alert"] is True
    with pytest.raises(BadRequest, match="(?i)query is too old"):
        await bot.answer_callback_query(query_id)
    with pytest.raises(BadRequest, match="(?i)query ID is invalid"):
        await bot.answer_callback_query("12345")


async def test_answer_text_limit_leaves_query_answerable(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    query_id = fake.tap(PRIVATE, sent.message_id, ALICE, data="y")
    with pytest.raises(BadRequest, match="(?i)MESSAGE_TOO_LONG"):
        await bot.answer_callback_query(query_id, text="x" * 201)
    assert await bot.answer_callback_query(query_id, text="x" * 200)


async def test_query_too_old_with_injected_clock(make_fake):
    clock = FakeClock()
    fake = await make_fake(clock=clock, callback_query_ttl=15)
    async with ptb_bot(fake) as b:
        sent = await b.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
        fresh = fake.tap(PRIVATE, sent.message_id, ALICE, data="y")
        stale = fake.tap(PRIVATE, sent.message_id, BOB, data="y")
        clock.advance(14.9)
        assert await b.answer_callback_query(fresh)
        clock.advance(0.2)
        with pytest.raises(BadRequest, match="(?i)query is too old"):
            await b.answer_callback_query(stale)
    assert fake.calls_of("answerCallbackQuery")[-1].at == pytest.approx(1015.1)


async def test_tap_rules(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y"), ("No", "n")))
    with pytest.raises(LookupError, match="Maybe"):
        fake.tap(PRIVATE, sent.message_id, ALICE, button_text="Maybe")
    forged = fake.tap(PRIVATE, sent.message_id, ALICE, data="approve:999")
    await bot.edit_message_text("done", PRIVATE, sent.message_id)
    with pytest.raises(LookupError):  # the keyboard is gone
        fake.tap(PRIVATE, sent.message_id, ALICE, button_text="Yes")
    gone = fake.tap(PRIVATE, 77, BOB, data="approve:1")  # message never existed
    updates = await bot.get_updates(timeout=0)
    by_id = {u.callback_query.id: u.callback_query for u in updates}
    assert by_id[forged].data == "approve:999"
    assert by_id[gone].message.date == dt.datetime.fromtimestamp(0, dt.UTC)
    assert not by_id[gone].message.is_accessible


# ---------------------------------------------------------------- getUpdates


async def test_long_poll_returns_when_tap_arrives(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=30, allowed_updates=["callback_query"]))
    await fake.wait_polling()
    assert not poll.done()
    query_id = fake.tap(PRIVATE, sent.message_id, ALICE, button_text="Yes")
    updates = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started < 2
    assert [u.callback_query.id for u in updates] == [query_id]
    # not confirmed yet: delivered again
    again = await bot.get_updates(timeout=0)
    assert [u.update_id for u in again] == [updates[0].update_id]
    # the offset confirms
    assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=0) == ()
    assert fake.pending_updates == []
    call = fake.calls_of("getUpdates")[0]
    assert call.params["allowed_updates"] == ["callback_query"]
    assert fake.calls_of("getUpdates")[-1].params["offset"] == updates[0].update_id + 1


async def test_long_poll_times_out_empty(fake, client):
    r = await api(client, fake, "getUpdates", timeout=0.05)  # real time, tiny
    assert r.json() == {"ok": True, "result": []}


async def test_allowed_updates_filters_types(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    assert await bot.get_updates(timeout=0, allowed_updates=["callback_query"]) == ()
    assert fake.allowed_updates == ["callback_query"]
    fake.send_text(PRIVATE, ALICE, "hello")
    query_id = fake.tap(PRIVATE, sent.message_id, ALICE, data="y")
    updates = await bot.get_updates(timeout=0)  # the setting is kept
    assert [u.callback_query.id for u in updates] == [query_id]
    assert [u.get("message", {}).get("text") for u in fake.dropped_updates] == ["hello"]
    await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0,
                          allowed_updates=["message", "callback_query"])
    fake.send_text(PRIVATE, ALICE, "again")
    updates = await bot.get_updates(timeout=0)
    assert updates[0].message.text == "again"


async def test_updates_wait_while_nobody_polls(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    first = fake.tap(PRIVATE, sent.message_id, ALICE, data="y")
    second = fake.tap(PRIVATE, sent.message_id, BOB, data="y")
    updates = await bot.get_updates(timeout=0, limit=1)
    assert [u.callback_query.id for u in updates] == [first]
    updates = await bot.get_updates(offset=updates[0].update_id + 1, timeout=0)
    assert [u.callback_query.id for u in updates] == [second]


async def test_bot_command_entity(fake, bot):
    update_id = fake.send_text(PRIVATE, ALICE, "/start@tapgate_bot now")
    update = (await bot.get_updates(timeout=0))[0]
    assert update.update_id == update_id
    assert update.message.text == "/start@tapgate_bot now"
    assert update.message.entities[0].type == "bot_command"
    assert update.message.entities[0].offset == 0
    assert update.message.entities[0].length == len("/start@tapgate_bot")
    assert update.message.from_user.id == ALICE.id
    fake.send_text(GROUP, BOB, "no command", chat_type="group")
    update = (await bot.get_updates(offset=update_id + 1, timeout=0))[0]
    assert update.message.entities == ()
    assert update.message.chat.type == "group"
    assert fake.messages(GROUP) == []
    assert [m.text for m in fake.messages(GROUP, include_users=True)] == ["no command"]


async def test_second_poller_conflicts_the_first(fake, client, bot):
    held = asyncio.create_task(api(client, fake, "getUpdates", timeout=30))
    await fake.wait_polling()
    assert await bot.get_updates(timeout=0) == ()
    r = await asyncio.wait_for(held, 5)
    assert r.status_code == 409
    assert r.json()["description"].startswith("Conflict: terminated by other getUpdates")
    held = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_polling()
    await api(client, fake, "getUpdates", timeout=0)
    with pytest.raises(Conflict):
        await asyncio.wait_for(held, 5)


async def test_webhook_blocks_polling_and_drop_pending(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    fake.tap(PRIVATE, sent.message_id, ALICE, data="y")
    await bot.set_webhook("https://example.com/hook")
    with pytest.raises(Conflict, match="(?i)webhook is active"):
        await bot.get_updates(timeout=0)
    await bot.delete_webhook()
    assert len(await bot.get_updates(timeout=0)) == 1
    await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.get_updates(timeout=0) == ()


async def test_stop_releases_held_poll(make_fake, client):
    fake = await make_fake()
    held = asyncio.create_task(api(client, fake, "getUpdates", timeout=60))
    await fake.wait_polling()
    started = time.monotonic()
    await fake.stop()
    r = await asyncio.wait_for(held, 5)
    assert r.json() == {"ok": True, "result": []}
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- fault injection


async def test_fail_next_retry_after(fake, bot, client, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    fake.fail_next("sendMessage", retry_after=7)
    with pytest.raises(RetryAfter) as exc_info:
        await bot.send_message(PRIVATE, "x")
    assert exc_info.value.retry_after == dt.timedelta(seconds=7)
    assert fake.messages(PRIVATE) == []
    await bot.send_message(PRIVATE, "x")
    assert [c.ok for c in fake.calls_of("sendMessage")] == [False, True]
    fake.fail_next("sendMessage", 2, retry_after=3)
    for _ in range(2):
        r = await api(client, fake, "sendMessage", chat_id=PRIVATE, text="y")
        assert r.status_code == 429
        assert r.json() == {"ok": False, "error_code": 429,
                            "description": "Too Many Requests: retry after 3",
                            "parameters": {"retry_after": 3}}
    assert (await api(client, fake, "sendMessage", chat_id=PRIVATE, text="y")).status_code == 200


async def test_fail_next_error(fake, bot):
    sent = await bot.send_message(PRIVATE, "x")
    fake.fail_next("editMessageText", error="Bad Request: message can't be edited")
    with pytest.raises(BadRequest, match="(?i)Message can't be edited"):
        await bot.edit_message_text("y", PRIVATE, sent.message_id)
    fake.fail_next("getMe", error="Internal Server Error", status=500)
    with pytest.raises(NetworkError) as exc_info:
        await bot.get_me()
    assert not isinstance(exc_info.value, BadRequest)


async def test_outage_gives_502_html(fake, bot, client):
    fake.set_down(True)
    r = await api(client, fake, "getMe")
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    with pytest.raises(NetworkError) as exc_info:
        await bot.send_message(PRIVATE, "x")
    assert not isinstance(exc_info.value, BadRequest)
    assert "Bad Gateway" in exc_info.value.message
    assert fake.calls[-1].method == "sendMessage"
    assert fake.calls[-1].status == 502
    fake.set_down(False)
    await bot.send_message(PRIVATE, "x")


async def test_outage_cuts_held_poll(fake, client):
    held = asyncio.create_task(api(client, fake, "getUpdates", timeout=60))
    await fake.wait_polling()
    fake.set_down(True)
    r = await asyncio.wait_for(held, 5)
    assert r.status_code == 502
    assert "502 Bad Gateway" in r.text


async def test_chat_errors(fake, bot):
    fake.set_chat_unavailable(GROUP)
    with pytest.raises(Forbidden, match="(?i)bot was kicked"):
        await bot.send_message(GROUP, "x")
    fake.set_chat_unavailable(GROUP, None)
    await bot.send_message(GROUP, "x")
    fake.migrate_chat(GROUP, SUPERGROUP)
    with pytest.raises(ChatMigrated) as exc_info:
        await bot.send_message(GROUP, "x")
    assert exc_info.value.new_chat_id == SUPERGROUP


async def test_group_pacing(make_fake, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    clock = FakeClock()
    fake = await make_fake(group_limit_per_minute=2, group_window_seconds=2.0, clock=clock)
    async with ptb_bot(fake) as b:
        first = await b.send_message(GROUP, "1")
        clock.advance(0.5)
        await b.edit_message_text("1 edited", GROUP, first.message_id)
        with pytest.raises(RetryAfter) as exc_info:
            await b.send_message(GROUP, "3")
        assert exc_info.value.retry_after == dt.timedelta(seconds=2)
        for _ in range(5):  # private chats are not paced
            await b.send_message(PRIVATE, "p")
        clock.advance(1.0)
        with pytest.raises(RetryAfter) as exc_info:
            await b.send_message(GROUP, "3")
        assert exc_info.value.retry_after == dt.timedelta(seconds=1)
        clock.advance(0.6)
        await b.send_message(GROUP, "3")
    assert [m.text for m in fake.messages(GROUP)] == ["1 edited", "3"]
    failed = fake.calls_of("sendMessage")[1]
    assert failed.response["parameters"] == {"retry_after": 2}


# ---------------------------------------------------------------- photos, commands, waits


async def test_send_photo_multipart(fake, bot):
    png = make_png(40, 30)
    sent = await bot.send_photo(PRIVATE, png, caption="<b>Spend</b> today",
                                parse_mode=ParseMode.HTML, reply_markup=keyboard(("More", "m")))
    stored = fake.message(PRIVATE, sent.message_id)
    assert stored.photo == png
    assert stored.caption == "Spend today"
    assert stored.caption_entities == [{"type": "bold", "offset": 0, "length": 5}]
    assert stored.text is None
    assert stored.button_texts == ["More"]
    assert fake.calls_of("sendPhoto")[0].files["photo"] == png
    assert (sent.photo[-1].width, sent.photo[-1].height) == (40, 30)
    tg_file = await bot.get_file(sent.photo[-1].file_id)
    assert bytes(await tg_file.download_as_bytearray()) == png
    again = await bot.send_photo(PRIVATE, sent.photo[-1].file_id)  # re-send by file_id
    assert fake.message(PRIVATE, again.message_id).photo == png
    with pytest.raises(BadRequest, match="(?i)IMAGE_PROCESS_FAILED"):
        await bot.send_photo(PRIVATE, b"not an image at all")
    with pytest.raises(BadRequest, match="(?i)caption is too long"):
        await bot.send_photo(PRIVATE, png, caption="c" * 1025)


async def test_commands_round_trip(fake, bot):
    from telegram import BotCommand

    await bot.set_my_commands([BotCommand("pending", "Show pending approvals")])
    assert [c.command for c in await bot.get_my_commands()] == ["pending"]
    with pytest.raises(BadRequest, match="(?i)BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand("Pending", "uppercase is invalid")])


async def test_wait_for_past_future_and_timeout(fake, bot):
    await bot.send_message(PRIVATE, "first")
    past = await fake.wait_for("sendMessage")
    assert past.params["text"] == "first"
    future = asyncio.create_task(
        fake.wait_for("sendMessage", lambda c: c.params["text"] == "second", timeout=5)
    )
    await asyncio.sleep(0)
    assert not future.done()
    await bot.send_message(PRIVATE, "second")
    assert (await future).response["result"]["text"] == "second"
    fake.fail_next("sendMessage", error="Bad Request: chat not found")
    with pytest.raises(BadRequest):
        await bot.send_message(PRIVATE, "third")
    failed = await fake.wait_for("sendMessage", lambda c: c.params["text"] == "third",
                                 include_failed=True)
    assert failed.description == "Bad Request: chat not found"
    assert (await fake.wait_for_error("sendMessage")) is failed
    with pytest.raises(WaitTimeout) as exc_info:
        await fake.wait_for("sendMessage", lambda c: c.params["text"] == "third", timeout=0.05)
    assert isinstance(exc_info.value, AssertionError)
    assert isinstance(exc_info.value, TimeoutError)
    assert "sendMessage" in str(exc_info.value)
    assert "chat not found" in str(exc_info.value)


async def test_wait_until_state(fake, bot):
    sent = await bot.send_message(PRIVATE, "Q", reply_markup=keyboard(("Yes", "y")))
    waiting = asyncio.create_task(
        fake.wait_until(lambda: fake.message(PRIVATE, sent.message_id).reply_markup is None,
                        timeout=5, what="keyboard removed")
    )
    await asyncio.sleep(0)
    assert not waiting.done()
    await bot.edit_message_reply_markup(PRIVATE, sent.message_id, reply_markup=None)
    assert await waiting is True


async def test_ptb_application_round_trip(fake):
    from telegram.ext import Application, CallbackQueryHandler

    async def on_tap(update, context):
        query = update.callback_query
        await query.answer("Approved")
        await query.edit_message_text(f"Approved by @{query.from_user.username}")

    app = (Application.builder().token(fake.token).base_url(f"{fake.url}/bot")
           .base_file_url(f"{fake.url}/file/bot").build())
    app.add_handler(CallbackQueryHandler(on_tap))
    async with app:
        await app.start()
        await app.updater.start_polling(allowed_updates=["message", "callback_query"])
        sent = await app.bot.send_message(GROUP, "Approve?", reply_markup=keyboard(("Yes", "y")))
        query_id = fake.tap(GROUP, sent.message_id, ALICE, button_text="Yes")
        await fake.wait_for("editMessageText", timeout=5)
        await app.updater.stop()
        await app.stop()
    assert fake.answered_queries[query_id]["text"] == "Approved"
    stored = fake.message(GROUP, sent.message_id)
    assert stored.text == "Approved by @alice"
    assert stored.reply_markup is None
    assert fake.pending_updates == []  # PTB confirmed the update when it stopped


# ---------------------------------------------------------------- forum topics


async def test_forum_topics_in_a_supergroup_and_a_private_chat(fake, bot):
    with pytest.raises(BadRequest, match="The chat is not a forum"):
        await bot.create_forum_topic(SUPERGROUP, "deploys")
    with pytest.raises(ValueError, match="basic group"):
        fake.enable_topics(GROUP)
    for chat in (SUPERGROUP, PRIVATE):
        fake.enable_topics(chat)
        topic = await bot.create_forum_topic(chat, "🤖 " + "x" * 200, icon_color=0xFFD67E)
        assert (len(topic.name), topic.icon_color) == (128, 0xFFD67E)  # cut like TDLib does
        assert topic.message_thread_id != 1  # the General topic's id
        sent = await bot.send_message(chat, "in the topic", message_thread_id=topic.message_thread_id)
        assert (sent.message_thread_id, sent.is_topic_message) == (topic.message_thread_id, True)
        assert fake.message(chat, sent.message_id).message_thread_id == topic.message_thread_id
        assert sent.chat.is_forum is (True if chat == SUPERGROUP else None)
        reply = await bot.send_message(chat, "a reply", reply_to_message_id=sent.message_id)
        assert reply.message_thread_id == topic.message_thread_id  # a reply stays in its topic
        main = await bot.send_message(chat, "main thread")
        assert (main.message_thread_id, main.is_topic_message) == (None, None)
        assert [t.name for t in fake.topics(chat)] == [topic.name]
    with pytest.raises(BadRequest, match="Title must be non-empty"):
        await bot.create_forum_topic(SUPERGROUP, "   ")
    # A group without topics ignores a thread id, as telegram-bot-api does.
    plain = await bot.send_message(GROUP, "x", message_thread_id=7)
    assert plain.message_thread_id is None


async def test_a_deleted_topic_takes_its_messages_with_it(fake, bot):
    fake.enable_topics(SUPERGROUP)
    topic = await bot.create_forum_topic(SUPERGROUP, "run 42")
    thread = topic.message_thread_id
    sent = await bot.send_message(SUPERGROUP, "approve?", message_thread_id=thread)
    photo = await bot.send_photo(SUPERGROUP, make_png(), message_thread_id=thread)
    assert photo.message_thread_id == thread
    fake.delete_topic(SUPERGROUP, thread)
    assert fake.topics(SUPERGROUP) == [] and fake.messages(SUPERGROUP) == []
    for send in (lambda: bot.send_message(SUPERGROUP, "again", message_thread_id=thread),
                 lambda: bot.send_photo(SUPERGROUP, make_png(), message_thread_id=thread),
                 lambda: bot.send_message(SUPERGROUP, "general", message_thread_id=1)):
        with pytest.raises(BadRequest, match="Message thread not found"):
            await send()
    with pytest.raises(BadRequest, match="Message to edit not found"):
        await bot.edit_message_text("edited", SUPERGROUP, sent.message_id)
    assert fake.calls_of("sendMessage")[-1].description == "Bad Request: message thread not found"
    with pytest.raises(LookupError):
        fake.delete_topic(SUPERGROUP, thread)


async def test_creating_topics_is_paced_like_sending(make_fake, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    fake = await make_fake(group_limit_per_minute=2, clock=FakeClock())
    fake.enable_topics(SUPERGROUP)
    async with ptb_bot(fake) as b:
        topic = await b.create_forum_topic(SUPERGROUP, "a")
        await b.send_message(SUPERGROUP, "1", message_thread_id=topic.message_thread_id)
        with pytest.raises(RetryAfter):
            await b.create_forum_topic(SUPERGROUP, "b")
    assert [t.name for t in fake.topics(SUPERGROUP)] == ["a"]
