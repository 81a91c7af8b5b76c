"""Several instances on one PostgreSQL database: heartbeats and the leader's epoch.

- ``instance``: one row per running ``tapgate run`` (``id`` is random per start), its
  host and pid, when it started, its last heartbeat (every second, server time on
  PostgreSQL), and while it leads, since when and under which epoch.
- ``cluster_leader``: a single row (``id = 1``). Whoever takes the leadership lock
  (``pg_try_advisory_lock``) increments ``epoch`` and writes its instance id: the
  epoch fences every outbox payment (:mod:`bot.cluster`).

SQLite is single-instance (a lock file next to the database): the tables exist
there too, so the schema is the same on both backends, and stay empty.
"""

from peewee import BigIntegerField, CharField, IntegerField, Model


def _ts(**kwargs):
    return CharField(max_length=27, **kwargs)


def up(migrator, db):
    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Instance(Base):
        id = CharField(primary_key=True, max_length=64)
        host = CharField(max_length=255)
        pid = IntegerField()
        started_at = _ts()
        heartbeat_at = _ts()
        leader_since = _ts(null=True)
        epoch = BigIntegerField(null=True)

        class Meta:
            table_name = "instance"

    class ClusterLeader(Base):
        id = IntegerField(primary_key=True)
        epoch = BigIntegerField(default=0)
        instance_id = CharField(max_length=64, null=True)
        since = _ts(null=True)

        class Meta:
            table_name = "cluster_leader"

    db.create_tables([Instance, ClusterLeader])
    db.execute_sql('INSERT INTO "cluster_leader" ("id", "epoch") VALUES (1, 0)')
