"""Several ``tapgate run`` on one PostgreSQL database: one leader, fenced, replaced in seconds.

Real processes (tests/clusterproc.py) against the fake Telegram, each with its own
token alias so every call can be traced to its instance, on a fresh database per
test. The failover times are printed (``pytest -s``) as ``failover:`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from bot.cluster import Leadership
from storage.store import Store
from tests.botproc import ROOT, BotProcess, bot_env
from tests.clusterproc import (
    Cluster,
    PostCounter,
    first_after,
    log_of,
    sent_by,
    track_polls,
)
from tests.conftest import PG_URL
from tests.test_db_faults import Cluster as PgCluster
from tests.test_telegram import ALICE, CHAT_A, CHAT_B

APPROVE = "✅ Approve"
FAILOVER = 5.0  # TAPGATE_FAILOVER_SECONDS's default


@pytest.fixture
async def cluster(fake, db):
    group = Cluster(fake, db, digest_threshold=0)  # one message per request: failover counts them
    try:
        yield group
    finally:
        await group.stop()


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.05)


def report(what: str, seconds: float) -> None:
    print(f"failover: {what}: {seconds * 1000:.0f} ms")


async def submit(http: httpx.AsyncClient, summary: str) -> httpx.Response:
    return await http.post("/v1/approvals", json={"agent": "cluster", "kind": "shell",
                                                  "summary": summary})


def copies(url: str, ids: list[str]) -> tuple[int, int]:
    """(pending requests among ``ids``, their copies posted and not owed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pending = conn.execute("SELECT count(*) FROM approval WHERE id = ANY(%s) AND "
                               "status = 'pending'", (ids,)).fetchone()[0]
        posted = conn.execute("SELECT count(*) FROM approval_message WHERE approval_id = "
                              "ANY(%s) AND message_id IS NOT NULL AND NOT owed",
                              (ids,)).fetchone()[0]
    return pending, posted


def message_of(url: str, approval_id: str, chat_id: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT message_id FROM approval_message WHERE approval_id = %s "
                            "AND chat_id = %s", (approval_id, chat_id)).fetchone()[0]


async def one_leader(group: Cluster, timeout: float = 5.0) -> None:
    """Exactly one live instance says it leads, and every one agrees (after a start or a
    failover, heartbeats take a second or two to show everyone alive)."""
    deadline = time.monotonic() + timeout
    while True:
        healths = await asyncio.gather(*(x.health() for x in group.alive))
        leaders = [h["this_instance"]["pid"] for h in healths if h["this_instance"]["leader"]]
        assert len(leaders) <= 1, healths  # never two, not even for a moment
        if len(leaders) == 1 and all(
                h["leader"] is not None and h["leader"]["pid"] == leaders[0]
                and h["instances_alive"] == len(group.alive) for h in healths):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no agreement on one leader: {healths}")
        await asyncio.sleep(0.1)


# --- the burst and the kill ---------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_leader_killed_in_a_burst_loses_nothing(fake, cluster, db):
    polls = track_polls(fake)
    nodes = await cluster.start(3, at_once=True)
    await one_leader(cluster)
    leader = await cluster.leader()
    counter = PostCounter(fake)
    created: list[str] = []
    done = 0
    kill_at: list[float] = []

    async def agent(node, k: int) -> None:
        nonlocal done
        async with node.http() as http:
            for i in range(k):
                try:
                    answer = await submit(http, f"burst {node.n}.{i}")
                except httpx.HTTPError:
                    return  # its instance was killed: only 201s count
                if answer.status_code == 201:
                    created.append(answer.json()["id"])
                done += 1
                if done == 100 and not kill_at:
                    kill_at.append(time.monotonic())
                    leader.signal(signal.SIGKILL)

    # 300 requests spread over the three instances, 8 agents on each.
    await asyncio.gather(*(agent(node, 300 // 24) for node in nodes for _ in range(8)),
                         *(agent(nodes[j % 3], 1) for j in range(300 - 24 * (300 // 24))))
    assert kill_at, "the leader was not killed during the burst"
    await leader.proc.wait()
    report("SIGKILL in a burst -> new leader polling",
           await first_after(polls, kill_at[0], FAILOVER + 1))
    new = await cluster.leader(other_than=leader)
    assert len(created) >= 200

    # Every 201 is posted to both chats, exactly once but for a send in flight at the kill.
    await counter.wait_all(created, [CHAT_A, CHAT_B], timeout=120)
    counts = counter.update()
    extra = {c: sum(counts[(i, c)] - 1 for i in created) for c in (CHAT_A, CHAT_B)}
    print(f"failover: duplicates after one kill: {extra}")
    assert all(n <= 1 for n in extra.values()), extra
    # ... and stays decidable: pending, every copy posted with its buttons.
    pending, posted = await asyncio.to_thread(copies, db, created)
    assert (pending, posted) == (len(created), 2 * len(created))
    await one_leader(cluster)

    # A tap after the failover reaches the agent waiting on the other survivor.
    other = next(x for x in cluster.alive if x is not new)
    target = created[-1]
    async with other.http() as http:
        waiter = asyncio.create_task(http.get(f"/v1/approvals/{target}", params={"wait": 30}))
        message_id = await asyncio.to_thread(message_of, db, target, CHAT_A)
        assert fake.message(CHAT_A, message_id).buttons
        tapped = time.monotonic()
        fake.tap(CHAT_A, message_id, ALICE, button_text=APPROVE)
        answer = await asyncio.wait_for(waiter, 10)
        print(f"failover: tap -> agent on a follower: {(time.monotonic() - tapped) * 1000:.0f} ms")
    assert answer.json()["status"] == "approved"
    # Both copies show it, edited by the new leader alone.
    for chat in (CHAT_A, CHAT_B):
        mid = await asyncio.to_thread(message_of, db, target, chat)
        await fake.wait_until(lambda c=chat, m=mid: not fake.message(c, m).buttons
                              and "Approved" in fake.message(c, m).text, timeout=10)
    edits = [c for c in fake.calls if c.method == "editMessageText"
             and target in c.params.get("text", "")]
    assert {c.token for c in edits} == {new.token}


@pytest.mark.timeout(240)
async def test_failover_time_over_ten_kills(fake, cluster):
    polls = track_polls(fake)
    await cluster.start(3, at_once=True)
    ready = list(cluster.alive)
    booting: list[asyncio.Task] = []

    async def boot() -> None:
        node = cluster.node()
        await node.start(wait_polling=False)
        ready.append(node)

    times = []
    for _ in range(10):
        # Kill as soon as a follower is ready; replacements boot meanwhile (busy CPUs).
        await until(lambda: len(ready) >= 2 or any(
            t.done() and t.exception() for t in booting), 60, "a follower ready")
        for task in booting:
            if task.done() and task.exception():
                raise task.exception()
        leader = await cluster.leader()
        killed = time.monotonic()
        leader.signal(signal.SIGKILL)
        times.append(await first_after(polls, killed, FAILOVER + 1))
        ready.remove(leader)
        booting.append(asyncio.create_task(boot()))
        await leader.proc.wait()
    await asyncio.gather(*booting)
    times.sort()
    p50 = statistics.median(times)
    print("failover: SIGKILL -> new leader polling over 10 kills: "
          + ", ".join(f"{t * 1000:.0f}" for t in times) + f" ms (p50 {p50 * 1000:.0f} ms)")
    assert p50 <= 3.0 and times[-1] <= 6.0, times
    await one_leader(cluster)


# --- a frozen leader -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_paused_leader_wakes_and_sends_nothing_stale(fake, cluster, db):
    polls = track_polls(fake)
    await cluster.start(3, at_once=True)
    leader = await cluster.leader()
    followers = [x for x in cluster.alive if x is not leader]
    async with followers[0].http() as a, followers[1].http() as b:
        first = (await submit(a, "before the pause")).json()
        counter = PostCounter(fake)
        await counter.wait_all([first["id"]], [CHAT_A, CHAT_B], timeout=10)
        await until(lambda: copies(db, [first["id"]]) == (1, 2), 10, "both copies recorded")

        stopped = time.monotonic()
        leader.signal(signal.SIGSTOP)
        # While it is frozen: a request, a tap, and an agent waiting on another instance.
        second = (await submit(a, "during the pause")).json()
        waiter = asyncio.create_task(b.get(f"/v1/approvals/{first['id']}",
                                           params={"wait": 60}))
        message_id = await asyncio.to_thread(message_of, db, first["id"], CHAT_A)
        fake.tap(CHAT_A, message_id, ALICE, button_text=APPROVE)
        report("SIGSTOP -> new leader polling", await first_after(polls, stopped, FAILOVER + 2))
        assert (await asyncio.wait_for(waiter, 10)).json()["status"] == "approved"
        await counter.wait_all([second["id"]], [CHAT_A, CHAT_B], timeout=10)
        new = await cluster.leader(other_than=leader)

        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        woke = time.monotonic()
        leader.signal(signal.SIGCONT)
        # More work right after it wakes: a new request and a decision.
        third = (await submit(b, "after the pause")).json()
        async with (new.http()) as c:
            await c.post(f"/v1/approvals/{second['id']}/cancel")
        await counter.wait_all([third["id"]], [CHAT_A, CHAT_B], timeout=10)
        try:
            await until(lambda: "lost the lead" in log_of(leader), 10, "the woken leader noticing")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{log_of(leader)[-3000:]}") from None
        await asyncio.sleep(2.0)  # room for anything stale to show up
    stale = sent_by(fake, leader.token, woke)
    assert stale == [], stale
    counts = counter.update()
    assert all(counts[(i, c)] == 1 for i in (second["id"], third["id"])
               for c in (CHAT_A, CHAT_B)), counts
    health = await leader.health()
    assert health["this_instance"]["leader"] is False
    await one_leader(cluster)


# --- the database restarts under them -----------------------------------------------------------


@pytest.mark.timeout(180)
async def test_postgres_restart_under_three_instances(fake, cluster, db):
    server = PgCluster.serving(PG_URL)
    try:
        await cluster.start(3, at_once=True)
        nodes = list(cluster.alive)
        async with contextlib.AsyncExitStack() as stack:
            https = [await stack.enter_async_context(x.http()) for x in nodes]
            before = [(await submit(h, f"before {i}")).json()["id"] for i, h in enumerate(https)]
            counter = PostCounter(fake)
            await counter.wait_all(before, [CHAT_A, CHAT_B], timeout=10)
            async with server.down():
                pass
            t_up = time.monotonic()
            after = []
            for i, h in enumerate(https):
                deadline = time.monotonic() + 10
                while True:  # 503 only until each instance has reconnected
                    answer = await submit(h, f"after {i}")
                    if answer.status_code == 201 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert answer.status_code == 201, answer.text
                after.append(answer.json()["id"])
            await counter.wait_all(after, [CHAT_A, CHAT_B], timeout=15)
            report("PostgreSQL restart -> every request posted", time.monotonic() - t_up)
            leader = await cluster.leader()
            waiting_on = next(h for x, h in zip(nodes, https, strict=True) if x is not leader)
            waiter = asyncio.create_task(waiting_on.get(f"/v1/approvals/{before[0]}",
                                                        params={"wait": 30}))
            mid = await asyncio.to_thread(message_of, db, before[0], CHAT_B)
            fake.tap(CHAT_B, mid, ALICE, button_text=APPROVE)
            assert (await asyncio.wait_for(waiter, 10)).json()["status"] == "approved"
        counts = counter.update()
        assert all(counts[(i, c)] == 1 for i in before + after for c in (CHAT_A, CHAT_B))
        await one_leader(cluster, timeout=10)  # heartbeats resume within a second or two
    finally:
        await server.settle()


# --- starting together ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_two_started_at_the_same_instant_one_leads(fake, cluster, db):
    started = time.monotonic()
    await cluster.start(2, at_once=True)
    await one_leader(cluster)
    pollers = {c.token for c in fake.calls if c.method == "getUpdates" and c.at > started}
    assert len(pollers) <= 1, pollers  # a held poll is recorded when it ends
    leader = await cluster.leader()
    assert pollers <= {leader.token}
    assert not [c for c in fake.calls if c.method == "getUpdates" and c.status == 409]

    # Health and `tapgate status` name the leader.
    health = await leader.health()
    assert health["leader"]["pid"] == leader.pid and health["this_instance"]["leader"]
    assert health["instances_alive"] == 2 and health["status"] == "ok"
    env = bot_env(fake, db, leader.socket_path)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "status",
                                                   "--json"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["leader"]["pid"] == leader.pid and status["instances_alive"] == 2
    text = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "status"],
                                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert f"pid {leader.pid}" in text.stdout and "instances alive: 2" in text.stdout
    # A graceful stop hands the lead over at once.
    stopped = time.monotonic()
    await leader.stop()
    other = await cluster.leader(timeout=5)
    assert other is not leader
    report("SIGTERM -> next leader in the database", time.monotonic() - stopped)


# --- SQLite stays single-instance ----------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_sqlite_refuses_a_second_instance(fake, sqlite_url, tmp_path):
    async with BotProcess(fake, sqlite_url) as first:
        env = bot_env(fake, sqlite_url, tmp_path / "second.sock")
        second = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "run"],
                                         cwd=ROOT, env=env, capture_output=True, text=True,
                                         timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "single-instance" in lines[0], second.stderr
        assert f"pid {first.proc.pid}" in lines[0]
        assert not (tmp_path / "second.sock").exists()
        status = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "status"],
                                         cwd=ROOT, env=env, capture_output=True, text=True,
                                         timeout=60)
        assert f"pid {first.proc.pid}" in status.stdout, status
        from bot import doctor
        from bot.config import Settings

        lines = []
        settings = Settings(_env_file=None, database_url=sqlite_url)
        doctor._check_database(settings, "test", lambda ok, text: lines.append((ok, text)))
        assert any("single-instance" in text and str(first.proc.pid) in text
                   for _, text in lines), lines
        assert await first.healthy()


# --- the election itself, in process ---------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_leader_whose_lock_session_ends_stops_at_once(db):
    store = Store.from_url(db)
    store.migrate()
    store.close()
    a, b = Leadership(db, FAILOVER), Leadership(db, FAILOVER)
    try:
        await a.start()
        await b.start()
        assert a.leading and a.valid() and await a.confirm()
        assert not b.leading and not b.valid() and not await b.confirm()
        epoch = a.epoch
        # The server ends the leader's lock session (as a restart would): the lock is
        # gone that instant, so the lease must end that instant too, not at its term.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (a._conn.info.backend_pid,))
        ended = time.monotonic()
        await until(lambda: not a.valid(), 0.2, "the old leader's lease ending")
        assert not await a.confirm()
        await until(lambda: b.leading, 2, "the follower taking the lead")
        assert time.monotonic() - ended < 1.5
        assert b.epoch == epoch + 1 and not a.leading
        await until(lambda: a._conn is not None and not a._conn.closed, 3,
                    "the old leader reconnecting")
    finally:
        await a.stop()
        await b.stop()
    # Stopping forgets both instances; the lead is free.
    store = Store.from_url(db)
    try:
        status = store.cluster_status()
    finally:
        store.close()
    assert status.instances == [] and status.leader is None
