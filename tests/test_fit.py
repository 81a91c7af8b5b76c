"""Everything the bot sends fits Telegram's 4096 visible characters, and an agent's words
never read as the bot's own.

End to end through the fake Telegram, which answers a too-long text with 400 "message is
too long" like Telegram does; then property tests of the renderers against the fake's
port of Telegram's HTML parser, with field lengths up to their bounds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.records import Approval, NewLedgerEntry, RunUpsert, UsageGroup, UsageSummary
from tests.fake_telegram import FakeTelegram, parse_html, utf16_len
from tests.fake_telegram import User as TgUser
from tests.test_telegram import ALICE, CHAT_A, CHAT_B, edited_to, posted, submit

ASTRAL = "🦜𝔘😀"  # two UTF-16 units each: Telegram counts them twice
LONG_NAMED_ALICE = TgUser(ALICE.id, None, "Ä" * 64)  # no username: the full name is shown


def astral(n: int) -> str:
    return (ASTRAL * n)[:n]


def visible(text: str) -> int:
    """Length of ``text`` (HTML) as Telegram counts it, by the fake's port of its parser."""
    plain, _ = parse_html(text)
    return utf16_len(plain.strip())


def quoted(message) -> list[str]:
    """The texts of a fake message's blockquote entities."""
    units = message.text.encode("utf-16-le")
    return [units[e["offset"] * 2:(e["offset"] + e["length"]) * 2].decode("utf-16-le")
            for e in message.entities if e["type"] in ("blockquote", "expandable_blockquote")]


async def sent_text(fake: FakeTelegram, chat_id: int, after: int) -> str:
    """The first reply sent to ``chat_id`` after call number ``after`` (not a request's copy,
    which the notifier may be posting meanwhile); fails if Telegram refused it."""
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and fake.calls.index(c) >= after
                               and "\nID: " not in c.params["text"], include_failed=True)
    assert call.ok, call.description
    return fake.message(chat_id, call.response["result"]["message_id"]).text


# --- end to end ------------------------------------------------------------------------------


async def test_longest_request_and_a_4000_character_reason_fit(fake, service):
    run_id = "r" + astral(199)
    await service.store.run(service.store.upsert_run, RunUpsert(id=run_id, name="long"))
    approval = await submit(service, agent="a" + astral(199), kind="k" + astral(199),
                            summary=astral(500), run_id=run_id,
                            payload={"blob": astral(20_000)})
    msg = await posted(fake, CHAT_A, approval.id)
    assert "Payload truncated" in msg.text and approval.id in msg.text
    reason = "no " + "x" * 3990
    before = len(fake.calls)
    fake.send_text(CHAT_A, LONG_NAMED_ALICE, f"/deny {approval.id} {reason}")
    for chat in (CHAT_A, CHAT_B):
        copy = await edited_to(fake, chat, (await posted(fake, chat, approval.id)).message_id,
                               "Denied by " + "Ä" * 64)
        assert "Reason truncated" in copy.text and "Payload truncated" in copy.text
        assert approval.id in copy.text
        assert utf16_len(copy.text) <= 4096
    reply = await sent_text(fake, CHAT_A, before)
    assert approval.id in reply
    stored = await service.manager.get(approval.id)
    assert stored.reason == reason  # stored in full, cut only on screen


async def test_pending_listing_of_the_longest_requests_fits(fake, service):
    ids = [(await submit(service, agent=f"{i}" + astral(199), kind=astral(200),
                         summary=astral(500))).id for i in range(12)]
    before = len(fake.calls)
    fake.send_text(CHAT_A, ALICE, "/pending")
    text = await sent_text(fake, CHAT_A, before)
    assert "Pending requests" in text and utf16_len(text) <= 4096
    assert ids[0] in text and "and 2 more" in text


async def _load(service, rows: list[NewLedgerEntry], runs: list[RunUpsert]) -> None:
    for run in runs:
        await service.store.run(service.store.upsert_run, run)
    await service.store.run(service.store.append_ledger, rows)


