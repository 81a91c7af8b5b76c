"""A burst of requests to one group: digests against one message each.

The real bot (in-process ``Service``, PTB's rate limiter included) against the fake
Bot API server holding every group to 20 messages a minute, as Telegram does. 20
agents submit N requests (default 200) at once, all routed to one group chat.

With digests (``TAPGATE_DIGEST_THRESHOLD`` 5, the default) it measures, from the
first submission:
- *listed*: every request is in a message in the chat (its digest is posted and
  recorded; the first page of each digest shows 20, ◀ ▶ the rest);
- *first pages*: the last digest message appears in the chat;
- *paged through*: a person taps ▶ through every digest until every request's id has
  been on screen (each page is an edit, paced like a message);
- the Telegram calls the bot made to the group.

Baseline, the same with digests off (threshold 0), watched for the same window: how
many requests had a message by then, and the extrapolated time for all N at Telegram's
20 messages a minute.

    python -P bench/burst.py [--requests 200] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "1")

import psycopg  # noqa: E402

from bot.config import Settings  # noqa: E402
from bot.service import Service  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.clusterproc import drop_database, fresh_database  # noqa: E402
from tests.fake_telegram import FakeTelegram, User  # noqa: E402

ALICE = User(1001, "alice", "Alice")
GROUP = -1001234500000
AGENTS = 20
PER_MINUTE = 20


def posted_copies(db_url: str) -> int:
    """Copies recorded as shown in a message (their own, or a digest's)."""
    sql = "SELECT count(*) FROM approval_message WHERE message_id IS NOT NULL"
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchone()[0]
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def fresh(target: str) -> str:
    """An empty, migrated database: a new SQLite file in the directory ``target``, or a
    new database on the PostgreSQL server ``target`` (dropped by :func:`drop`)."""
    if target.startswith("postgresql"):
        url = fresh_database(target)
    else:
        url = f"sqlite:///{tempfile.mkdtemp(dir=target)}/bench.db"
    store = Store.from_url(url)
    store.migrate()
    store.close()
    return url


def drop(target: str, url: str) -> None:
    if target.startswith("postgresql"):
        drop_database(target, url)


async def submit_burst(svc: Service, n: int) -> list[str]:
    ids: list[str] = []

    async def agent(k: int) -> None:
        for i in range(k, n, AGENTS):
            approval, _ = await svc.manager.submit(agent=f"agent-{k}", kind="shell",
                                                   summary=f"make target-{i}")
            ids.append(approval.id)

    await asyncio.gather(*(agent(k) for k in range(AGENTS)))
    return ids


def group_calls(fake: FakeTelegram, method: str) -> list:
    return [c for c in fake.calls if c.method == method and c.ok
            and int(c.params.get("chat_id", 0)) == GROUP]


async def run(target: str, n: int, threshold: int, window: float | None) -> dict:
    db_url = fresh(target)
    try:
        return await _run(db_url, n, threshold, window)
    finally:
        drop(target, db_url)


async def _run(db_url: str, n: int, threshold: int, window: float | None) -> dict:
    async with FakeTelegram(group_limit_per_minute=PER_MINUTE, callback_query_ttl=3600) as fake:
        settings = Settings(_env_file=None, telegram_token=fake.token, telegram_api_url=fake.url,
                            approver_chat_ids=[GROUP], approver_user_ids=[ALICE.id],
                            database_url=db_url, digest_threshold=threshold)
        svc = Service(settings, with_socket=False)
        await svc.start()
        await fake.wait_polling()
        result: dict = {}
        try:
            t0 = time.monotonic()
            ids = await submit_burst(svc, n)
            result["submitted"] = time.monotonic() - t0
            if window is not None:  # the baseline: watch for the window, count
                await asyncio.sleep(max(0.0, t0 + window - time.monotonic()))
                result["visible"] = await asyncio.to_thread(posted_copies, db_url)
                result["sends"] = len(group_calls(fake, "sendMessage"))
                result["429"] = len([c for c in fake.calls if c.status == 429])
                return result
            while await asyncio.to_thread(posted_copies, db_url) < n:
                await asyncio.sleep(0.01)
            result["listed"] = time.monotonic() - t0
            digests = [m for m in fake.messages(GROUP) if "requests at once" in (m.text or "")]
            sends = group_calls(fake, "sendMessage")
            result["first pages"] = sends[-1].at - t0
            result["digests"] = len(digests)
            result["singles"] = len(sends) - len(digests)
            seen = {i for m in fake.messages(GROUP) for i in ids if i in m.text}
            for digest in digests:  # a person pages through each digest
                while "▶" in fake.message(GROUP, digest.message_id).button_texts:
                    before = fake.message(GROUP, digest.message_id).text
                    fake.tap(GROUP, digest.message_id, ALICE, button_text="▶")
                    await fake.wait_until(
                        lambda d=digest, b=before: fake.message(GROUP, d.message_id).text != b,
                        timeout=120, what="the next page")
                    seen |= {i for i in ids if i in fake.message(GROUP, digest.message_id).text}
            assert seen == set(ids), f"{len(set(ids) - seen)} requests never shown"
            result["paged through"] = time.monotonic() - t0
            result["sends"] = len(sends)
            result["edits"] = len(group_calls(fake, "editMessageText"))
            result["429"] = len([c for c in fake.calls if c.status == 429])
            return result
        finally:
            await svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", help="also run on this PostgreSQL server (a fresh "
                        "database is made there and dropped), e.g. postgresql://postgres@"
                        "127.0.0.1:5432/postgres")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite", tmp)]
        if args.postgres:
            targets.append(("postgresql", args.postgres))
        print(f"{n} requests from {AGENTS} agents at once to one group "
              f"(fake Telegram: {PER_MINUTE} messages/min per group)")
        print(f"{'backend':<11} {'mode':<22} {'submit s':>9} {'listed s':>9} {'1st pages s':>12} "
              f"{'paged s':>8} {'messages':>9} {'edits':>6} {'429s':>5}")
        for name, url in targets:
            on = asyncio.run(run(url, n, 5, None))
            print(f"{name:<11} {'digests (threshold 5)':<22} {on['submitted']:>9.2f} "
                  f"{on['listed']:>9.2f} "
                  f"{on['first pages']:>12.2f} {on['paged through']:>8.2f} "
                  f"{on['sends']:>9} {on['edits']:>6} {on['429']:>5}"
                  f"   ({on['digests']} digests, {on['singles']} single)")
            window = max(on["paged through"], 10.0)
            off = asyncio.run(run(url, n, 0, window))
            rest = n - off["visible"]
            total = window + rest * 60 / PER_MINUTE
            print(f"{name:<11} {'one message each':<22} {off['submitted']:>9.2f} {'-':>9} "
                  f"{'-':>12} {'-':>8} "
                  f"{off['sends']:>9} {'-':>6} {off['429']:>5}"
                  f"   ({off['visible']}/{n} visible after {window:.1f} s; all {n} "
                  f"≈ {total:.0f} s = {total / 60:.1f} min at {PER_MINUTE}/min)")


if __name__ == "__main__":
    main()
