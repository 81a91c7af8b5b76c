"""Absurd or out-of-range dates are a clear error on every path, never a 500 or a traceback.

Accepted instants are 1970-01-01 .. 9998-12-31 UTC (bot.window.bounded), one bound for
``/spend`` in Telegram, ``GET /v1/spend`` and ``tapgate spend``: the storage's day
arithmetic (the day before, the day after) must never overflow.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta

import pytest

from bot.window import parse_instant
from storage.errors import InvalidArgument
from tests.botproc import ROOT, BotProcess
from tests.test_strangers import socket_api
from tests.test_telegram import ALICE, CHAT_A

ABSURD = ["9999-12-31T12:00:00Z", "1000000d", "0001-01-01T00:00:00+01:00", "99999999999h",
          "1969-12-31T23:59:59Z", "0001-01-01", "9" * 5000 + "d"]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ABSURD)
def test_parse_instant_refuses_with_a_short_message(text):
    with pytest.raises(InvalidArgument) as info:
        parse_instant(text, NOW)
    message = str(info.value)
    assert "1970-01-01" in message and "9998-12-31" in message
    assert len(message) < 200


def test_the_bounds_themselves_are_accepted():
    from bot.window import bounded

    assert parse_instant("1970-01-01", NOW) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_instant("9998-12-31T23:59:59.999999Z", NOW).year == 9998
    assert parse_instant("20000d", NOW) == NOW - timedelta(days=20000)
    assert bounded(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)  # naive is UTC
    with pytest.raises(InvalidArgument):
        bounded(datetime(9999, 1, 1, tzinfo=UTC))


async def test_api_and_telegram_answer_absurd_dates_plainly(fake, sqlite_url):
    async with BotProcess(fake, sqlite_url) as bot, socket_api(bot) as api:
        for value in ABSURD[:5]:
            for field in ("since", "until"):
                response = await api.get("/v1/spend", params={"by": "day", field: value})
                assert response.status_code == 422, (field, value, response.text)
                error = response.json()["error"]
                assert error["message"].startswith(f"invalid query.{field}"), error
        ok = await api.get("/v1/spend", params={"since": "1970-01-01",
                                                "until": "9998-12-31T23:59:59Z"})
        assert ok.status_code == 200, ok.text
        for value in ABSURD:
            before = len(fake.calls)
            fake.send_text(CHAT_A, ALICE, f"/spend day {value}")
            call = await fake.wait_for("sendMessage", lambda c, after=before:
                                       fake.calls.index(c) >= after
                                       and int(c.params["chat_id"]) == CHAT_A)
            text = call.params["text"]
            assert text.startswith("⚠️ time") or text.startswith("⚠️ invalid time"), text
            assert "9998-12-31" in text and len(text) < 600
        before = len(fake.calls)
        fake.send_text(CHAT_A, ALICE, "/spend day 2026-01-01 9999-12-31T12:00:00Z")
        call = await fake.wait_for("sendMessage", lambda c: fake.calls.index(c) >= before)
        assert "out of range" in call.params["text"]
        assert "Traceback" not in bot.log()


async def run_cli(db_url: str, cwd, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env["TAPGATE_DATABASE_URL"] = db_url
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("option", ["--since", "--until"])
async def test_cli_says_one_line_and_exits_2(sqlite_url, tmp_path, option):
    for value in ABSURD[:5]:
        code, out, err = await run_cli(sqlite_url, tmp_path, "spend", "--by", "day",
                                       option, value)
        assert (code, out) == (2, ""), (value, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "1970-01-01" in err and "9998-12-31" in err
    code, out, err = await run_cli(sqlite_url, tmp_path, "spend", "--by", "day", option,
                                   "2026-01-01")
    assert code == 0, err
