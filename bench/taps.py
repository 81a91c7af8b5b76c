"""Tap-to-agent latency: the real Application against the fake Bot API server.

For each of N requests: submit (timed until the fake records its sendMessage),
then an agent waits on it while a tap arrives at the fake server; timed from
the tap to the agent's ``wait`` returning. Baseline in the same run: the
fake's own HTTP round trip (getMe).

By default the fake runs in a process of its own, as Telegram does (its CPU
is not the bot's); ``--in-process`` puts it in the bot's event loop, which
charges the fake's own request handling to every measurement. Times are
``time.monotonic()``, one clock for both processes on Linux.

    python -P bench/taps.py [--taps 300] [--in-process] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
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


class LocalFake:
    """The fake in this event loop."""

    def __init__(self):
        self.fake = FakeTelegram(callback_query_ttl=3600)

    async def start(self) -> str:
        await self.fake.start()
        return self.fake.url

    async def posted(self, approval_id: str) -> tuple[int, float]:
        call = await self.fake.wait_for("sendMessage",
                                        lambda c: approval_id in c.params["text"])
        return call.response["result"]["message_id"], call.at

    async def tap(self, message_id: int) -> float:
        at = time.monotonic()
        self.fake.tap(ALICE.id, message_id, ALICE, button_text="✅ Approve")
        return at

    async def stop(self) -> None:
        await self.fake.stop()


def _fake_process(conn) -> None:
    """Serve the fake in its own process, driven over a pipe."""

    async def main() -> None:
        async with FakeTelegram(callback_query_ttl=3600) as fake:
            conn.send(fake.url)
            loop = asyncio.get_running_loop()
            while True:
                command, arg = await loop.run_in_executor(None, conn.recv)
                if command == "posted":
                    call = await fake.wait_for("sendMessage",
                                               lambda c, a=arg: a in c.params["text"])
                    conn.send((call.response["result"]["message_id"], call.at))
                elif command == "tap":
                    at = time.monotonic()
                    fake.tap(ALICE.id, arg, ALICE, button_text="✅ Approve")
                    conn.send(at)
                else:
                    conn.send(None)
                    return

    asyncio.run(main())


class RemoteFake:
    """The fake in a child process (like Telegram: its CPU is not ours)."""

    async def start(self) -> str:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_process, args=(child,), daemon=True)
        self.proc.start()
        return await self._call(None)

    async def _call(self, message) -> object:
        loop = asyncio.get_running_loop()
        if message is not None:
            self.conn.send(message)
        return await loop.run_in_executor(None, self.conn.recv)

    async def posted(self, approval_id: str) -> tuple[int, float]:
        return await self._call(("posted", approval_id))

    async def tap(self, message_id: int) -> float:
        self.conn.send(("tap", message_id))  # the child stamps the time of the tap
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    async def stop(self) -> None:
        await self._call(("stop", None))
        self.proc.join(5)


async def bench(taps: int, db_url: str, in_process: bool) -> dict[str, list[float]]:
    fake = LocalFake() if in_process else RemoteFake()
    url = await fake.start()
    settings = Settings(_env_file=None, telegram_token="123456:TEST-TOKEN",
                        telegram_api_url=url, approver_chat_ids=[ALICE.id],
                        approver_user_ids=[ALICE.id], database_url=db_url)
    service = Service(settings, with_socket=False)
    await service.start()
    submit_ms, tap_ms, rtt_ms = [], [], []
    async with httpx.AsyncClient() as client:
        for _ in range(50):
            t0 = time.monotonic()
            await client.post(f"{url}/bot123456:TEST-TOKEN/getMe")
            rtt_ms.append((time.monotonic() - t0) * 1000)
    try:
        for i in range(taps):
            t0 = time.monotonic()
            approval, _ = await service.manager.submit(agent="bench", kind="shell",
                                                       summary=f"bench {i}")
            message_id, sent_at = await fake.posted(approval.id)
            submit_ms.append((sent_at - t0) * 1000)
            waiter = asyncio.create_task(service.manager.wait(approval.id, 30))
            await asyncio.sleep(0.002)  # the agent is waiting before the human taps
            tapped_at = await fake.tap(message_id) if in_process else None
            if not in_process:
                tap_task = asyncio.create_task(fake.tap(message_id))
            decided = await waiter
            done_at = time.monotonic()
            if not in_process:
                tapped_at = await tap_task
            tap_ms.append((done_at - tapped_at) * 1000)
            assert decided.status == "approved"
            # Measure latency, not Telegram's 30 messages/s pacing: each round starts
            # with the previous edits done, under the rate limiter's budget.
            while not service.notifier.idle:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.07)
    finally:
        await service.stop()
        await fake.stop()
    return {"submit→posted": submit_ms, "tap→agent": tap_ms, "fake round trip": rtt_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--taps", type=int, default=300)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--postgres", help="also run on this PostgreSQL database URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        store = Store.from_url(url)
        store.migrate()
        store.close()
        targets = [("sqlite", url)] + ([("postgresql", args.postgres)] if args.postgres else [])
        where = "in the bot's process" if args.in_process else "in its own process"
        print(f"fake Telegram {where}; {args.taps} taps")
        print(f"{'backend':<11} {'measure':<16} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8}")
        for name, target in targets:
            results = asyncio.run(bench(args.taps, target, args.in_process))
            for measure, values in results.items():
                print(f"{name:<11} {measure:<16} {len(values):>5} "
                      f"{statistics.median(values):>8.2f} {pct(values, 99):>8.2f} "
                      f"{max(values):>8.2f}")


if __name__ == "__main__":
    main()