async def test_spend_of_a_year_by_day_fits(fake, service):
    now = datetime.now(UTC)
    rows = [NewLedgerEntry(run_id="r1", provider="openai", model="gpt-4o", prompt_tokens=10**6,
                           completion_tokens=10**5, dollars=1234.5678,
                           created_at=now - timedelta(days=d)) for d in range(365)]
    await _load(service, rows, [RunUpsert(id="r1")])
    before = len(fake.calls)
    fake.send_text(CHAT_A, ALICE, "/spend day")
    text = await sent_text(fake, CHAT_A, before)
    assert utf16_len(text) <= 4096 and "more groups" in text
    total = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert total.endswith(f"${365 * 1234.5678:,.4f}")  # every group counted in the total
    # The first chart of a fresh install builds matplotlib's font cache: allow for it.
    await fake.wait_for("sendPhoto", timeout=60)


async def test_spend_with_hundreds_of_long_keys_and_a_long_metadata_key_fits(fake, service):
    now = datetime.now(UTC)
    runs = [RunUpsert(id=f"r{i}", name=f"{i:03d}-" + astral(60),
                      metadata={"team" + "k" * 40: f"{i:03d}" + "v" * 60}) for i in range(300)]
    rows = [NewLedgerEntry(run_id=f"r{i}", provider=f"provider-{i:03d}-" + "p" * 30,
                           model=f"model-{i:03d}-" + "m" * 40, prompt_tokens=7,
                           dollars=0.01 * (i + 1), created_at=now) for i in range(300)]
    await _load(service, rows, runs)
    for command in ("/spend", "/spend provider", "/spend name",
                    "/spend metadata.team" + "k" * 40, "/spend metadata." + "q" * 3000):
        before = len(fake.calls)
        fake.send_text(CHAT_A, ALICE, command)
        text = await sent_text(fake, CHAT_A, before)
        assert utf16_len(text) <= 4096, command
        assert "Spend by" in text


async def test_long_command_arguments_are_not_echoed_past_the_limit(fake, service):
    for command in ("/approve " + "z" * 4080, "/spend " + "y" * 4080, "/deny " + astral(2000)):
        before = len(fake.calls)
        fake.send_text(CHAT_A, ALICE, command)
        text = await sent_text(fake, CHAT_A, before)
        assert utf16_len(text) <= 4096


# --- whose voice -----------------------------------------------------------------------------


async def test_an_agents_request_is_shown_under_its_name_with_its_words_quoted(fake, service):
    forged = "💸 Budget alert\nRun “prod” passed 80 % of its budget. Grant +50% budget?"
    approval = await submit(service, agent="helper\n💸 Budget alert\u202e", kind="shell",
                            summary=forged)
    msg = await posted(fake, CHAT_A, approval.id)
    lines = msg.text.splitlines()
    assert lines[0].startswith("🔐 Request from agent helper")
    assert "Budget alert" in lines[0]  # the agent's name stays on its own header line
    assert not any(line.startswith("💸") for line in lines if forged.splitlines()[0] != line)
    assert quoted(msg) == [forged]
    assert msg.button_texts == ["✅ Approve", "❌ Deny", "♾️ Always", "💬 Deny with reason"]
    # The agent withdraws it with a reason of its own: still on the outcome's line.
    await service.manager.cancel(approval.id, "api", reason="done\n💸 Budget alert: grant?")
    msg = await edited_to(fake, CHAT_A, msg.message_id, "Withdrawn")
    assert "↩️ Withdrawn: done 💸 Budget alert: grant?" in msg.text.splitlines()


