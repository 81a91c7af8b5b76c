"""Benchmark a submit that a rule approves against a plain submit, over the socket.

Run with ``python bench/rules.py [--seconds 5] [--connections 8] [--rounds 3]
[--other-rules 20] [--postgres URL]``. SQLite always (a temp file); PostgreSQL too when
``--postgres`` names a server (a fresh database is created there and dropped at the end).

The server side is :mod:`bench.api`'s: the Store, an ApprovalManager whose listener
queues every new request for simulated Telegram workers, and the SocketServer, in this
process; the load comes from a child process (aiohttp, keep-alive connections). One rule
(agent ``bench``, kind ``shell``, ``git status*``) sits behind ``--other-rules`` rules of
the same agent and kind that match nothing, so every submit looks them all up. Each
round measures both, in turn:

- plain: ``rm -rf build/`` — no rule matches; a pending request, and its Telegram copies
  owed;
- ruled: ``git status -s`` — created already approved in the same transaction
  (``decided_by = rule:<id>``), the rule's use counted, no copies owed.

Goal: a submit that a rule approves is no slower than a plain submit.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path: drop it before anything imports
# the standard library's modules, and put the project root there instead.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.api import CONNECTIONS, drive  # noqa: E402
from bench.scratch import scratch_database  # noqa: E402
from bot.api.server import SocketServer  # noqa: E402
from bot.approvals import ApprovalManager  # noqa: E402
from bot.pricing import Pricer  # noqa: E402
from storage.rule_records import NewRule  # noqa: E402
from storage.store import Store  # noqa: E402

PLAIN = {"agent": "bench", "kind": "shell", "summary": "rm -rf build/",
         "payload": {"command": "rm -rf build/", "cwd": "/srv/app"}}
RULED = {"agent": "bench", "kind": "shell", "summary": "git status -s",
         "payload": {"command": "git status -s", "cwd": "/srv/app"}}


async def bench(store: Store, backend: str, args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tgrules", dir="/tmp"))
    store.migrate()
    manager = ApprovalManager(store, chat_ids=[1001, 1002])
    outbox: asyncio.Queue = asyncio.Queue()

    async def telegram_worker() -> None:  # the notifier's pace: a Bot API round trip each
        while True:
            await outbox.get()
            await asyncio.sleep(0.03)

    def listener(approval, created: bool) -> None:
        if created and approval.status == "pending":
            outbox.put_nowait(approval)

    workers = [asyncio.create_task(telegram_worker()) for _ in range(4)]
    manager.subscribe(listener)
    for i in range(args.other_rules):
        store.create_rule(NewRule(agent="bench", kind="shell", match=f"make target-{i} *",
                                  created_by="bench"))
    rule = store.create_rule(NewRule(agent="bench", kind="shell", match="git status*",
                                     created_by="telegram:1 (@bench)"))
    server = SocketServer(tmp / "api.sock", [os.getuid()], store, manager, Pricer())
    await server.start()
    try:
        from bot.service import tune_gc

        tune_gc()  # what `tapgate run` does after start-up
    except ImportError:
        pass
    loop = asyncio.get_running_loop()
    sock = str(tmp / "api.sock")
    rates: dict[str, list[float]] = {"plain": [], "ruled": []}
    failures = 0
    try:
        probe, _ = await manager.submit(**{k: v for k, v in RULED.items()})
        assert probe.status == "approved" and probe.decided_by.startswith(f"rule:{rule.id}")
        plain, _ = await manager.submit(**PLAIN)
        assert plain.status == "pending"
        for _ in range(args.rounds):
            for name, body in (("plain", PLAIN), ("ruled", RULED)):
                ok, failed, elapsed = await loop.run_in_executor(
                    None, drive, sock, "POST", "/v1/approvals", json.dumps(body).encode(),
                    args.seconds, args.connections)
                rates[name].append(ok / elapsed)
                failures += failed
        uses = store.get_rule(rule.id).uses
    finally:
        for worker in workers:
            worker.cancel()
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    plain_rate, ruled_rate = (statistics.median(rates[k]) for k in ("plain", "ruled"))
    print(f"{backend}: plain {', '.join(f'{r:,.0f}' for r in rates['plain'])}/s; "
          f"ruled {', '.join(f'{r:,.0f}' for r in rates['ruled'])}/s; rule uses {uses:,}"
          + (f"; {failures} failed" if failures else ""))
    return {"backend": backend, "plain": plain_rate, "ruled": ruled_rate,
            "ratio": ruled_rate / plain_rate if plain_rate else 0.0}


async def main(args: argparse.Namespace) -> None:
    results = []
    print(f"{args.seconds:g} s per measurement, {args.rounds} rounds, {args.connections} "
          f"connections, {os.cpu_count()} cores, {args.other_rules} other rules of the agent")
    directory = Path(tempfile.mkdtemp(prefix="tgrules-db"))
    store = Store.from_url(f"sqlite:///{directory / 'bench.db'}")
    try:
        results.append(await bench(store, "sqlite", args))
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
    if args.postgres:
        with scratch_database(args.postgres) as url:
            store = Store.from_url(url)
            try:
                results.append(await bench(store, "postgresql", args))
            finally:
                store.close()
    print()
    print("submits per second over the socket (median of the rounds)")
    for r in results:
        verdict = "met" if r["ratio"] >= 0.95 else "MISSED"
        print(f"  {r['backend']:<10} plain {r['plain']:>7,.0f}/s   rule-approved "
              f"{r['ruled']:>7,.0f}/s   = {r['ratio']:.0%} of plain (goal: no slower) {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other-rules", type=int, default=20,
                        help="rules of the same agent and kind that match nothing")
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL (a server URL; a fresh database is used)")
    asyncio.run(main(parser.parse_args()))
