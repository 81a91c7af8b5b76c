"""Several ``tapgate run`` processes on one fresh PostgreSQL database (tests and bench).

Each process gets its own token alias (``<token>-<n>``), which the fake accepts as
the same bot and records on every call (``Call.token``): the tests can tell which
instance sent what, and that a paused leader sent nothing after it woke.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import psycopg

from storage.store import Store
from tests.botproc import BotProcess
from tests.fake_telegram import FakeTelegram

ID_IN_TEXT = re.compile(r"ID: <code>([A-Za-z0-9_-]+)</code>")
POSTS = frozenset({"sendMessage"})
EDITS = frozenset({"editMessageText", "editMessageReplyMarkup"})


def fresh_database(admin_url: str) -> str:
    """Create an empty database on ``admin_url``'s server; its URL (not migrated)."""
    name = f"tapgate_cluster_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return urlunparse(urlparse(admin_url)._replace(path=f"/{name}"))


def drop_database(admin_url: str, url: str) -> None:
    name = urlparse(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Node(BotProcess):
    """One instance, with its own token alias."""

    def __init__(self, fake: FakeTelegram, db_url: str, n: int, **settings):
        self.token = f"{fake.token}-{n}"
        fake.aliases.add(self.token)
        super().__init__(fake, db_url, telegram_token=self.token, **settings)
        self.n = n

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def http(self, timeout: float = 60) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        return httpx.AsyncClient(transport=transport, base_url="http://tapgate",
                                 timeout=timeout)

    async def health(self) -> dict:
        async with self.http(5) as http:
            return (await http.get("/v1/health")).json()


class Cluster:
    """N nodes on one database; the fake Telegram they share."""

    def __init__(self, fake: FakeTelegram, db_url: str, **settings):
        self.fake = fake
        self.db_url = db_url
        self.settings = settings
        self.nodes: list[Node] = []
        self._count = 0

    def node(self) -> Node:
        self._count += 1
        node = Node(self.fake, self.db_url, self._count, **self.settings)
        self.nodes.append(node)
        return node

    async def start(self, n: int, at_once: bool = False) -> list[Node]:
        """Start ``n`` more nodes: one after the other (the first leads), or all at once."""
        fresh = [self.node() for _ in range(n)]
        if at_once:
            await asyncio.gather(*(x.start(wait_polling=False) for x in fresh))
        else:
            for x in fresh:
                await x.start(wait_polling=False)
        await self.fake.wait_polling(timeout=30)
        return fresh

    @property
    def alive(self) -> list[Node]:
        return [x for x in self.nodes if x.running]

    def status(self):
        store = Store.from_url(self.db_url, workers=1)
        try:
            return store.cluster_status()
        finally:
            store.close()

    async def leader(self, timeout: float = 15.0, other_than: Node | None = None) -> Node:
        """The node that holds the lead (by the database), waiting for one."""
        deadline = time.monotonic() + timeout
        while True:
            status = await asyncio.to_thread(self.status)
            lead = status.leader
            found = next((x for x in self.alive if lead is not None and x.pid == lead.pid
                          and x is not other_than), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader within {timeout:g} s: {status}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for x in self.nodes:
            if x.running:
                with contextlib.suppress(ProcessLookupError):
                    x.signal(signal.SIGCONT)
        await asyncio.gather(*(x.__aexit__(None, None, None) for x in self.nodes),
                             return_exceptions=True)


def track_polls(fake: FakeTelegram) -> list[float]:
    """Arrival times (monotonic) of every getUpdates from now on."""
    arrivals: list[float] = []
    original = fake._handlers["getUpdates"]

    async def tracked(params: dict, files: dict):
        arrivals.append(time.monotonic())
        return await original(params, files)

    fake._handlers["getUpdates"] = tracked
    return arrivals


async def first_after(arrivals: list[float], t0: float, timeout: float) -> float:
    """Seconds from ``t0`` to the first arrival after it."""
    deadline = time.monotonic() + timeout
    while True:
        later = [t for t in arrivals if t > t0]
        if later:
            return later[0] - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"nobody polled within {timeout:g} s")
        await asyncio.sleep(0.01)


class PostCounter:
    """How often each approval was posted to each chat (sendMessage answered ok)."""

    def __init__(self, fake: FakeTelegram):
        self.fake = fake
        self.counts: Counter[tuple[str, int]] = Counter()
        self._seen = 0

    def update(self) -> Counter[tuple[str, int]]:
        calls = self.fake.calls
        while self._seen < len(calls):
            call = calls[self._seen]
            self._seen += 1
            if call.method in POSTS and call.ok:
                match = ID_IN_TEXT.search(call.params.get("text", ""))
                if match:
                    self.counts[(match.group(1), int(call.params["chat_id"]))] += 1
        return self.counts

    async def wait_all(self, ids: list[str], chats: list[int], timeout: float) -> None:
        wanted = [(i, c) for i in ids for c in chats]

        def done() -> bool:
            counts = self.update()
            return all(counts[k] for k in wanted)

        await self.fake.wait_until(done, timeout=timeout,
                                   what=f"{len(ids)} requests posted to every chat")


def sent_by(fake: FakeTelegram, token: str, since: float,
            methods: frozenset[str] = POSTS | EDITS | {"getUpdates", "answerCallbackQuery"}):
    """Calls of ``methods`` from ``token`` that arrived after ``since`` (monotonic)."""
    return [c for c in fake.calls if c.token == token and c.at > since and c.method in methods]


def log_of(node: Node) -> str:
    return Path(node.log_path).read_text(errors="replace") if node.log_path.exists() else ""
