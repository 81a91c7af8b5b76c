"""Settings: parsing, defaults, and one-line errors naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings, parse_duration

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("clean_env")  # every test: no stray setting


def test_defaults(tmp_path):
    s = load_settings()
    state = tmp_path / "home" / ".local" / "state" / "tapgate"
    assert s.database_url == f"sqlite:///{state / 'tapgate.db'}"
    assert s.socket_path == state / "tapgate.sock"
    assert s.default_ttl == 86400 and s.expiry_interval == 30
    assert s.telegram_api_url == "https://api.telegram.org"
    assert s.allowed_uids == [os.getuid()]
    assert s.approver_chat_ids == []


def test_comma_separated_ids_and_durations(monkeypatch):
    monkeypatch.setenv("TAPGATE_APPROVER_CHAT_IDS", "1001, -1001234567890")
    monkeypatch.setenv("TAPGATE_APPROVER_USER_IDS", "42")
    monkeypatch.setenv("TAPGATE_DEFAULT_TTL", "15m")
    monkeypatch.setenv("TAPGATE_EXPIRY_INTERVAL", "90s")
    s = load_settings()
    assert s.approver_chat_ids == [1001, -1001234567890]
    assert s.approver_user_ids == [42]
    assert (s.default_ttl, s.expiry_interval) == (900, 90)


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900),
                                          ("24h", 86400), ("7d", 604800), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("var,value,needle", [
    ("TAPGATE_DEFAULT_TTL", "abc", "invalid duration"),
    ("TAPGATE_DEFAULT_TTL", "31d", "between 1s and 30d"),
    ("TAPGATE_APPROVER_CHAT_IDS", "12,abc", "comma-separated integers"),
    ("TAPGATE_LOG_LEVEL", "LOUD", "must be DEBUG"),
    ("TAPGATE_DEFAULT_BUDGET_DOLLARS", "-1", "greater than or equal to 0"),
    ("TAPGATE_TELEGRAM_API_URL", "ftp://x", "http"),
])
def test_invalid_setting_is_one_line_naming_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{var}: ")
    assert needle in message
    assert "\n" not in message


def test_env_file_is_read_and_env_overrides(monkeypatch, tmp_path):
    env = tmp_path / "custom.env"
    env.write_text("TAPGATE_DEFAULT_TTL=2h\nTAPGATE_LOG_LEVEL=debug\n")
    monkeypatch.setenv("TAPGATE_LOG_LEVEL", "WARNING")
    s = load_settings(env)
    assert s.default_ttl == 7200 and s.log_level == "WARNING"
    (tmp_path / "bot.env").write_text("TAPGATE_DEFAULT_TTL=3h\n")
    assert load_settings().default_ttl == 10800
    with pytest.raises(ConfigError, match="--env-file"):
        load_settings(tmp_path / "missing.env")


@pytest.mark.parametrize("missing", ["TELEGRAM_TOKEN", "APPROVER_CHAT_IDS", "APPROVER_USER_IDS"])
def test_run_requires_token_chats_and_users(missing):
    values = {"telegram_token": "1:x", "approver_chat_ids": [1], "approver_user_ids": [1]}
    values.pop(missing.lower())
    with pytest.raises(ConfigError, match=f"^TAPGATE_{missing}: missing"):
        Settings(_env_file=None, **values).require_for_run()


def test_example_file_lists_every_setting():
    text = (ROOT / "bot.env.example").read_text()
    listed = set(re.findall(r"^(TAPGATE_[A-Z_]+)=", text, re.M))
    expected = {f"TAPGATE_{name.upper()}" for name in Settings.model_fields}
    assert listed == expected
    (Path.cwd() / "bot.env").write_text(text)
    load_settings()  # the example itself is valid


def test_tapgate_run_with_missing_setting_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPGATE_")}
    env["TAPGATE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'never.db'}"
    proc = subprocess.run([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("TAPGATE_TELEGRAM_TOKEN: missing")
    assert not (tmp_path / "never.db").exists()  # stopped before touching anything
