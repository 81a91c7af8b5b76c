"""The bot survives its database: server restarts, killed connections, locks, full disks.

The PostgreSQL tests restart (or kill the connections of) the server that
``TAPGATE_TEST_POSTGRES_URL`` names, under a real ``tapgate run``
(tests/botproc.py). The cluster is found by port in ``pg_lsclusters`` and
driven with ``pg_ctlcluster``: local Debian clusters only; elsewhere these
tests skip (and fail when ``CI`` is set). Whatever happens, the server is
started again and accepting connections before a test ends.

The measured recovery times are printed (``pytest -s``) as ``recovery:`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import peewee
import psycopg
import pytest

from bot.approvals import ApprovalManager
from bot.pgnotify import DecisionListener
from bot.service import Service
from storage.db import open_database
from storage.errors import StorageError
from storage.records import NewApproval
from storage.store import Store
from tests.botproc import BotProcess
from tests.conftest import IN_CI, PG_URL, _empty_postgres
from tests.test_telegram import ALICE, CHAT_A, CHAT_B, answer_of, edited_to, posted, settings_for

RECOVERY = 5.0  # seconds from the server accepting connections to everything working again
APPROVE = "✅ Approve"


# --- helpers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def socket_api(path: Path):
    """Raw HTTP over the bot's socket (status codes and headers, not the client's errors)."""
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://tapgate",
                                 timeout=60) as http:
        yield http


async def submit(http: httpx.AsyncClient, summary: str, **extra) -> httpx.Response:
    return await http.post("/v1/approvals", json={"agent": "faults", "kind": "shell",
                                                  "summary": summary, **extra})


def assert_unavailable(response: httpx.Response, message: str) -> None:
    """A 503 that says why, with a Retry-After an agent can act on."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_error"
    assert message in error["message"], error
    assert int(response.headers["Retry-After"]) >= 1


def report(what: str, seconds: float) -> None:
    print(f"recovery: {what}: {seconds * 1000:.0f} ms")


@dataclass
class Cluster:
    """The local Debian cluster serving a PostgreSQL URL (found by port)."""

    version: str
    name: str
    url: str
    starting: asyncio.Task | None = None

    @classmethod
    def serving(cls, url: str) -> Cluster:
        parts = urlparse(url)
        port = str(parts.port or 5432)
        found = None
        if shutil.which("pg_lsclusters") and parts.hostname in ("127.0.0.1", "localhost", "::1"):
            listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True,
                                     text=True).stdout
            found = next((line.split()[:2] for line in listing.splitlines()
                          if line.split()[2:3] == [port]), None)
        if found is None or (os.geteuid() != 0 and getpass.getuser() != "postgres"):
            why = (f"cannot restart the server of {url}: no local cluster on port {port} "
                   "(pg_lsclusters), or not running as root or postgres")
            pytest.fail(why) if IN_CI else pytest.skip(why)
        return cls(*found, url)

    async def ctl(self, action: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        # "start" on a running cluster exits 2 ("already running"): that is what we want.
        if proc.returncode not in (0, 2 if action == "start" else 0):
            raise AssertionError(f"pg_ctlcluster {action} failed: {out.decode()}")

    async def accepting(self) -> bool:
        def probe() -> bool:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False
        return await asyncio.to_thread(probe)

    async def wait_accepting(self, timeout: float = 60.0) -> float:
        """The monotonic time at which the server first accepted a connection."""
        deadline = time.monotonic() + timeout
        while not await self.accepting():
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL {self.version}/{self.name} is not accepting "
                                     f"connections {timeout:g} s after start")
            await asyncio.sleep(0.02)  # poll interval while waiting for a condition
        return time.monotonic()

    @contextlib.asynccontextmanager
    async def down(self):
        """The server is stopped inside the block and started again after it, whatever
        happened inside. Yields a list that then holds the monotonic time at which the
        server accepted connections again (``pg_ctlcluster start`` itself may still be
        finishing: :meth:`settle` waits for it)."""
        up: list[float] = []
        await self.ctl("stop")
        try:
            yield up
        finally:
            self.starting = asyncio.create_task(self.ctl("start"))
            up.append(await self.wait_accepting())

    async def settle(self) -> None:
        """Make sure the server runs and accepts connections (for the tests after this)."""
        if self.starting is not None:
            await self.starting
        if not await self.accepting():
            await self.ctl("start")
            await self.wait_accepting()


@pytest.fixture
async def cluster():
    """The local cluster serving the test URL; running again after the test, always."""
    found = Cluster.serving(PG_URL)
    try:
        yield found
    finally:
        await found.settle()


