"""Several instances on one PostgreSQL database, measured with real ``tapgate run`` processes.

Run with ``python bench/cluster.py [--taps 50] [--seconds 5] [--kills 10]``; it needs
the PostgreSQL server of ``TAPGATE_TEST_POSTGRES_URL`` (default the local trust-auth
one) and creates (and drops) a fresh database per phase. Printed, in one run:

- tap → agent: from the tap (the fake queues the callback) to the agent's long poll
  answering ``approved``, with one instance (the agent waits on the leader) and with
  three (the agent waits on a follower: the leader decides, NOTIFY wakes the follower).
  Goal: follower p50 ≤ 2× the single instance's.
- submissions/s: ``POST /v1/approvals`` for ``--seconds`` with 8 clients per instance,
  on one instance vs spread over three (same database, same machine).
- failover: SIGKILL of the leader → the next ``getUpdates`` at the fake, over ``--kills``
  kills (a replacement boots after each kill, so followers are always waiting).
"""

from __future__ import annotations

import os
import sys

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("PTB_TIMEDELTA", "1")

from tests.clusterproc import (  # noqa: E402
    Cluster,
    Node,
    drop_database,
    first_after,
    fresh_database,
    track_polls,
)
from tests.conftest import PG_URL  # noqa: E402
from tests.fake_telegram import FakeTelegram, User  # noqa: E402

ALICE = User(1001, "alice", "Alice")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def posted(fake: FakeTelegram, approval_id: str) -> int:
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == ALICE.id
                               and approval_id in c.params["text"], timeout=30)
    return call.response["result"]["message_id"]


async def tap_latencies(fake: FakeTelegram, submit_on: Node, wait_on: Node, n: int
                        ) -> list[float]:
    """Seconds from a tap to the agent's wait (on ``wait_on``) answering, ``n`` times."""
    out = []
    async with submit_on.http() as sub, wait_on.http() as wait:
        for i in range(n):
            approval = (await sub.post("/v1/approvals", json={
                "agent": "bench", "kind": "shell", "summary": f"tap {i}"})).json()
            message_id = await posted(fake, approval["id"])
            waiter = asyncio.create_task(wait.get(f"/v1/approvals/{approval['id']}",
                                                  params={"wait": 30}))
            await asyncio.sleep(0.05)  # the long poll is held
            tapped = time.monotonic()
            fake.tap(ALICE.id, message_id, ALICE, button_text="✅ Approve")
            answer = await waiter
            out.append(time.monotonic() - tapped)
            assert answer.json()["status"] == "approved", answer.text
    return out


async def submissions(nodes: list[Node], seconds: float, per_node: int = 8) -> float:
    """Accepted submissions per second, ``per_node`` clients on each of ``nodes``."""
    count = 0
    stop_at = time.monotonic() + seconds

    async def client(node: Node, k: int) -> None:
        nonlocal count
        async with node.http() as http:
            i = 0
            while time.monotonic() < stop_at:
                answer = await http.post("/v1/approvals", json={
                    "agent": "bench", "kind": "shell", "summary": f"load {node.n}.{k}.{i}"})
                i += 1
                if answer.status_code == 201:
                    count += 1

    started = time.monotonic()
    await asyncio.gather(*(client(x, k) for x in nodes for k in range(per_node)))
    return count / (time.monotonic() - started)


async def phase(n: int, taps: int, seconds: float) -> tuple[list[float], float]:
    url = fresh_database(PG_URL)
    try:
        async with FakeTelegram(callback_query_ttl=3600) as fake:
            group = Cluster(fake, url)
            try:
                await group.start(n, at_once=True)
                leader = await group.leader()
                follower = next((x for x in group.alive if x is not leader), leader)
                lat = await tap_latencies(fake, follower, follower, taps)
                rate = await submissions(group.alive, seconds)
            finally:
                await group.stop()
    finally:
        drop_database(PG_URL, url)
    return lat, rate


async def failovers(kills: int) -> list[float]:
    url = fresh_database(PG_URL)
    try:
        async with FakeTelegram() as fake:
            group = Cluster(fake, url)
            polls = track_polls(fake)
            try:
                await group.start(3, at_once=True)
                times = []
                for _ in range(kills):
                    leader = await group.leader()
                    booting = asyncio.create_task(group.node().start(wait_polling=False))
                    killed = time.monotonic()
                    leader.signal(signal.SIGKILL)
                    times.append(await first_after(polls, killed, 10))
                    await leader.proc.wait()
                    await booting
                return times
            finally:
                await group.stop()
    finally:
        drop_database(PG_URL, url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taps", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()

    single, single_rate = await phase(1, args.taps, args.seconds)
    spread, spread_rate = await phase(3, args.taps, args.seconds)
    print(f"{'tap -> agent':<34} {'n':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in (("1 instance (agent on the leader)", single),
                         ("3 instances (agent on a follower)", spread)):
        print(f"{name:<34} {len(values):>4} {pct(values, 50) * 1000:>8.1f} "
              f"{pct(values, 99) * 1000:>8.1f}")
    print(f"ratio p50 follower / single: {pct(spread, 50) / pct(single, 50):.2f}")
    print(f"submissions/s: 1 instance {single_rate:.0f}, 3 instances {spread_rate:.0f} "
          f"(x{spread_rate / single_rate:.2f})")
    if args.kills:
        times = sorted(await failovers(args.kills))
        print(f"failover over {len(times)} kills (ms): "
              + ", ".join(f"{t * 1000:.0f}" for t in times)
              + f"; p50 {statistics.median(times) * 1000:.0f}, max {times[-1] * 1000:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
