"""The two settings a client needs — the socket and the uid that must serve it — read
without pydantic-settings.

A hook runs before every tool call of an agent, and importing pydantic-settings
(and python-dotenv) costs a hook about half its time budget. Clients need only
``TAPGATE_SOCKET_PATH`` and ``TAPGATE_SOCKET_SERVER_UID``, read with the same
precedence as :func:`bot.config.load_settings`: the environment, else the settings
file (``--env-file``, else ``./bot.env``, else ``~/.config/tapgate/bot.env``), else
the well-known default. The file is read as ``KEY=VALUE`` lines (``export``
prefixes, quotes and ``#`` comments as python-dotenv reads them); the bot itself
still reads every setting with pydantic-settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot import places
from bot.peers import uid_of
from storage.errors import TapgateError

SERVER_UID_VAR = "TAPGATE_SOCKET_SERVER_UID"


class ClientConfigError(TapgateError):
    """A client setting is invalid; the message is one line naming the variable."""

    code = "config_error"


@dataclass(frozen=True)
class ClientSettings:
    socket_path: Path
    server_uid: int


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a dotenv file (blank lines and ``#`` comments skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1:
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def resolve_uid(value: str, name: str = SERVER_UID_VAR) -> int:
    """A uid from digits or a user name (ClientConfigError naming ``name`` if neither)."""
    try:
        return uid_of(value)
    except ValueError as exc:
        raise ClientConfigError(f"{name}: {exc}") from None


def load_client_settings(env_file: str | Path | None = None,
                         env: Mapping[str, str] = os.environ) -> ClientSettings:
    """The socket and the expected server uid, as the bot's settings would resolve them."""
    if env_file is not None and not Path(env_file).is_file():
        raise ClientConfigError(f"--env-file: {env_file} does not exist")
    path = Path(env_file) if env_file is not None else places.find_env_file(env)
    try:
        file_values = read_env_file(path) if path is not None else {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"{path}: cannot read: {exc}") from None

    def value(name: str) -> str:
        got = env.get(name)
        return (got if got is not None else file_values.get(name, "")).strip()

    socket = value(places.SOCKET_VAR)
    uid = value(SERVER_UID_VAR)
    return ClientSettings(
        socket_path=Path(socket) if socket else places.well_known_socket(env),
        server_uid=resolve_uid(uid) if uid else os.getuid())
