"""Tap-to-agent latency: the real Application against the fake Bot API server.

For each of N requests: submit (timed until the fake records its sendMessage),
then an agent waits on it while a tap arrives at the fake server; timed from
the tap to the agent's ``wait`` returning. Baseline in the same run: the
fake's own HTTP round trip (getMe through httpx).

    python bench/taps.py [--taps 250] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "1")

import httpx  # noqa: E402

from bot.config import Settings  # noqa: E402
from bot.service import Service  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.fake_telegram import FakeTelegram, User  # noqa: E402

ALICE = User(1001, "alice", "Alice")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench(taps: int, db_url: str) -> dict[str, list[float]]:
    async with FakeTelegram(callback_query_ttl=3600) as fake:
        settings = Settings(_env_file=None, telegram_token=fake.token,
                            telegram_api_url=fake.url, approver_chat_ids=[ALICE.id],
                            approver_user_ids=[ALICE.id], database_url=db_url)
        service = Service(settings, with_socket=False)
        await service.start()
        await fake.wait_polling()
        submit_ms, tap_ms, rtt_ms = [], [], []
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                t0 = time.perf_counter()
                await client.post(f"{fake.url}/bot{fake.token}/getMe")
                rtt_ms.append((time.perf_counter() - t0) * 1000)
        try:
            for i in range(taps):
                t0 = time.perf_counter()
                approval, _ = await service.manager.submit(agent="bench", kind="shell",
                                                           summary=f"bench {i}")
                call = await fake.wait_for(
                    "sendMessage", lambda c, a=approval: a.id in c.params["text"])
                submit_ms.append((time.perf_counter() - t0) * 1000)
                message_id = call.response["result"]["message_id"]
                waiter = asyncio.create_task(service.manager.wait(approval.id, 30))
                await asyncio.sleep(0)  # the agent is waiting before the human taps
                t0 = time.perf_counter()
                fake.tap(ALICE.id, message_id, ALICE, button_text="✅ Approve")
                decided = await waiter
                tap_ms.append((time.perf_counter() - t0) * 1000)
                assert decided.status == "approved"
                # Measure latency, not Telegram's 30 messages/s pacing: start each
                # round with the message edits of the previous one done.
                await fake.wait_until(lambda: service.notifier.idle, timeout=60)
                # Two chat messages a round: stay under Telegram's 30 a second, which the
                # rate limiter enforces, so the next submit meets an idle bot.
                await asyncio.sleep(0.07)
            # Let the edits finish so the next run starts clean.
            await fake.wait_until(lambda: service.notifier.idle, timeout=60)
        finally:
            await service.stop()
    return {"submit→posted": submit_ms, "tap→agent": tap_ms, "fake round trip": rtt_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--taps", type=int, default=250)
    parser.add_argument("--postgres", help="also run on this PostgreSQL database URL")
    args = parser.parse_args()
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        store = Store.from_url(url)
        store.migrate()
        store.close()
        targets.append(("sqlite", url))
        if args.postgres:
            targets.append(("postgresql", args.postgres))
        print(f"{'backend':<11} {'measure':<16} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}")
        for name, url in targets:
            results = asyncio.run(bench(args.taps, url))
            for measure, values in results.items():
                print(f"{name:<11} {measure:<16} {len(values):>5} "
                      f"{statistics.median(values):>8.2f} {pct(values, 99):>8.2f} "
                      f"{max(values):>8.2f}")


if __name__ == "__main__":
    main()
