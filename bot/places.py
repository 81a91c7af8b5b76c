"""Where Tapgate keeps its socket, settings and database when nothing says otherwise.

Hooks and MCP servers run in whatever directory the agent works in, so nothing may
be found relative to the working directory by default. The bot and every client
compute the same well-known places from the XDG base directories:

- socket: ``$TAPGATE_SOCKET_PATH``, else ``$XDG_RUNTIME_DIR/tapgate/tapgate.sock``,
  else ``$XDG_STATE_HOME/tapgate/tapgate.sock`` (``~/.local/state/tapgate/``);
- settings: ``--env-file``, else ``./bot.env``, else ``$XDG_CONFIG_HOME/tapgate/bot.env``
  (``~/.config/tapgate/bot.env``);
- database: ``$TAPGATE_DATABASE_URL``, else ``sqlite:///$XDG_STATE_HOME/tapgate/tapgate.db``.

Standard library only: the client imports this module and must not need the
server's dependencies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "tapgate"
ENV_FILE = "bot.env"
SOCKET_FILE = "tapgate.sock"
DATABASE_FILE = "tapgate.db"
SOCKET_VAR = "TAPGATE_SOCKET_PATH"
DATABASE_VAR = "TAPGATE_DATABASE_URL"
PRIVATE_DIR_MODE = 0o700


def _base(var: str, fallback: str, env: Mapping[str, str]) -> Path:
    # The XDG spec says a relative value is invalid and must be ignored.
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/tapgate`` (default ``~/.local/state/tapgate``)."""
    return _base("XDG_STATE_HOME", ".local/state", env) / APP


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/tapgate`` (default ``~/.config/tapgate``)."""
    return _base("XDG_CONFIG_HOME", ".config", env) / APP


def runtime_dir(env: Mapping[str, str] = os.environ) -> Path | None:
    """``$XDG_RUNTIME_DIR/tapgate``, or None when the session has no runtime directory."""
    value = env.get("XDG_RUNTIME_DIR", "")
    return Path(value) / APP if value and os.path.isabs(value) else None


def well_known_socket(env: Mapping[str, str] = os.environ) -> Path:
    """The socket path when ``TAPGATE_SOCKET_PATH`` is not set."""
    return (runtime_dir(env) or state_dir(env)) / SOCKET_FILE


def socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """The socket a client connects to: ``$TAPGATE_SOCKET_PATH`` or the well-known one."""
    value = env.get(SOCKET_VAR, "").strip()
    return Path(value) if value else well_known_socket(env)


def well_known_database_url(env: Mapping[str, str] = os.environ) -> str:
    """``sqlite:////abs/path/tapgate.db`` under the state directory."""
    return f"sqlite:///{state_dir(env) / DATABASE_FILE}"


def user_env_file(env: Mapping[str, str] = os.environ) -> Path:
    """``~/.config/tapgate/bot.env``: where ``tapgate init`` writes the settings."""
    return config_dir(env) / ENV_FILE


def env_file_candidates(env: Mapping[str, str] = os.environ) -> list[Path]:
    """The env files read when no ``--env-file`` is given, first match wins."""
    return [Path(ENV_FILE), user_env_file(env)]


def find_env_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """The first existing file of :func:`env_file_candidates`, or None."""
    return next((p for p in env_file_candidates(env) if p.is_file()), None)


def sqlite_file(database_url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for any other database)."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path else None


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents, each mode 0700; existing ones are untouched.

    ``os.makedirs(mode=...)`` only applies the mode to the last directory, but the
    parents we create (``~/.local/state``, say) hold the same private files.
    """
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by another process: not ours to chmod
        # The umask may have taken bits away; 0700 is what we promise.
        os.chmod(directory, PRIVATE_DIR_MODE)
    return path


def prepare_dirs(socket: Path | None, database_url: str) -> None:
    """Create the directories of the socket (unless None) and of a SQLite database
    (0700) if missing."""
    if socket is not None:
        make_private_dir(Path(socket).parent)
    db_file = sqlite_file(database_url)
    if db_file is not None:
        make_private_dir(db_file.parent)
