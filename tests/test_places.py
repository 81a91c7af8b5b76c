"""The well-known places: the bot and every client agree on the socket, the settings
file and the database without configuration, and explicit settings always win."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from bot import places
from bot.client import AsyncTapgateClient
from bot.client_calls import default_socket_path
from bot.config import load_settings, settings_file
from tests.botproc import BotProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(monkeypatch):
    """HOME in a short temporary directory (AF_UNIX paths are short), no XDG or TAPGATE
    variables, and a working directory with no bot.env."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="tgh-"))
    for key in list(os.environ):
        if key.startswith(("TAPGATE_", "XDG_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(root / "home"))
    (root / "work").mkdir()
    monkeypatch.chdir(root / "work")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_without_xdg_everything_is_under_the_home(home):
    state = home / "home" / ".local" / "state" / "tapgate"
    s = load_settings()
    assert s.socket_path == state / "tapgate.sock"
    assert s.database_url == f"sqlite:///{state}/tapgate.db"
    assert s.database_url.startswith("sqlite:////")  # an absolute path, whatever the cwd
    assert places.user_env_file() == home / "home" / ".config" / "tapgate" / "bot.env"


@pytest.mark.parametrize("runtime", [False, True])
def test_the_bot_and_the_client_agree_on_the_socket(home, monkeypatch, runtime):
    if runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    expected = (home / "run" / "tapgate" if runtime
                else home / "home" / ".local" / "state" / "tapgate") / "tapgate.sock"
    assert load_settings().socket_path == expected
    assert default_socket_path() == str(expected)
    # From another working directory (an agent's project) nothing changes.
    other = home / "project"
    other.mkdir()
    monkeypatch.chdir(other)
    assert load_settings().socket_path == expected
    assert default_socket_path() == str(expected)


def test_xdg_state_home_is_honoured_and_a_relative_one_ignored(home, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    s = load_settings()
    assert s.database_url == f"sqlite:///{home}/state/tapgate/tapgate.db"
    assert s.socket_path == home / "state" / "tapgate" / "tapgate.sock"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # invalid per the XDG spec
    assert load_settings().socket_path == home / "home/.local/state/tapgate/tapgate.sock"


def test_explicit_settings_win(home, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("TAPGATE_SOCKET_PATH", str(home / "elsewhere.sock"))
    monkeypatch.setenv("TAPGATE_DATABASE_URL", "sqlite:///relative.db")
    s = load_settings()
    assert s.socket_path == home / "elsewhere.sock"
    assert default_socket_path() == str(home / "elsewhere.sock")
    assert s.database_url == "sqlite:///relative.db"  # an existing bot.env keeps working


def test_blank_values_mean_the_well_known_defaults(home):
    Path("bot.env").write_text("TAPGATE_SOCKET_PATH=\nTAPGATE_DATABASE_URL=  \n")
    s = load_settings()
    assert s.socket_path == places.well_known_socket()
    assert s.database_url == places.well_known_database_url()


def test_env_file_precedence(home, monkeypatch):
    user_file = home / "home" / ".config" / "tapgate" / "bot.env"
    assert settings_file() is None and load_settings().default_ttl == 86400
    user_file.parent.mkdir(parents=True)
    user_file.write_text("TAPGATE_DEFAULT_TTL=1h\n")
    assert settings_file() == user_file and load_settings().default_ttl == 3600
    Path("bot.env").write_text("TAPGATE_DEFAULT_TTL=2h\n")  # ./bot.env comes first
    assert settings_file() == Path("bot.env") and load_settings().default_ttl == 7200
    custom = home / "custom.env"
    custom.write_text("TAPGATE_DEFAULT_TTL=3h\n")  # --env-file beats both
    assert load_settings(custom).default_ttl == 10800
    monkeypatch.setenv("TAPGATE_DEFAULT_TTL", "4h")  # the environment beats any file
    assert load_settings(custom).default_ttl == 14400 and load_settings().default_ttl == 14400
    # The files are alternatives, not layers: ./bot.env hides the user file entirely.
    monkeypatch.delenv("TAPGATE_DEFAULT_TTL")
    user_file.write_text("TAPGATE_LOG_LEVEL=DEBUG\n")
    assert load_settings().log_level == "INFO"


def test_xdg_config_home_is_honoured(home, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "cfg"))
    (home / "cfg" / "tapgate").mkdir(parents=True)
    (home / "cfg" / "tapgate" / "bot.env").write_text("TAPGATE_LOG_LEVEL=DEBUG\n")
    assert places.user_env_file() == home / "cfg" / "tapgate" / "bot.env"
    assert load_settings().log_level == "DEBUG"


def test_created_directories_are_private_and_existing_ones_untouched(home):
    old = os.umask(0o022)
    try:
        base = home / "home"
        base.mkdir(mode=0o755)
        places.prepare_dirs(places.well_known_socket(), places.well_known_database_url())
    finally:
        os.umask(old)
    for created in (".local", ".local/state", ".local/state/tapgate"):
        assert mode(base / created) == 0o700, created
    assert mode(base) == 0o755


def test_sqlite_file_of_urls():
    assert places.sqlite_file("sqlite:////abs/t.db?timeout=3") == Path("/abs/t.db")
    assert places.sqlite_file("sqlite:///rel.db") == Path("rel.db")
    assert places.sqlite_file("postgresql://u@h/db") is None


class DefaultPlacesBot(BotProcess):
    """``tapgate run`` with no socket or database setting: only HOME and XDG_RUNTIME_DIR."""

    def __init__(self, fake, root: Path):
        super().__init__(fake, "unused", root / "run" / "tapgate" / "tapgate.sock")
        self.root = root

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        del env["TAPGATE_SOCKET_PATH"], env["TAPGATE_DATABASE_URL"]
        env.update(HOME=str(self.root / "home"), XDG_RUNTIME_DIR=str(self.root / "run"))
        return env


async def test_bot_on_default_places_is_found_by_a_client_with_no_settings(fake, home,
                                                                         monkeypatch):
    (home / "run").mkdir(mode=0o700)  # the session's runtime dir exists; tapgate/ does not
    async with DefaultPlacesBot(fake, home) as bot:
        sock = home / "run" / "tapgate" / "tapgate.sock"
        assert bot.socket_path == sock and stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert mode(sock.parent) == 0o700
        state = home / "home" / ".local" / "state" / "tapgate"
        assert (state / "tapgate.db").is_file() and mode(state) == 0o700
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
        async with AsyncTapgateClient() as client:  # no path: the well-known socket
            assert client.socket_path == str(sock)
            health = await asyncio.wait_for(client.health(), 10)
        assert health.status == "ok"
