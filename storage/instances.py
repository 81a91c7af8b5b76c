"""Instances and the leader's epoch (several ``tapgate run`` on one PostgreSQL database).

Leadership itself is a session-level advisory lock held by :mod:`bot.cluster` on a
connection of its own; the SQL it runs there is kept here, next to the tables it
touches (``instance``, ``cluster_leader``: migration 0004). Times are written with
the server's clock, so hosts with skewed clocks still agree on who is alive.

:meth:`InstanceStore.cluster_status` reads the same tables through the Store, for
``GET /v1/health`` and ``tapgate status``.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.base import StoreBase, unit_of_work
from storage.db import is_postgres

TABLES = ("instance", "cluster_leader")  # migration 0004; no peewee models (SQL below)
LEADER_LOCK_KEY = 0x7461706C656164  # "taplead": apart from the migration lock's key
OWED_CHANNEL = "tapgate_owed"  # "a copy is owed": wakes the leader's outbox
HEARTBEAT_SECONDS = 1.0
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS

# The server's clock as the fixed-width text every Tapgate timestamp uses.
NOW = ("to_char(clock_timestamp() AT TIME ZONE 'UTC', "
       "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
ALIVE_SINCE = ("to_char((clock_timestamp() - make_interval(secs => %s)) AT TIME ZONE 'UTC', "
               "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")

TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
HEARTBEAT = (
    'INSERT INTO "instance" ("id", "host", "pid", "started_at", "heartbeat_at") '
    f"VALUES (%s, %s, %s, %s, {NOW}) "
    'ON CONFLICT ("id") DO UPDATE SET "heartbeat_at" = EXCLUDED."heartbeat_at" '
    # How many other instances are alive: a lone leader keeps answering Telegram
    # while the database is unreachable (bot.cluster).
    'RETURNING (SELECT count(*) FROM "instance" AS i WHERE i."id" <> %s AND '
    f'i."heartbeat_at" >= {ALIVE_SINCE.replace("%s", str(ALIVE_SECONDS))})')
TAKE_LEAD = (
    'INSERT INTO "cluster_leader" ("id", "epoch", "instance_id", "since") '
    f"VALUES (1, 1, %s, {NOW}) "
    'ON CONFLICT ("id") DO UPDATE SET "epoch" = "cluster_leader"."epoch" + 1, '
    '"instance_id" = EXCLUDED."instance_id", "since" = EXCLUDED."since" '
    'RETURNING "epoch", "since"')
MARK_LEADER = 'UPDATE "instance" SET "leader_since" = %s, "epoch" = %s WHERE "id" = %s'
CURRENT_EPOCH = 'SELECT "epoch" FROM "cluster_leader" WHERE "id" = 1'
STEP_DOWN = ('UPDATE "cluster_leader" SET "instance_id" = NULL '
             'WHERE "id" = 1 AND "epoch" = %s')
FORGET = 'DELETE FROM "instance" WHERE "id" = %s'
PRUNE = f'DELETE FROM "instance" WHERE "heartbeat_at" < {ALIVE_SINCE}'
PRUNE_AFTER = 24 * 3600.0  # rows of instances gone for a day are deleted at start


@dataclass(frozen=True)
class InstanceRow:
    id: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    leader_since: str | None
    epoch: int | None
    alive: bool


@dataclass(frozen=True)
class ClusterStatus:
    """Who leads (None: nobody alive holds the lead) and which instances are alive."""

    leader: InstanceRow | None
    leader_since: str | None
    epoch: int
    instances: list[InstanceRow]

    @property
    def instances_alive(self) -> int:
        return sum(1 for i in self.instances if i.alive)


class InstanceStore(StoreBase):
    """Cluster reads and hints of the Store (PostgreSQL; SQLite has one instance)."""

    @unit_of_work
    def cluster_status(self, alive_seconds: float = ALIVE_SECONDS) -> ClusterStatus:
        """The instances (alive ones first, oldest first) and the current leader."""
        if not is_postgres(self.db):
            return ClusterStatus(None, None, 0, [])
        rows = self.db.execute_sql(
            'SELECT "id", "host", "pid", "started_at", "heartbeat_at", "leader_since", '
            f'"epoch", "heartbeat_at" >= {ALIVE_SINCE} FROM "instance" '
            'ORDER BY 8 DESC, "started_at", "id"', (alive_seconds,)).fetchall()
        instances = [InstanceRow(*r[:7], alive=bool(r[7])) for r in rows]
        lead = self.db.execute_sql('SELECT "epoch", "instance_id", "since" FROM '
                                   '"cluster_leader" WHERE "id" = 1').fetchone()
        epoch, leader_id, since = lead if lead else (0, None, None)
        leader = next((i for i in instances if i.id == leader_id and i.alive), None)
        return ClusterStatus(leader, since if leader else None, epoch or 0, instances)

    @unit_of_work
    def notify_owed(self) -> None:
        """Tell the leader (LISTEN ``tapgate_owed``) that copies are owed: a request was
        made on this instance, which does not pay the outbox itself."""
        if is_postgres(self.db):
            self.db.execute_sql(f"SELECT pg_notify('{OWED_CHANNEL}', '')")
