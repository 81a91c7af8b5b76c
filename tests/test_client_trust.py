"""What the agents' client trusts: who serves the socket, and waiting across a restart.

A squatter is a stand-in server (standard library only, in a subprocess) that
answers "approved" to everything; started as uid 65534 it must be refused by the
sync and async clients and by ``tapgate request``, and accepted once that uid is
the expected one. Starting it as another uid needs root (the sandbox's CI runs as
root); those tests skip elsewhere. The restart tests run the real ``tapgate run``
(tests/botproc.py) against the fake Telegram, on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.client import AsyncTapgateClient, ClientError, ConnectionFailed, TapgateClient
from bot.client_transport import WrongServer
from storage.records import Approval
from tests.botproc import BotProcess
from tests.test_telegram import ALICE, CHAT_A, posted

ROOT = Path(__file__).resolve().parent.parent
OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.getuid() != 0,
                             reason="starting a server as another uid needs root")

# argv: socket path, uid to serve as, how many requests to answer 503 first, the JSON to
# answer after that. Imports happen before the uid is dropped: the interpreter may live
# where uid 65534 cannot read. listen() runs as that uid, which is what SO_PEERCRED reports.
STUB = r"""
import http.server, json, os, socketserver, sys, threading
path, uid, unavailable, answer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if uid != os.getuid():
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        global unavailable
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            busy, unavailable = unavailable > 0, max(0, unavailable - 1)
        if busy:
            status, body = 503, json.dumps({"error": {"code": "storage_error",
                "message": "the database is unavailable; try again", "details": []}})
        else:
            status, body = 200, answer
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

