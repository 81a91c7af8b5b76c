"""Benchmark the socket API against a bare aiohttp endpoint on the same kind of socket.

Run with ``python bench/api.py [--seconds 5] [--connections 8] [--default-gc]``.
By default the server side is tuned as ``tapgate run`` tunes it after start-up
(``gc.freeze()`` and a larger first-generation threshold): a ledger list of
2,000 entries creates tens of thousands of short-lived objects, and the
default collector spends a fifth of the server's time rescanning them.

The server side runs in this process, as in ``tapgate run``: a Store on a
temporary SQLite file, an ApprovalManager whose listener simulates Telegram
posting asynchronously (so posting never blocks acceptance), and the
SocketServer. Beside it, a bare aiohttp app answers ``200 {}`` on another
Unix socket: the baseline. The load comes from a separate process (aiohttp's
UnixConnector, several keep-alive connections), the same client for both
targets, so the server's event loop has a core of its own.

Goals on a 2-core box: >= 1,000 submissions/s and >= half the bare rate;
>= 3,000 single ledger appends/s; >= 50,000 ledger rows/s in lists of 2,000.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path: drop it before anything imports
# the standard library's socket module, and put the project root there instead.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from aiohttp import ClientSession, UnixConnector, web  # noqa: E402

from bot.api.server import SocketServer  # noqa: E402
from bot.approvals import ApprovalManager  # noqa: E402
from bot.pricing import Pricer  # noqa: E402
from bot.service import tune_gc  # noqa: E402
from storage.store import Store  # noqa: E402

CONNECTIONS = 8
LIST_SIZE = 2000
APPROVAL = {"agent": "bench", "kind": "shell", "summary": "rm -rf build/",
            "payload": {"cmd": "rm -rf build/", "cwd": "/srv/app"}}


def ledger_entry(i: int) -> dict:
    return {"run_id": "bench", "step_index": i % 50, "provider": "openai", "model": "gpt-4o",
            "prompt_tokens": 1200 + i % 100, "completion_tokens": 300, "cached_tokens": 200}


# --- the load (runs in a child process) ----------------------------------------------------------


async def _drive(sock: str, method: str, path: str, body: bytes, seconds: float,
                 connections: int) -> tuple[int, int, float]:
    """Requests answered (2xx) and failed by ``connections`` sequential loops."""
    connector = UnixConnector(path=sock, limit=connections)
    headers = {"Content-Type": "application/json"}
    ok = failed = 0
    async with ClientSession(connector=connector, base_url="http://tapgate") as session:
        async def loop(deadline: float) -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                async with session.request(method, path, data=body, headers=headers) as r:
                    await r.read()
                    if r.status < 300:
                        ok += 1
                    else:
                        failed += 1
        warm = time.perf_counter() + min(0.5, seconds / 5)
        await asyncio.gather(*(loop(warm) for _ in range(connections)))
        ok = failed = 0
        start = time.perf_counter()
        await asyncio.gather(*(loop(start + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return ok, failed, elapsed


def _child(args: tuple, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_drive(*args)))


def drive(sock: str, method: str, path: str, body: bytes, seconds: float,
          connections: int = CONNECTIONS) -> tuple[int, int, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child,
                       args=((sock, method, path, body, seconds, connections), out))
    proc.start()
    result = out.get()
    proc.join()
    return result


# --- the servers (this process) ------------------------------------------------------------------


async def bare_endpoint(sock: str) -> web.AppRunner:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    return runner


async def main(seconds: float, connections: int = CONNECTIONS, tuned_gc: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tgbench", dir="/tmp"))
    store = Store.from_url(f"sqlite:///{tmp / 'bench.db'}")
    store.migrate()
    manager = ApprovalManager(store, chat_ids=[])
    # The notifier's shape: the listener only queues (never blocks acceptance); a few
    # workers "post" to Telegram at its pace (a Bot API round trip each).
    outbox: asyncio.Queue = asyncio.Queue()
    posted = 0

    async def telegram_worker() -> None:
        nonlocal posted
        while True:
            await outbox.get()
            await asyncio.sleep(0.03)
            posted += 1

    def listener(approval, created: bool) -> None:
        if created:
            outbox.put_nowait(approval)

    workers = [asyncio.create_task(telegram_worker()) for _ in range(4)]
    manager.subscribe(listener)
    server = SocketServer(tmp / "api.sock", [os.getuid()], store, manager, Pricer())
    await server.start()
    bare = await bare_endpoint(str(tmp / "bare.sock"))
    if tuned_gc:
        tune_gc()  # what `tapgate run` does after start-up
    await store.run(store.upsert_run, _bench_run())
    loop = asyncio.get_running_loop()

    async def measure(sock: Path, method: str, path: str, body: bytes,
                      conns: int = connections) -> tuple[float, int]:
        ok, failed, elapsed = await loop.run_in_executor(
            None, drive, str(sock), method, path, body, seconds, conns)
        return ok / elapsed, failed

    try:
        approval = json.dumps(APPROVAL).encode()
        one = json.dumps(ledger_entry(0)).encode()
        many = json.dumps([ledger_entry(i) for i in range(LIST_SIZE)]).encode()
        print(f"{seconds:g} s per measurement, {connections} connections, "
              f"{os.cpu_count()} cores, {'tuned' if tuned_gc else 'default'} GC")

        base, _ = await measure(tmp / "bare.sock", "POST", "/v1/approvals", approval)
        subs, failed = await measure(tmp / "api.sock", "POST", "/v1/approvals", approval)
        _report("submissions (POST /v1/approvals)", subs, base, failed, 1000)

        base1, _ = await measure(tmp / "bare.sock", "POST", "/v1/ledger", one)
        single, failed = await measure(tmp / "api.sock", "POST", "/v1/ledger", one)
        _report("single ledger appends (POST /v1/ledger)", single, base1, failed, 3000)

        lists, failed = await measure(tmp / "api.sock", "POST", "/v1/ledger", many, 2)
        rows = lists * LIST_SIZE
        print(f"ledger lists of {LIST_SIZE:,} (2 connections): {lists:,.1f} lists/s = "
              f"{rows:,.0f} rows/s (goal >= 50,000){'' if rows >= 50000 else '  MISSED'}"
              + (f"  [{failed} failed]" if failed else ""))
        print(f"simulated Telegram posts: {posted:,} sent, {outbox.qsize():,} still queued "
              "(posting never held up acceptance)")
    finally:
        for worker in workers:
            worker.cancel()
        await server.stop()
        await bare.cleanup()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _bench_run():
    from storage.records import RunUpsert

    return RunUpsert(id="bench", name="bench")


def _report(label: str, rate: float, base: float, failed: int, goal: float) -> None:
    ratio = rate / base if base else 0.0
    met = rate >= goal and (ratio >= 0.5 or goal != 1000)
    print(f"{label}: {rate:,.0f}/s vs bare endpoint {base:,.0f}/s = {ratio:.0%} "
          f"(goal >= {goal:,.0f}/s{' and >= 50%' if goal == 1000 else ''})"
          f"{'' if met else '  MISSED'}" + (f"  [{failed} failed]" if failed else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--default-gc", action="store_true",
                        help="skip the GC tuning `tapgate run` applies")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.connections, not args.default_gc))