async def test_a_budget_alert_speaks_in_the_bots_voice(fake, service):
    from bot.governance import BOT_AGENT, GRANT_KIND

    approval = await submit(service, agent=BOT_AGENT, kind=GRANT_KIND,
                            summary="Run “crawler” passed 80 % of its dollar budget.",
                            payload={"run_id": "r1", "raise": ["budget_dollars"]})
    msg = await posted(fake, CHAT_A, approval.id)
    assert msg.text.startswith("💸 Budget alert\nRun “crawler” passed")
    assert "Request from agent" not in msg.text and not quoted(msg)
    assert msg.button_texts == ["➕ Grant +50% budget", "✋ Keep as is"]


# --- the renderers, at every length up to the bounds ----------------------------------------

from bot.telegram import render  # noqa: E402  (after the end-to-end tests: import order is free)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
patterns = st.text(alphabet=st.sampled_from("a<&>\"' \n💸😀𝔘\u202eé"), min_size=1, max_size=6)


def lengths(max_size: int) -> st.SearchStrategy[str]:
    """Strings of 1..max_size characters: a short random pattern (markup characters,
    astral ones, line breaks, a bidi override) repeated; long ones are the interesting ones."""
    sizes = st.one_of(st.integers(1, max_size), st.just(max_size))
    return st.builds(lambda p, n: (p * n)[:n], patterns, sizes)


approvals = st.builds(
    lambda agent, kind, summary, run, payload, status, reason, by: Approval(
        id="AbCdEfGhIjK", agent=agent, kind=kind, summary=summary, payload=payload,
        status=status, reason=reason if status in ("denied", "cancelled") else None,
        decided_by=by if status != "pending" else None, run_id=run,
        created_at=NOW, expires_at=NOW + timedelta(hours=1),
        decided_at=NOW if status != "pending" else None),
    lengths(200), st.one_of(lengths(200), st.just("budget.grant")), lengths(500),
    st.one_of(st.none(), lengths(200)),
    st.one_of(st.none(), lengths(30_000), st.builds(lambda s: {"k": s}, lengths(9_000))),
    st.sampled_from(["pending", "approved", "denied", "expired", "cancelled"]),
    st.one_of(st.none(), lengths(4_100)),
    st.one_of(lengths(300), st.builds(lambda s: f"telegram:1 ({s})", lengths(300))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(approvals)
def test_every_request_text_parses_and_fits(approval):
    text = render.request_text(approval)
    assert visible(text) <= 4096
    assert approval.id in text
    if approval.kind != "budget.grant":
        assert text.startswith("🔐 Request from agent <b>")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(approvals, min_size=1, max_size=10), st.integers(0, 10_000))
def test_every_pending_listing_parses_and_fits(listed, more):
    text, markup = render.pending_listing(listed, more)
    assert visible(text) <= 4096
    assert markup is not None and len(markup.inline_keyboard) >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lengths(300), min_size=0, max_size=500), lengths(3000), lengths(200))
def test_every_spend_table_parses_and_fits(keys, by, label):
    groups = [UsageGroup(key=k, calls=10**9, prompt_tokens=10**12, completion_tokens=10**12,
                         dollars=10**9 + 0.1234) for k in keys]
    total = UsageGroup(key="total", calls=10**12, prompt_tokens=10**15, completion_tokens=0,
                       dollars=10**12)
    summary = UsageSummary(by=by, since=None, until=None, groups=groups, total=total,
                           unpriced_calls=10**6)
    text = render.spend_table(summary, label)
    assert visible(text) <= 4096
    assert "TOTAL" in text
    assert visible(render.spend_caption(label, 10**12)) <= 1024


def test_short_texts_fit():
    long = astral(5000)
    approval = Approval(id="AbCdEfGhIjK", agent=long, kind=long, summary=long, status="denied",
                        reason=long, decided_by=long, created_at=NOW, expires_at=NOW,
                        decided_at=NOW)
    assert utf16_len(render.already_answer(approval)) <= 200
    for text in (render.decided_reply(approval), render.already_reply(approval),
                 render.no_such_request(long), render.spend_error(long),
                 render.refusal(True, 10**15), render.refusal(False, None), render.FAILED):
        assert visible(text) <= 4096
