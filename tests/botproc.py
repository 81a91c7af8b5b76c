"""``tapgate run`` as a real subprocess, against the fake Telegram of the test.

Defects in the wiring (signal handling, logging, the update loop, reconnects)
only show in the real process, so the trust tests attack it through this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.fake_telegram import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent


def bot_env(fake: FakeTelegram, db_url: str, socket_path: Path, **extra: Any) -> dict[str, str]:
    """The environment of a ``tapgate`` process pointed at ``fake`` (no inherited TAPGATE_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env.update(
        TAPGATE_TELEGRAM_TOKEN=fake.token,
        TAPGATE_TELEGRAM_API_URL=fake.url,
        TAPGATE_APPROVER_CHAT_IDS="1001,1002",
        TAPGATE_APPROVER_USER_IDS="1001,1002",
        TAPGATE_DATABASE_URL=db_url,
        TAPGATE_SOCKET_PATH=str(socket_path),
        TAPGATE_EXPIRY_INTERVAL="1s",
        PTB_TIMEDELTA="1",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"TAPGATE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class BotProcess:
    """One ``python -m bot run`` subprocess; its stderr goes to ``log_path``.

    ``await start()`` returns once the socket answers ``/v1/health`` and the
    fake sees a long poll; ``stop()`` sends SIGTERM, ``kill()`` SIGKILL.
    """

    def __init__(self, fake: FakeTelegram, db_url: str, socket_path: Path | None = None,
                 **settings: Any):
        self.fake = fake
        self.db_url = db_url
        self._dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="tgp-"))  # AF_UNIX paths are short
        self.socket_path = socket_path or self._dir / "tapgate.sock"
        self.log_path = self._dir / "bot.log"
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self._log = None

    @property
    def env(self) -> dict[str, str]:
        return bot_env(self.fake, self.db_url, self.socket_path, **self.settings)

    async def start(self, timeout: float = 60.0, wait_polling: bool = True) -> BotProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop/kill)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=ROOT, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        try:
            await self.wait_healthy(timeout)
            if wait_polling:
                await self.fake.wait_polling(timeout=timeout)
        except BaseException:
            await self.kill()
            raise
        return self

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"tapgate run exited with {self.proc.returncode}:\n"
                                     + self.log())
            if await self.healthy():
                return
            if loop.time() > deadline:
                raise AssertionError("tapgate run did not become healthy:\n" + self.log())
            await asyncio.sleep(0.05)

    async def healthy(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(
                    uds=str(self.socket_path)), base_url="http://tapgate", timeout=5) as c:
                return (await c.get("/v1/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self._finish()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self._finish()

    async def kill(self) -> int | None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        return self._finish()

    def _finish(self) -> int | None:
        if self._log is not None:
            self._log.close()
            self._log = None
        return None if self.proc is None else self.proc.returncode

    async def __aenter__(self) -> BotProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        with contextlib.suppress(OSError):
            for path in sorted(self._dir.rglob("*"), reverse=True):
                path.unlink() if not path.is_dir() else path.rmdir()
            self._dir.rmdir()
