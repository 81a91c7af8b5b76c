"""Who is at the other end of a Unix socket, and which uid a setting names.

Standard library only: the server, the clients, the hooks and ``tapgate doctor`` all
use it, and the hooks must start light.
"""

from __future__ import annotations

import pwd
import socket
import struct

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket
    (``SO_PEERCRED``: for a client, the process that called ``listen()``)."""
    return UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))


def uid_of(value: str) -> int:
    """A uid from digits or a user name; ValueError ``no user named ...`` otherwise."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f"no user named {value!r}") from None
