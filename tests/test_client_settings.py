"""The clients' light settings reader agrees with the bot's settings (pydantic-settings)."""

from __future__ import annotations

import os
import pwd

import pytest

from bot.client_settings import ClientConfigError, load_client_settings, read_env_file
from bot.config import load_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
                "TAPGATE_SOCKET_PATH", "TAPGATE_SOCKET_SERVER_UID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text", [
    "TAPGATE_SOCKET_PATH=/run/a.sock\nTAPGATE_SOCKET_SERVER_UID=0\n",
    "# comment\nexport TAPGATE_SOCKET_PATH='/run/b c.sock'\nTAPGATE_SOCKET_SERVER_UID=root\n",
    'TAPGATE_SOCKET_PATH="/run/q.sock"  \nTAPGATE_SOCKET_SERVER_UID=0 # the bot\n',
    "OTHER=1\n\nTAPGATE_SOCKET_PATH = /run/sp.sock\n",
    "",
])
def test_the_client_reads_what_the_bot_reads(home, text):
    (home / "bot.env").write_text(text)
    bot = load_settings()
    client = load_client_settings()
    assert client.socket_path == bot.socket_path
    assert client.server_uid == bot.expected_server_uid


def test_environment_wins_and_errors_name_the_variable(home, monkeypatch):
    (home / "bot.env").write_text("TAPGATE_SOCKET_PATH=/from/file.sock\n")
    monkeypatch.setenv("TAPGATE_SOCKET_PATH", "/from/env.sock")
    assert str(load_client_settings().socket_path) == "/from/env.sock"
    monkeypatch.setenv("TAPGATE_SOCKET_SERVER_UID", "no-such-user-anywhere")
    with pytest.raises(ClientConfigError, match="TAPGATE_SOCKET_SERVER_UID"):
        load_client_settings()
    with pytest.raises(ClientConfigError, match="--env-file"):
        load_client_settings(home / "missing.env")
    assert load_client_settings.__module__ == "bot.client_settings"
    assert pwd.getpwuid(os.getuid())  # the default uid is the caller's own


def test_read_env_file_keeps_hashes_inside_values(home):
    path = home / "x.env"
    path.write_text("A='has # hash'\nB=plain#kept\nC=cut # comment\n")
    assert read_env_file(path) == {"A": "has # hash", "B": "plain#kept", "C": "cut"}
