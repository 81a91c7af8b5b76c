"""HTTP/1.1 to the bot's socket with the standard library only, for the hooks.

``bot.client`` costs httpx (which loads rich), an SSL context and every wire model
at start-up: more than the rest of a hook. The calls a hook makes before its request
is posted go through :class:`LightSocket` instead, with the client transport's
check: the socket must be served by ``server_uid`` (``SO_PEERCRED``), else nothing
is sent.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from bot.peers import peer_credentials


class SocketError(Exception):
    """The bot answered an error (``status`` > 0) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class LightSocket(http.client.HTTPConnection):
    """HTTP/1.1 to the bot's socket, standard library only.

    ``bot.client`` costs httpx (which loads rich), an SSL context and every wire model
    at start-up: more than the rest of the hook. The calls made before the request is
    posted go through this instead, with the client transport's check: the socket must
    be served by ``server_uid`` (``SO_PEERCRED``), else nothing is sent.
    """

    def __init__(self, path: str, server_uid: int, timeout: float = 30.0):
        super().__init__("tapgate", timeout=timeout)
        self.path, self.server_uid = path, server_uid

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            pid, uid, _ = peer_credentials(sock)
        except OSError as exc:
            sock.close()
            why = ("nothing is listening (is `tapgate run` running?)"
                   if isinstance(exc, FileNotFoundError | ConnectionRefusedError)
                   else exc.strerror or type(exc).__name__)
            raise SocketError(0, f"cannot reach tapgate at {self.path}: {why}") from None
        if uid != self.server_uid:
            sock.close()
            raise SocketError(0, f"refusing tapgate at {self.path}: served by uid {uid} "
                                 f"(pid {pid}), expected uid {self.server_uid}")
        self.sock = sock

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one call; :class:`SocketError` for an error or no answer."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        try:
            self.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            response = self.getresponse()
            raw = response.read()
        except OSError as exc:
            raise SocketError(0, f"tapgate at {self.path} did not answer: {exc}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if response.status >= 400 or answer is None:
            error = answer.get("error") if isinstance(answer, dict) else None
            text = (f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict)
                    else raw[:200].decode(errors="replace"))
            raise SocketError(response.status, f"tapgate answered {response.status} {text}")
        return answer
