"""Leadership among several instances on one PostgreSQL database; SQLite's single instance.

Exactly one ``tapgate run`` leads: it polls Telegram, pays the outbox and runs the
once-only work (:mod:`bot.leader`). The lead is a session-level advisory lock
(``pg_try_advisory_lock``) held on a connection of its own. Whoever takes it
increments the epoch in ``cluster_leader``; followers try again every ``tick``.

How a dead or frozen leader is replaced within ``failover_seconds`` (F, default 5):

- killed, or its host gone: the server notices the closed connection at once (or by
  TCP keepalive / ``tcp_user_timeout``) and drops the lock; a follower takes it
  within one ``tick`` (0.5 s).
- paused (SIGSTOP, a frozen VM, a stalled event loop): the lock session runs with
  ``idle_session_timeout`` = F/2, and a leader touches it every ``tick``, so the
  server ends a paused leader's session after F/2 and a follower takes over.

Fencing: the leader may only send while its *lease* is valid, and the lease runs
out before the server can have given the lock to anyone else. Each check query
(the epoch, every ``tick``) renews it to ``sent + lease`` where ``sent`` is the
moment the query left and ``lease`` = F/2 − ``tick``: the server's idle timer
started after ``sent``, so another leader needs at least F/2 from ``sent``. A
paused leader that wakes finds its lease expired; :meth:`Leadership.confirm`
then waits for a fresh check, which fails on the connection the server closed.
A check that fails, times out or sees another epoch ends the lead at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from storage.clock import to_text, utcnow
from storage.db import PG_CONNECT_TIMEOUT
from storage.instances import (
    CURRENT_EPOCH,
    FORGET,
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    LEADER_LOCK_KEY,
    MARK_LEADER,
    PRUNE,
    PRUNE_AFTER,
    STEP_DOWN,
    TAKE_LEAD,
    TRY_LOCK,
    UNLOCK,
    ClusterStatus,
)
from storage.store import Store

log = logging.getLogger(__name__)

Listener = Callable[[bool], None]
"""``listener(leading)``: called when this instance gains (True) or loses (False) the lead."""


@dataclass(frozen=True)
class Me:
    """This instance: a random id per start, the host and the pid."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=lambda: to_text(utcnow()))


class Role:
    """What :mod:`bot.leader` needs to know about the lead (see :class:`Leadership`)."""

    me: Me
    leading: bool = False
    stranded: bool = False  # lost the lock connection while alone: still polls (see Leadership)
    since: str | None = None
    epoch: int | None = None

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _tell(self, leading: bool) -> None:
        for listener in self._listeners:
            try:
                listener(leading)
            except Exception:
                log.exception("leadership listener failed")

    def valid(self) -> bool:
        """True while this instance may act as the leader (no query; cheap)."""
        return self.leading

    async def confirm(self) -> bool:
        """True if this instance still leads, checked with the server if the lease ran out."""
        return self.valid()

    async def start(self) -> None:
        """Take part in the election; returns after the first attempt (won or not)."""

    async def stop(self) -> None:
        """Leave: release the lead (if held) and forget this instance."""


class SoleLeadership(Role):
    """SQLite: the one instance always leads (a lock file keeps a second one out)."""

    def __init__(self) -> None:
        super().__init__()
        self.me = Me()

    async def start(self) -> None:
        self.leading, self.since = True, self.me.started_at
        self._tell(True)

    async def stop(self) -> None:
        if self.leading:
            self.leading = False
            self._tell(False)


