"""``tapgate status``: which instance leads and how many are alive, read from the database.

Works while the bots run or not (it reads the ``instance`` and ``cluster_leader``
tables on PostgreSQL, the lock file on SQLite). Exit code 0 when some instance
leads, 1 when none does.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import TYPE_CHECKING

from bot import places

if TYPE_CHECKING:  # the parser is built for every command, hooks included: import lazily
    from bot.config import Settings


def add_commands(sub) -> None:
    p = sub.add_parser("status", help="which instance leads, and how many are alive")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    report = status_report(settings)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    return 0 if report["leader"] is not None else 1


def status_report(settings: Settings) -> dict:
    from bot.cluster import status_fields
    from bot.sqlite_lock import holder

    db_file = places.sqlite_file(settings.database_url)
    if db_file is not None:
        pid = holder(db_file)
        lead = None if pid is None else {"host": socket.gethostname(), "pid": pid,
                                         "since": None}
        return {"database": "sqlite", "leader": lead, "instances_alive": int(pid is not None),
                "epoch": None, "instances": []}
    from storage.store import Store

    store = Store.from_url(settings.database_url, workers=1)
    try:
        store.check_schema()
        status = store.cluster_status()
    finally:
        store.close()
    return {"database": "postgresql", **status_fields(status), "epoch": status.epoch,
            "instances": [{"id": i.id, "host": i.host, "pid": i.pid,
                           "started_at": i.started_at, "heartbeat_at": i.heartbeat_at,
                           "alive": i.alive,
                           "leader": status.leader is not None and i.id == status.leader.id}
                          for i in status.instances]}


def render(report: dict) -> str:
    lead = report["leader"]
    lines = [f"database: {report['database']}"]
    if lead is None:
        lines.append("leader: none alive" if report["database"] == "postgresql"
                     else "leader: none (no tapgate run holds the SQLite database)")
    else:
        since = f", since {lead['since']}" if lead["since"] else ""
        epoch = f" (epoch {report['epoch']})" if report["epoch"] else ""
        lines.append(f"leader: {lead['host']} pid {lead['pid']}{since}{epoch}")
    lines.append(f"instances alive: {report['instances_alive']}")
    rows = report["instances"]
    if rows:
        lines.append(f"  {'HOST':<20} {'PID':>7}  {'STARTED':<27}  {'HEARTBEAT':<27}  STATE")
        for i in rows:
            state = "leader" if i["leader"] else ("alive" if i["alive"] else "gone")
            lines.append(f"  {i['host'][:20]:<20} {i['pid']:>7}  {i['started_at']:<27}  "
                         f"{i['heartbeat_at']:<27}  {state}")
    return "\n".join(lines) + "\n"