def kill_backends(url: str) -> int:
    """Terminate every backend of ``url``'s database but our own; how many there were."""
    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())


def listeners(url: str) -> int:
    """How many sessions of ``url``'s database are listening for decisions."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN tapgate_approval'").fetchone()[0]


async def when(awaitable) -> float:
    """The monotonic time at which ``awaitable`` finished."""
    await awaitable
    return time.monotonic()


async def until(condition, timeout: float, what: str):
    """Poll a (blocking) condition until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.02)  # poll interval while waiting for a condition


# --- PostgreSQL ----------------------------------------------------------------------------


async def test_postgres_restart_under_a_running_bot(fake, pg_url, cluster):
    _empty_postgres(pg_url)
    async with BotProcess(fake, pg_url) as bot, socket_api(bot.socket_path) as http:
        before = (await submit(http, "before the restart")).json()
        in_a = await posted(fake, CHAT_A, before["id"])
        await posted(fake, CHAT_B, before["id"])
        await until(lambda: listeners(pg_url), 10, "the bot listens for decisions")
        # A message still owed when the server goes down: chat B's Telegram fails for now.
        fake.set_chat_unavailable(CHAT_B, "Internal Server Error", status=500)
        owed = (await submit(http, "owed across the restart")).json()
        await fake.wait_for_error("sendMessage", lambda c: int(c.params["chat_id"]) == CHAT_B
                                  and owed["id"] in c.params["text"])

        async with cluster.down() as up:
            fake.set_chat_unavailable(CHAT_B, None)
            assert_unavailable(await submit(http, "while down"),
                               "the database is unavailable")
            # Telegram is still served: a tap gets an answer (the decision must wait).
            query = fake.tap(CHAT_A, in_a.message_id, ALICE, button_text=APPROVE)
            assert "try again" in await answer_of(fake, query)
        t_up = up[0]
        # Each recovery is timed on its own, from the moment the server accepted again.
        owed_sent = asyncio.create_task(when(posted(fake, CHAT_B, owed["id"])))
        listening = asyncio.create_task(when(until(lambda: listeners(pg_url), RECOVERY,
                                                   "the bot listens for decisions again")))

        # Answered 503 only while the server is down: the first write after it works.
        first = await submit(http, "after the restart")
        assert first.status_code == 201, first.text
        report("PostgreSQL restart -> first API write", time.monotonic() - t_up)

        waiter = asyncio.create_task(http.get(f"/v1/approvals/{before['id']}",
                                              params={"wait": 30}))
        fake.tap(CHAT_A, in_a.message_id, ALICE, button_text=APPROVE)
        for chat in (CHAT_A, CHAT_B):
            message = (await posted(fake, chat, before["id"])).message_id
            await edited_to(fake, chat, message, "Approved")
        report("PostgreSQL restart -> tap decided, both copies edited", time.monotonic() - t_up)
        assert (await asyncio.wait_for(waiter, RECOVERY)).json()["status"] == "approved"
        report("PostgreSQL restart -> owed message sent", await owed_sent - t_up)
        report("PostgreSQL restart -> LISTEN again", await listening - t_up)
        assert time.monotonic() - t_up < RECOVERY


async def test_connections_killed_under_a_running_bot(fake, pg_url):
    _empty_postgres(pg_url)
    async with BotProcess(fake, pg_url) as bot, socket_api(bot.socket_path) as http:
        before = (await submit(http, "before the kill")).json()
        in_a = await posted(fake, CHAT_A, before["id"])
        await posted(fake, CHAT_B, before["id"])
        await until(lambda: listeners(pg_url), 10, "the bot listens for decisions")
        waiter = asyncio.create_task(http.get(f"/v1/approvals/{before['id']}",
                                              params={"wait": 30}))
        assert await asyncio.to_thread(kill_backends, pg_url) >= 2  # a worker and the listener
        killed = time.monotonic()

        # The server never went away: no request may fail.
        first = await submit(http, "after the kill")
        assert first.status_code == 201, first.text
        report("pg_terminate_backend -> first API write", time.monotonic() - killed)
        fake.tap(CHAT_A, in_a.message_id, ALICE, button_text=APPROVE)
        for chat in (CHAT_A, CHAT_B):
            message = (await posted(fake, chat, before["id"])).message_id
            await edited_to(fake, chat, message, "Approved")
        report("pg_terminate_backend -> tap decided, both copies edited",
               time.monotonic() - killed)
        # The long-poll in flight during the kill is answered with the decision.
        assert (await asyncio.wait_for(waiter, RECOVERY)).json()["status"] == "approved"
        assert (await http.get("/v1/approvals", params={"status": "pending"})).status_code == 200
        await until(lambda: listeners(pg_url), RECOVERY, "the bot listens for decisions again")
        report("pg_terminate_backend -> LISTEN again", time.monotonic() - killed)
        assert time.monotonic() - killed < RECOVERY


