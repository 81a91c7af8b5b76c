"""The socket API: aiohttp on a Unix socket, inside the bot's event loop.

Every request is checked against the peer's uid (SO_PEERCRED), bodies are
bounded (``client_max_size``), and one middleware turns every error —
Tapgate's hierarchy, pydantic's, aiohttp's, and anything unexpected — into
``{"error": {"code", "message", "details"}}``. Nothing answers a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import stat
import weakref
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from bot.api import routes_approvals, routes_ledger, routes_memory, routes_rules, routes_runs
from bot.api.openapi import build_openapi
from bot.api.routes_base import (
    API,
    CALLER,
    JSON,
    Api,
    Caller,
    Invalid,
    Route,
    api,
    error_response,
    respond,
)
from bot.api.schemas import MAX_BODY, Health
from bot.approvals import ApprovalManager
from bot.governance import Governance
from bot.peers import peer_credentials
from bot.pricing import Pricer
from storage.db import UNAVAILABLE, DatabaseFault, is_postgres
from storage.errors import AlreadyFinal, BudgetExceeded, TapgateError
from storage.store import Store

log = logging.getLogger("tapgate.api")

STATUS = {
    "bad_request": 400,
    "budget_exceeded": 402,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "validation_error": 422,
    "storage_error": 503,
}
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large"}


def _version() -> str:
    try:
        return importlib.metadata.version("tapgate")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = _version()


class SocketInUse(TapgateError):
    """The socket path is served by another process (or is not a socket)."""

    code = "socket_in_use"


# --- the two routes that are about the API itself ---------------------------------------------


async def health(request: web.Request) -> web.Response:
    ctx = api(request)
    pending = await ctx.store.run(ctx.store.count_approvals, "pending")
    cluster = request.app.get(CLUSTER)  # who leads, how many are alive (bot.cluster)
    extra = await cluster() if cluster is not None else {}
    return respond(Health(version=ctx.version, database=ctx.database, pending=pending,
                          **extra))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


OPENAPI = web.AppKey("tapgate_openapi", bytes)
CLUSTER = web.AppKey("tapgate_cluster", object)  # async () -> the cluster fields of Health
ROUTES: list[Route] = [
    *routes_approvals.ROUTES,
    *routes_runs.ROUTES,
    *routes_ledger.ROUTES,
    *routes_memory.ROUTES,
    *routes_rules.ROUTES,
    Route("GET", "/v1/health", health, "Liveness, version, backend and pending count", "meta",
          response=Health),
    Route("GET", "/v1/openapi.json", openapi, "This document", "meta"),
]


# --- errors and peers ----------------------------------------------------------------------------


# SO_PEERCRED gives the credentials the peer had when it connected: read them once per
# connection (keyed by its transport) and check them on every request.
_PEERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _peer_uid(request: web.Request) -> int | None:
    transport = request.transport
    if transport is None:
        return None
    uid = _PEERS.get(transport)
    if uid is None:
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        _pid, uid, _gid = peer_credentials(sock)
        _PEERS[transport] = uid
    return uid


def _tapgate_error(exc: TapgateError) -> web.Response:
    status = STATUS.get(exc.code)
    if status is None:
        log.error("unmapped error %s: %s", type(exc).__name__, exc)
        return error_response(500, "internal", "internal error")
    if status == 503:
        fault = exc.fault if isinstance(exc, DatabaseFault) else UNAVAILABLE
        if isinstance(exc, DatabaseFault):  # a known condition (outage, lock, full disk): one line
            log.warning("database %s: %s", fault.cause, exc)
        else:
            log.error("database error: %s", exc, exc_info=exc)
        # The driver's text stays in the log; the agent gets the cause and when to retry.
        return error_response(503, exc.code, fault.message, [{"cause": fault.cause}],
                              headers={"Retry-After": str(fault.retry_after)})
    details: list = list(getattr(exc, "details", []))
    if isinstance(exc, AlreadyFinal):
        details = [{"approval": exc.approval.model_dump(mode="json")}]
    elif isinstance(exc, BudgetExceeded):
        run = exc.run
        details = [{
            "run_id": run.id, "halt_reason": exc.reason, "status": run.status,
            **{k: getattr(run, k) for k in ("budget_tokens", "budget_dollars", "budget_loops",
                                            "budget_seconds", "usage_prompt_tokens",
                                            "usage_completion_tokens", "usage_dollars",
                                            "usage_loops")},
            "usage_tokens": run.usage_tokens,
        }]
    return error_response(status, exc.code, str(exc), details)


def build_app(store: Store, manager: ApprovalManager, allowed_uids: list[int],
              pricer: Pricer | None = None, max_body: int = MAX_BODY,
              governance: Governance | None = None,
              admin_uids: list[int] | None = None) -> web.Application:
    """The aiohttp application (no socket): used by :class:`SocketServer`, tests and bench.

    ``allowed_uids`` may connect at all; of them, ``admin_uids`` (default: all of
    them) may also write policies, change existing runs' budgets and policy, and
    cancel other callers' approvals and runs. The others are agents.
    """
    admins = frozenset(allowed_uids if admin_uids is None else admin_uids)
    allowed = frozenset(allowed_uids) | admins

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        try:
            uid = _peer_uid(request)
            if uid not in allowed:
                log.warning("refused a request from uid %s (allowed: %s): %s %s", uid,
                            sorted(allowed), request.method, request.path)
                return error_response(403, "forbidden",
                                      f"uid {uid} may not use this socket")
            request[CALLER] = Caller(uid, uid in admins)
            return await handler(request)
        except TapgateError as exc:
            return _tapgate_error(exc)
        except ValidationError as exc:  # a record built in a handler refused a value
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                       for e in errors]
            return _tapgate_error(Invalid(f"invalid request: {details[0]['msg']}", details))
        except web.HTTPException as exc:
            code = HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
            message = exc.reason
            if exc.status == 413:
                message = f"the request body is over {max_body:,} bytes"
            elif exc.status == 404:
                message = f"no route {request.method} {request.path}"
            elif exc.status == 405:
                message = f"{request.method} is not allowed on {request.path}"
            return error_response(exc.status, code, message)
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error")

    app = web.Application(client_max_size=max_body, middlewares=[guard])
    app[API] = Api(store, manager, pricer or Pricer(),
                   "postgresql" if is_postgres(store.db) else "sqlite", VERSION,
                   governance or Governance(store, manager))
    app[OPENAPI] = json.dumps(build_openapi(ROUTES, VERSION)).encode()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    return app


# --- the server --------------------------------------------------------------------------------


class SocketServer:
    """Serves the API on a Unix socket (mode 0600, or 0666 for other uids) inside the loop."""

    def __init__(self, path: Path | str, allowed_uids: list[int], store: Store,
                 manager: ApprovalManager, pricer: Pricer | None = None,
                 max_body: int = MAX_BODY, governance: Governance | None = None,
                 admin_uids: list[int] | None = None):
        self.path = Path(path)
        self.allowed_uids = list(dict.fromkeys([*allowed_uids, *(admin_uids or [])]))
        self.app = build_app(store, manager, self.allowed_uids, pricer, max_body, governance,
                             admin_uids)
        # The file mode only lets uids reach the uid check: 0600 when the bot's own uid is
        # the only one allowed, else 0666 (SO_PEERCRED decides who is served; the socket's
        # directory must be reachable by the agents' uids too).
        self.mode = 0o600 if set(self.allowed_uids) <= {os.getuid()} else 0o666
        self._runner: web.AppRunner | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        """Bind (replacing a stale socket file, refusing a live one) and serve."""
        sock = self._bind()
        # handler_cancellation: a client that goes away cancels its handler, so a
        # long-poll releases its waiter at once (changes are shielded, see finish()).
        runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                               shutdown_timeout=5.0)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            self._unlink()
            raise
        self._runner = runner
        log.info("socket API listening on %s (uids %s)", self.path, self.allowed_uids)

    async def stop(self) -> None:
        """Answer open long-polls, finish in-flight requests, close, unlink the socket."""
        if self._runner is None:
            return
        self.app[API].stop_polls()
        await asyncio.sleep(0)  # let the long-polls see it before connections close
        await self._runner.cleanup()
        self._runner = None
        self._unlink()

    def _bind(self) -> socket.socket:
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The mode of a Unix socket file comes from its inode before bind: no
            # window in which another user could connect, and no process-wide umask.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(str(self.path))
            os.chmod(self.path, self.mode)
            sock.listen(512)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SocketInUse(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        self._inode = os.stat(self.path).st_ino
        return sock

    def _clear_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise SocketInUse(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except OSError as exc:
            raise SocketInUse(f"cannot check {self.path}: {exc.strerror or exc}") from exc
        finally:
            probe.close()
        raise SocketInUse(f"another process is serving on {self.path}")

    def _unlink(self) -> None:
        # Only our own socket file: another server may have replaced it meanwhile.
        with contextlib.suppress(OSError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None