class Leadership(Role):
    """The advisory-lock election on PostgreSQL (see the module doc)."""

    def __init__(self, url: str, failover_seconds: float = 5.0,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, me: Me | None = None):
        super().__init__()
        self.url = url
        self.me = me or Me()
        self.idle_timeout = max(1.0, failover_seconds / 2)
        self.tick = min(0.5, self.idle_timeout / 4)
        self.lease = self.idle_timeout - self.tick
        self.heartbeat_seconds = heartbeat_seconds
        self._valid_until = 0.0
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task | None = None
        self._poke = asyncio.Event()
        self._round = asyncio.Event()  # set after every check round, won, lost or failed
        self._beat_at = 0.0
        self._stopping = False
        self.alone = False  # no other instance alive at the last heartbeat

    # --- the fence ----------------------------------------------------------------------

    def valid(self) -> bool:
        return self.leading and time.monotonic() < self._valid_until

    async def confirm(self) -> bool:
        if self.valid():
            return True
        if not self.leading:
            return False
        # The lease ran out (this process was paused, or the server is slow): only a
        # fresh check may renew it.
        self._round.clear()
        self._poke.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._round.wait(), self.lease)
        return self.valid()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            conn = await self._connect()
            with contextlib.suppress(psycopg.Error):
                await conn.execute(PRUNE, (PRUNE_AFTER,))
            await self._round_on(conn)
        except Exception as exc:  # the loop below keeps trying
            log.warning("leader election: first attempt failed (%s)", exc)
            await self._drop()
        self._task = asyncio.create_task(self._run(), name="tapgate-leadership")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        # Graceful: step down and unlock now, so a follower takes over within a tick,
        # and forget this instance (on a new connection if the last one broke).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                conn = self._conn
                if conn is None or conn.closed:
                    conn = await self._connect()
                if self.leading:
                    await conn.execute(STEP_DOWN, (self.epoch,))
                    await conn.execute(UNLOCK, (LEADER_LOCK_KEY,))
                await conn.execute(FORGET, (self.me.id,))
        self._lose("stopping")
        await self._drop()

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.tick
        while True:
            try:
                conn = self._conn if self._conn is not None else await self._connect()
                while True:
                    await self._round_on(conn)
                    delay = self.tick
                    await self._idle(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server restart, network, terminated session
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                if self.leading and self._alone_now(exc):
                    self._strand(why)
                elif not self.stranded:  # stranded: stays so until the server is back
                    self._lose(why)
                await self._drop()
                self._round.set()
                log.debug("leader election: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _idle(self, conn: psycopg.AsyncConnection) -> None:
        """Wait a tick, or less if poked or if the server writes to the idle session.

        A server only writes to an idle session to end it (a restart,
        ``pg_terminate_backend``, the idle timeout): its lock is gone at that moment,
        so the lease ends now, not at its term, and the next round runs at once.
        """
        loop = asyncio.get_running_loop()
        said = loop.create_future()
        fd = conn.pgconn.socket
        loop.add_reader(fd, lambda: said.done() or said.set_result(None))
        self._poke.clear()
        poked = asyncio.ensure_future(self._poke.wait())
        try:
            await asyncio.wait({said, poked}, timeout=self.tick,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
            poked.cancel()
        if said.done():
            self._valid_until = 0.0

    async def _round_on(self, conn: psycopg.AsyncConnection) -> None:
        """One round: the leader checks its epoch, a follower tries the lock; both beat."""
        sent = time.monotonic()
        async with asyncio.timeout(self.lease):
            if self.leading:
                epoch = (await (await conn.execute(CURRENT_EPOCH)).fetchone())[0]
                if epoch != self.epoch:
                    raise LostLead(f"the epoch moved on to {epoch}")
                self._valid_until = sent + self.lease
            elif (await (await conn.execute(TRY_LOCK, (LEADER_LOCK_KEY,))).fetchone())[0]:
                epoch, since = await (await conn.execute(TAKE_LEAD, (self.me.id,))).fetchone()
                await conn.execute(MARK_LEADER, (since, epoch, self.me.id))
                self.epoch, self.since = epoch, since
                self._valid_until = sent + self.lease
                self.leading, self.stranded = True, False
                log.info("this instance leads now (epoch %s; %s pid %s)", epoch, self.me.host,
                         self.me.pid)
                self._tell(True)
            elif self.stranded:  # back, but another instance took the lead meanwhile
                self.stranded = False
                log.warning("another instance leads now")
                self._tell(False)
            if sent - self._beat_at >= self.heartbeat_seconds:
                await self._beat(conn)
                self._beat_at = sent
        self._round.set()

    async def _connect(self) -> psycopg.AsyncConnection:
        ms = int(self.idle_timeout * 1000)
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT,
            keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
            tcp_user_timeout=ms)
        self._conn = conn
        # The server ends this session if it stays idle (its client paused) for F/2, and
        # with it the lock; no check may run longer than a lease.
        try:
            await conn.execute(f"SET idle_session_timeout = {ms}")
        except psycopg.errors.UndefinedObject:  # PostgreSQL < 14: a pause is not detected
            if not getattr(self, "_warned_old", False):
                self._warned_old = True
                log.warning("PostgreSQL < 14 has no idle_session_timeout: a paused leader "
                            "keeps the lead until it resumes or its host goes away")
        await conn.execute(f"SET statement_timeout = {int(self.lease * 1000)}")
        await self._beat(conn)
        self._beat_at = time.monotonic()
        return conn

    async def _beat(self, conn: psycopg.AsyncConnection) -> None:
        me = self.me
        cursor = await conn.execute(HEARTBEAT, (me.id, me.host, me.pid, me.started_at, me.id))
        self.alone = (await cursor.fetchone())[0] == 0

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await conn.close()

    def _alone_now(self, exc: BaseException) -> bool:
        """Was this instance alone when its lock connection failed, as far as it can
        tell? Not after a pause (its own session timed out, or its last heartbeat is
        old): others may have started meanwhile and one may lead by now."""
        fresh = time.monotonic() - self._beat_at < 2 * self.heartbeat_seconds
        paused = isinstance(exc, psycopg.errors.IdleSessionTimeout | TimeoutError)
        return self.alone and fresh and not paused

    def _strand(self, why: str) -> None:
        """The lock connection failed while no other instance was alive: the outbox stops
        (the lease runs out) but polling goes on, so taps are still answered ("try again")
        while the database is down. The first reconnect ends it: the lead is taken again,
        or another instance has it and polling stops."""
        self._valid_until = 0.0
        self.leading, self.stranded = False, True
        log.warning("this instance lost its lock connection (%s); alone, it keeps answering "
                    "Telegram until the database is back", why)
        self._tell(False)

    def _lose(self, why: str) -> None:
        self._valid_until = 0.0
        if self.stranded:
            self.stranded = False
            self._tell(False)
        if self.leading:
            self.leading = False
            if not self._stopping:
                log.warning("this instance lost the lead (%s)", why)
            self._tell(False)


class LostLead(Exception):
    """The lock session is alive but another instance took the lead (never expected)."""


# --- reporting: GET /v1/health and tapgate status --------------------------------------------


def status_fields(status: ClusterStatus) -> dict:
    """``leader`` ({host, pid, since} or None) and ``instances_alive``, from the tables."""
    leader = status.leader
    return {"leader": None if leader is None else
            {"host": leader.host, "pid": leader.pid, "since": status.leader_since},
            "instances_alive": status.instances_alive}


async def cluster_health(role: Role, store: Store) -> dict:
    """The cluster part of ``GET /v1/health``: who leads, how many are alive, and us."""
    me = role.me
    this = {"id": me.id, "host": me.host, "pid": me.pid, "started_at": me.started_at,
            "leader": role.leading}
    if isinstance(role, SoleLeadership):
        lead = {"host": me.host, "pid": me.pid, "since": role.since} if role.leading else None
        return {"leader": lead, "instances_alive": 1, "this_instance": this}
    status = await store.run(store.cluster_status)
    return {**status_fields(status), "this_instance": this}
