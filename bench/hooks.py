"""The hook's overhead: from starting ``tapgate hook <agent>`` (event written to its stdin)
to the request being posted at the (fake) Telegram.

A real ``tapgate run`` (tests/botproc.py) serves the fake Bot API of this process; each
of N runs spawns ``python -m bot hook <agent>`` with a Bash call on stdin, times until
the fake records the request's ``sendMessage`` (``time.monotonic()``, one clock for
every process on Linux), then taps Approve and times until the hook has printed its
answer. Baselines in the same run: spawning a bare interpreter, and importing the
command line (``import bot.cli``), which every hook pays before it reads stdin.

    python -P bench/hooks.py [--runs 100] [--agent claude-code]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PTB_TIMEDELTA", "1")

from storage.store import Store  # noqa: E402
from tests.botproc import BotProcess  # noqa: E402
from tests.fake_telegram import FakeTelegram, User  # noqa: E402

ALICE = User(1001, "alice", "Alice")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def event(agent: str, command: str, i: int) -> bytes:
    name = "run_shell_command" if agent == "gemini" else "Bash"
    hook_event = {"claude-code": "PreToolUse", "codex": "PermissionRequest",
                  "gemini": "BeforeTool"}[agent]
    return json.dumps({"session_id": "bench", "cwd": str(ROOT), "hook_event_name": hook_event,
                       "transcript_path": "/tmp/bench.jsonl", "tool_name": name,
                       "tool_input": {"command": command}, "tool_use_id": f"toolu_{i}"}).encode()


async def spawn(env: dict[str, str], *args: str, stdin: bytes | None = None
                ) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=tempfile.gettempdir(), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    proc.stdin.write(stdin or b"")
    await proc.stdin.drain()
    proc.stdin.close()
    return proc


async def baseline(env: dict[str, str], args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        proc = await spawn(env, *args)
        await proc.communicate()
        times.append((time.monotonic() - t0) * 1000)
    return times


async def bench(runs: int, agent: str) -> dict[str, list[float]]:
    db = Path(tempfile.mkdtemp(prefix="tgb-")) / "tapgate.db"
    url = f"sqlite:///{db}"
    Store.from_url(url).migrate()
    async with FakeTelegram(callback_query_ttl=3600) as fake, BotProcess(fake, url) as bot:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
        env["TAPGATE_SOCKET_PATH"] = str(bot.socket_path)
        results: dict[str, list[float]] = {
            "python -c pass (spawn to exit)": await baseline(env, ["-c", "pass"], 20),
            "import bot.cli (spawn to exit)": await baseline(env, ["-c", "import bot.cli"], 20),
            "hook: stdin to request posted": [], "hook: tap to answer printed": []}
        for i in range(runs):
            command = f"make bench-{i}"
            t0 = time.monotonic()
            proc = await spawn(env, "-m", "bot", "hook", agent, stdin=event(agent, command, i))
            call = await fake.wait_for("sendMessage", lambda c, s=command: int(
                c.params["chat_id"]) == ALICE.id and s in c.params["text"], timeout=60)
            results["hook: stdin to request posted"].append((call.at - t0) * 1000)
            tapped = time.monotonic()
            fake.tap(ALICE.id, call.response["result"]["message_id"], ALICE,
                     button_text="✅ Approve")
            out, err = await proc.communicate()
            results["hook: tap to answer printed"].append((time.monotonic() - tapped) * 1000)
            if proc.returncode != 0 or b'"allow"' not in out:
                raise SystemExit(f"run {i}: unexpected answer {out!r} {err!r}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--agent", choices=("claude-code", "codex", "gemini"),
                        default="claude-code")
    args = parser.parse_args()
    results = asyncio.run(bench(args.runs, args.agent))
    print(f"{args.runs} runs, agent {args.agent}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    for name, values in results.items():
        print(f"{name:34} p50 {statistics.median(values):7.1f} ms   p99 {pct(values, 99):7.1f}"
              f" ms   min {min(values):7.1f} ms")


if __name__ == "__main__":
    main()
