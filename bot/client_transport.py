"""The clients' socket transport: who serves the socket is checked on every connection.

A Unix socket path in a shared directory can be bound by whoever gets there first.
A process that squats the path could answer "approved" to every request, so right
after connecting the client reads the server's credentials (``SO_PEERCRED``: the
uid of the process that called ``listen()``) and refuses any uid but the expected
one: :class:`WrongServer`, never retried. The expected uid is the ``server_uid``
given to the client (a uid or a user name), else ``$TAPGATE_SOCKET_SERVER_UID``,
else the client's own uid.

Imports only httpx/httpcore and the clients' errors: no server dependencies.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import httpcore
import httpx

from bot.client_calls import ClientError
from bot.peers import peer_credentials, uid_of

SERVER_UID_ENV = "TAPGATE_SOCKET_SERVER_UID"


class WrongServer(ClientError):
    """The socket is served by another uid than the expected one; nothing was sent."""

    def __init__(self, socket_path: str, found_uid: int, expected_uid: int, pid: int):
        self.socket_path = socket_path
        self.found_uid = found_uid
        self.expected_uid = expected_uid
        super().__init__(
            0, "wrong_server_uid",
            f"refusing tapgate at {socket_path}: the socket is served by uid {found_uid} "
            f"(pid {pid}), expected uid {expected_uid} (set {SERVER_UID_ENV} if the bot "
            "runs as another user)")


def resolve_server_uid(server_uid: int | str | None = None) -> int:
    """The uid that must serve the socket: ``server_uid`` (a uid, or a user name looked
    up with :mod:`pwd`), else ``$TAPGATE_SOCKET_SERVER_UID``, else the caller's own uid."""
    source = "server_uid"
    if server_uid is None or server_uid == "":
        server_uid = os.environ.get(SERVER_UID_ENV, "").strip()
        source = SERVER_UID_ENV
        if not server_uid:
            return os.getuid()
    if isinstance(server_uid, int):
        uid = server_uid
    else:
        try:
            uid = uid_of(server_uid)
        except ValueError as exc:
            raise ClientError(0, "invalid_setting", f"{source}: {exc}") from None
    if uid < 0:
        raise ClientError(0, "invalid_setting", f"{source}: {uid} is not a uid")
    return uid


def check_server(sock: Any, socket_path: str, expected_uid: int) -> None:
    """Raise :class:`WrongServer` unless ``expected_uid`` serves the connected ``sock``."""
    pid, uid, _gid = peer_credentials(sock)
    if uid != expected_uid:
        raise WrongServer(socket_path, uid, expected_uid, pid)


class _CheckedSyncBackend(httpcore.SyncBackend):
    """httpcore's sync backend, checking the server's uid on every new connection.

    It also closes the socket of a failed connect: httpcore 1.0 leaves that to the
    garbage collector (a ResourceWarning on every "tapgate is not running").
    """

    def __init__(self, expected_uid: int):
        super().__init__()
        self.expected_uid = expected_uid

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        from httpcore._backends.sync import SyncStream

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
            check_server(sock, path, self.expected_uid)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            sock.close()
            raise
        return SyncStream(sock)


class _CheckedAsyncBackend(httpcore.AnyIOBackend):
    """httpcore's anyio backend (asyncio or trio), checking the server's uid on every
    new connection before anything is sent on it."""

    def __init__(self, expected_uid: int):
        super().__init__()
        self.expected_uid = expected_uid

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_unix_socket(path, timeout, socket_options)
        try:
            check_server(stream.get_extra_info("socket"), path, self.expected_uid)
        except BaseException:
            await stream.aclose()
            raise
        return stream


def _install(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport,
             backend: httpcore.NetworkBackend | httpcore.AsyncNetworkBackend) -> None:
    # httpx offers no way to hand httpcore a network backend: its pool's attribute
    # is the one place. Without it the server's uid would go unchecked, so a
    # changed httpx fails loudly here instead of silently trusting the socket.
    pool = getattr(transport, "_pool", None)
    if not hasattr(pool, "_network_backend"):
        raise RuntimeError(f"httpx {httpx.__version__}: cannot install the socket's "
                           "server-uid check (its transport changed)")
    pool._network_backend = backend


def sync_transport(path: str, expected_uid: int) -> httpx.HTTPTransport:
    """An httpx transport over the Unix socket ``path`` served by ``expected_uid`` only."""
    transport = httpx.HTTPTransport(uds=path, verify=False)  # plain HTTP on a Unix socket: skip the CA bundle (~0.15 s)
    _install(transport, _CheckedSyncBackend(expected_uid))
    return transport


def async_transport(path: str, expected_uid: int) -> httpx.AsyncHTTPTransport:
    """The async counterpart of :func:`sync_transport`."""
    transport = httpx.AsyncHTTPTransport(uds=path, verify=False)  # no TLS here either
    _install(transport, _CheckedAsyncBackend(expected_uid))
    return transport