Server(path, Handler).serve_forever()
"""


def approval(status: str = "approved", expires_in: float = 3600.0) -> Approval:
    now = datetime.now(UTC)
    decided = status != "pending"
    return Approval(id="squat-1", agent="agent", kind="shell", summary="rm -rf /",
                    status=status, decided_by="telegram:1 (@squatter)" if decided else None,
                    decided_at=now if decided else None, created_at=now,
                    expires_at=now + timedelta(seconds=expires_in))


class Stub:
    """The stand-in server at ``path``, served as ``uid``: ``unavailable`` answers 503,
    then every request gets ``answer`` (200)."""

    def __init__(self, path: Path, uid: int, answer: Approval, unavailable: int = 0):
        self.path = path
        self._args = [str(path), str(uid), str(unavailable), answer.model_dump_json()]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Stub:
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", STUB, *self._args],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.proc.poll() is not None:
                raise AssertionError(f"the stub exited: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the stub did not listen on {self.path}")
            time.sleep(0.01)
        return self

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tgt", dir="/tmp"))  # AF_UNIX paths are short
    path.chmod(0o777)  # the squatter, as another uid, binds in it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def squatter(sock_dir) -> Iterator[Stub]:
    stub = Stub(sock_dir / "tapgate.sock", OTHER_UID, approval()).start()
    yield stub
    stub.stop()


def refused(error: ClientError, path: Path) -> None:
    assert isinstance(error, WrongServer)
    assert (error.status, error.code) == (0, "wrong_server_uid")
    assert str(path) in error.message
    assert f"uid {OTHER_UID}" in error.message and f"expected uid {os.getuid()}" in error.message


# --- who serves the socket -------------------------------------------------------------------


@as_root
def test_sync_client_refuses_a_squatter(squatter):
    with TapgateClient(squatter.path) as tg:
        with pytest.raises(WrongServer) as info:
            tg.request_approval("agent", "shell", "rm -rf /")
        refused(info.value, squatter.path)
        started = time.monotonic()
        with pytest.raises(WrongServer):  # not waited out like a restart
            tg.wait_for_decision(approval("pending"), timeout=30)
        assert time.monotonic() - started < 10


@as_root
async def test_async_client_refuses_a_squatter(squatter):
    async with AsyncTapgateClient(squatter.path) as tg:
        with pytest.raises(WrongServer) as info:
            await tg.request_approval("agent", "shell", "rm -rf /")
        refused(info.value, squatter.path)
        with pytest.raises(WrongServer):  # at once, not retried until the request expires
            await asyncio.wait_for(tg.wait_for_decision(approval("pending")), 10)


@as_root
async def test_the_expected_uid_is_accepted(squatter, monkeypatch):
    def sync_session(server_uid) -> Approval:
        with TapgateClient(squatter.path, server_uid=server_uid) as tg:
            return tg.wait_for_decision(tg.request_approval("agent", "shell", "ls"))

    assert (await asyncio.to_thread(sync_session, OTHER_UID)).status == "approved"
    name = pwd.getpwuid(OTHER_UID).pw_name
    async with AsyncTapgateClient(squatter.path, server_uid=name) as tg:
        assert (await tg.request_approval("agent", "shell", "ls")).status == "approved"
    monkeypatch.setenv("TAPGATE_SOCKET_SERVER_UID", str(OTHER_UID))
    assert (await asyncio.to_thread(sync_session, None)).status == "approved"
    monkeypatch.setenv("TAPGATE_SOCKET_SERVER_UID", "no-such-user-here")
    with pytest.raises(ClientError, match="TAPGATE_SOCKET_SERVER_UID: no user named"):
        TapgateClient(squatter.path)


def tapgate_request(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environment.update(PYTHONPATH=str(ROOT), TAPGATE_SOCKET_PATH=str(path), **env)
    return subprocess.run(
        [sys.executable, "-m", "bot", "request", "--kind", "shell", "--summary", "rm -rf /",
         *args], env=environment, cwd=path.parent, capture_output=True, text=True, timeout=60)


@as_root
def test_cli_refuses_a_squatter(squatter):
    done = tapgate_request(squatter.path, "--wait")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("wrong_server_uid: refusing tapgate at ")
    assert f"served by uid {OTHER_UID}" in done.stderr

    done = tapgate_request(squatter.path, "--wait", TAPGATE_SOCKET_SERVER_UID=str(OTHER_UID))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "approved"


# --- riding out an unavailable bot (no bot process) ------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_wait_retries_while_the_server_answers_503(sock_dir, flavour):
    stub = Stub(sock_dir / "tapgate.sock", os.getuid(), approval(), unavailable=3).start()
    try:
        if flavour == "sync":
            def wait() -> Approval:
                with TapgateClient(stub.path) as tg:
                    return tg.wait_for_decision(approval("pending"), timeout=30)

            decided = await asyncio.to_thread(wait)
        else:
            async with AsyncTapgateClient(stub.path) as tg:
                decided = await tg.wait_for_decision(approval("pending"), timeout=30)
        assert decided.status == "approved"
    finally:
        stub.stop()


async def test_wait_gives_up_at_its_timeout_or_the_expiry(sock_dir):
    path = sock_dir / "nothing.sock"
    async with AsyncTapgateClient(path) as tg:
        with pytest.raises(ConnectionFailed, match=r"gave up waiting for squat-1 after 0.3s"):
            await tg.wait_for_decision(approval("pending"), timeout=0.3)
        with pytest.raises(ConnectionFailed, match=r"squat-1: it expired at .* meanwhile"):
            await tg.wait_for_decision(approval("pending", expires_in=0.3))
        # Given only an id and no timeout, nothing bounds the retries: raised at once.
        with pytest.raises(ConnectionFailed) as info:
            await tg.wait_for_decision("squat-1")
        assert "gave up" not in str(info.value)

    def sync_wait() -> None:
        with TapgateClient(path) as tg:
            tg.wait_for_decision(approval("pending"), timeout=0.3)

    with pytest.raises(ConnectionFailed, match=r"nothing is listening.*; gave up waiting"):
        await asyncio.to_thread(sync_wait)


# --- waiting across a restart of the real bot ------------------------------------------------


@pytest.fixture
def db_file(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tapgate.db'}"


async def cli_request(sock: Path, *args: str) -> asyncio.subprocess.Process:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    environment.update(PYTHONPATH=str(ROOT), TAPGATE_SOCKET_PATH=str(sock))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "request", "--kind", "shell", *args, env=environment,
        cwd=sock.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def sent(fake, summary: str) -> tuple[int, int]:
    """(chat id, message id) of the first copy of the request ``summary`` posted."""
    call = await fake.wait_for("sendMessage", lambda c: summary in c.params["text"], timeout=30)
    return int(call.params["chat_id"]), call.response["result"]["message_id"]


@contextlib.asynccontextmanager
async def reaped(proc: asyncio.subprocess.Process):
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_cli_wait_survives_a_restart_of_the_bot(fake, db_file, sock_dir):
    sock = sock_dir / "tapgate.sock"
    async with BotProcess(fake, db_file, socket_path=sock) as first:
        proc = await cli_request(sock, "--summary", "across a restart", "--wait")
        async with reaped(proc):
            chat, message_id = await sent(fake, "across a restart")
            await first.stop()  # SIGTERM: the open long-poll is answered, the socket removed
            async with BotProcess(fake, db_file, socket_path=sock):
                fake.tap(chat, message_id, ALICE, button_text="✅ Approve")
                out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    decided = json.loads(out)
    assert decided["status"] == "approved" and decided["summary"] == "across a restart"


async def test_python_clients_wait_survives_a_restart_of_the_bot(fake, db_file, sock_dir):
    sock = sock_dir / "tapgate.sock"

    def sync_wait(request: Approval) -> Approval:
        with TapgateClient(sock) as tg:
            return tg.wait_for_decision(request, timeout=60)

    async with BotProcess(fake, db_file, socket_path=sock) as first:
        async with AsyncTapgateClient(sock) as tg:
            one = await tg.request_approval("agent", "shell", "sync across a restart")
            two = await tg.request_approval("agent", "shell", "async across a restart")
        sync_waiting = asyncio.create_task(asyncio.to_thread(sync_wait, one))
        async with AsyncTapgateClient(sock) as tg:
            async_waiting = asyncio.create_task(tg.wait_for_decision(two))
            messages = [await posted(fake, CHAT_A, one.id), await posted(fake, CHAT_A, two.id)]
            await first.stop()
            async with BotProcess(fake, db_file, socket_path=sock):
                for msg in messages:
                    fake.tap(CHAT_A, msg.message_id, ALICE, button_text="✅ Approve")
                decided = await asyncio.wait_for(
                    asyncio.gather(sync_waiting, async_waiting), 60)
    assert [(a.id, a.status) for a in decided] == [(one.id, "approved"), (two.id, "approved")]


async def test_bare_wait_gives_up_when_the_request_expires_with_the_bot_down(
        fake, db_file, sock_dir):
    sock = sock_dir / "tapgate.sock"
    async with BotProcess(fake, db_file, socket_path=sock) as bot:
        proc = await cli_request(sock, "--summary", "bot goes away", "--ttl", "5s", "--wait")
        async with reaped(proc):
            await sent(fake, "bot goes away")
            await bot.stop()
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and out == b""
    message = err.decode()
    assert message.count("\n") == 1, message
    assert message.startswith("connection_error: cannot reach tapgate at ")
    assert "it expired at" in message and "meanwhile" in message