async def test_listener_wakes_waiters_whose_decision_it_missed(pg_url):
    _empty_postgres(pg_url)
    store = Store.from_url(pg_url)
    # Waiters re-read only once a minute: only the listener can wake them in time.
    manager = ApprovalManager(store, chat_ids=[], poll_interval=60)
    listener = DecisionListener(pg_url, manager)
    await listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        approval, _ = await manager.submit(agent="a", kind="k", summary="missed")
        waiting = asyncio.create_task(manager.wait(approval.id, 120))
        while manager.waiting == 0:
            await asyncio.sleep(0)
        # Decided by "another process" while nobody listened: no notification at all.
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE approval SET status = 'approved', decided_by = 'elsewhere' "
                         "WHERE id = %s", (approval.id,))
        await asyncio.to_thread(kill_backends, pg_url)
        decided = await asyncio.wait_for(waiting, RECOVERY)
        assert (decided.status, decided.decided_by) == ("approved", "elsewhere")
    finally:
        await listener.stop()
        store.close()


def test_a_unit_is_run_again_only_if_nothing_can_have_committed(pg_url):
    """The connection dies in the middle of a unit (after the check at its start)."""
    db = open_database(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS fault_probe (n int)")
        admin.execute("TRUNCATE fault_probe")

        def kill_my_connection() -> None:
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits till gone

        def unit(work: Callable[[bool], None], runs: list[int]) -> int:
            runs.append(1)
            work(len(runs) == 1)  # the first run loses its connection
            return db.execute_sql("SELECT count(*) FROM fault_probe").fetchone()[0]

        def read(first: bool) -> None:
            if first:
                kill_my_connection()

        def transaction(first: bool) -> None:
            with db.atomic():
                db.execute_sql("INSERT INTO fault_probe VALUES (1)")
                if first:
                    kill_my_connection()
                db.execute_sql("SELECT 1")

        def autocommit_write(first: bool) -> None:
            db.execute_sql("INSERT INTO fault_probe VALUES (2)")
            if first:
                kill_my_connection()

        try:
            runs: list[int] = []
            assert db.run_unit(unit, read, runs) == 0 and len(runs) == 2
            # Died before COMMIT: the server rolled it back; run again, stored once.
            runs = []
            assert db.run_unit(unit, transaction, runs) == 1 and len(runs) == 2
            # An autocommit write may have committed: never run twice.
            runs = []
            with pytest.raises(peewee.OperationalError):
                db.run_unit(unit, autocommit_write, runs)
            assert len(runs) == 1
            assert db.run_unit(unit, read, [1]) == 2  # and the next unit works
        finally:
            db.close()
            admin.execute("DROP TABLE fault_probe")


# --- SQLite ---------------------------------------------------------------------------------

HOLD_LOCK = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.asynccontextmanager
async def locked(path: str):
    """Another process holds SQLite's write lock (``BEGIN EXCLUSIVE``) inside the block."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_LOCK, path, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert (await proc.stdout.readline()).strip() == b"locked"
        yield
    finally:
        proc.stdin.write(b"release\n")
        await proc.stdin.drain()
        assert await proc.wait() == 0


def rows(path: str, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def test_sqlite_locked_by_another_process(fake, sqlite_url):
    path = sqlite_url.removeprefix("sqlite:///")
    async with BotProcess(fake, sqlite_url) as bot, socket_api(bot.socket_path) as http:
        # A short lock: the write waits for it (busy timeout) and then succeeds.
        async with locked(path):
            write = asyncio.create_task(submit(http, "waits for the lock"))
            done, _ = await asyncio.wait({write}, timeout=1.0)
            assert not done, "the write did not wait for the lock"
            reads = await http.get("/v1/approvals")  # readers are not blocked (WAL)
            assert reads.status_code == 200
        assert (await write).status_code == 201
        # Held past the busy timeout: a clear 503, and nothing of the request stored.
        async with locked(path):
            started = time.monotonic()
            assert_unavailable(await submit(http, "gives up"), "locked by another writer")
            assert time.monotonic() - started >= 4.5  # it waited for the busy timeout
        assert rows(path, "SELECT count(*) FROM approval WHERE summary = 'gives up'") == [(0,)]
        assert rows(path, "SELECT count(*) FROM approval_message") == [(2,)]
        assert (await submit(http, "after the lock")).status_code == 201


async def test_sqlite_read_only_and_full_disk(fake, sqlite_url, tmp_path):
    path = sqlite_url.removeprefix("sqlite:///")
    settings = settings_for(fake, sqlite_url, socket_path=tmp_path / "s.sock")
    svc = Service(settings)
    await svc.start()
    await fake.wait_polling()
    store = svc.store
    try:
        async with socket_api(settings.socket_path) as http:
            kept = (await submit(http, "before")).json()
            in_a = await posted(fake, CHAT_A, kept["id"])

            store._on_every_worker(lambda: store.db.execute_sql("PRAGMA query_only = 1"))
            assert_unavailable(await submit(http, "read-only"), "the database is read-only")
            # Reads and Telegram keep working.
            assert (await http.get(f"/v1/approvals/{kept['id']}")).status_code == 200
            fake.send_text(CHAT_A, ALICE, "/pending")
            await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == CHAT_A
                                and "Pending requests" in c.params["text"]
                                and "before" in c.params["text"])
            fake.send_text(CHAT_A, ALICE, "/spend")
            await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == CHAT_A
                                and "Spend by" in c.params["text"])
            query = fake.tap(CHAT_A, in_a.message_id, ALICE, button_text=APPROVE)
            assert "try again" in await answer_of(fake, query)

            def full() -> None:
                pages = store.db.execute_sql("PRAGMA page_count").fetchone()[0]
                store.db.execute_sql("PRAGMA query_only = 0")
                store.db.execute_sql(f"PRAGMA max_page_count = {pages}")
            store._on_every_worker(full)
            # Several writes at once share one transaction (group commit); the large
            # payload needs pages the file may not have. Nobody may be told "stored"
            # about a write that was undone, nor "failed" about one that was kept.
            answers = await asyncio.gather(*[
                submit(http, f"full {i}", payload="x" * (60_000 if i == 2 else 10))
                for i in range(5)])
            assert any(a.status_code == 503 for a in answers)
            for i, answer in enumerate(answers):
                stored = rows(path, f"SELECT count(*) FROM approval WHERE summary = 'full {i}'")
                if answer.status_code == 201:
                    assert stored == [(1,)], f"full {i}: told stored, not stored"
                else:
                    assert_unavailable(answer, "the disk is full")
                    assert stored == [(0,)], f"full {i}: told failed, but stored"
            assert (await http.get("/v1/health")).status_code == 200
    finally:
        await svc.stop()


async def test_group_undone_by_sqlite_is_reported_to_every_caller(sqlite_url):
    """SQLite rolls a whole transaction back on a full disk: every unit of the group
    then failed, and none may run outside a transaction after it."""
    path = sqlite_url.removeprefix("sqlite:///")
    store = Store.from_url(sqlite_url, workers=2)
    try:
        def new(i: int, size: int) -> NewApproval:
            return NewApproval(agent="a", kind="k", summary=f"group {i}", payload="x" * size,
                               ttl_seconds=60, chat_ids=[CHAT_A])

        def full() -> None:
            pages = store.db.execute_sql("PRAGMA page_count").fetchone()[0]
            store.db.execute_sql(f"PRAGMA max_page_count = {pages}")
        store._on_every_worker(full)
        async with locked(path):
            # The first call takes the lock's wait alone; the rest queue up behind it
            # and are written together, the large one first.
            first = asyncio.ensure_future(store.run(store.create_approval, new(0, 10)))
            await until(lambda: store._group_busy and not store._group_pending, 5,
                        "the first call is being written")
            rest = [asyncio.ensure_future(store.run(store.create_approval, new(i, size)))
                    for i, size in ((1, 60_000), (2, 10), (3, 10))]
            await until(lambda: len(store._group_pending) == 3, 5, "the others are queued")
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
        assert all(isinstance(o, StorageError) for o in outcomes[1:]), outcomes
        for i in (1, 2, 3):
            assert rows(path, f"SELECT count(*) FROM approval WHERE summary = 'group {i}'") \
                == [(0,)], f"group {i} is stored although its caller was told it failed"
        # Each caller is told the cause, not what a failed clean-up said after it.
        assert all("disk is full" in str(o) for o in outcomes[1:]), outcomes
    finally:
        store.close()
