"""Settings: ``TAPGATE_*`` environment variables, also read from an env file.

The env file is ``--env-file``, else ``./bot.env``, else ``~/.config/tapgate/bot.env``;
the socket and the SQLite database default to the well-known places of
:mod:`bot.places`, which the clients compute the same way.

Every problem is reported as one line naming the environment variable, so a
person can fix it without reading a traceback (``tapgate run`` exits 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot import places
from bot.durations import parse_duration  # noqa: F401  (re-exported: the settings parse with it)
from bot.peers import uid_of
from storage.errors import TapgateError

PREFIX = "TAPGATE_"
MIN_TTL, MAX_TTL = 1.0, 30 * 86400.0


class ConfigError(TapgateError):
    """A setting is missing or invalid; the message is one line naming the variable."""

    code = "config_error"


def _int_list(value: object) -> list[int]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    items = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        return [int(p) for p in items]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {value!r}") from None


IntList = Annotated[list[int], NoDecode]


class Settings(BaseSettings):
    """Every setting of DESIGN.md's table."""

    # No env_file here: load_settings picks the file (see bot.places).
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore",
                                      env_file_encoding="utf-8")

    telegram_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    approver_chat_ids: IntList = Field(default_factory=list)
    approver_user_ids: IntList = Field(default_factory=list)
    database_url: str = Field(default_factory=places.well_known_database_url)
    socket_path: Path = Field(default_factory=places.well_known_socket)
    socket_allowed_uids: IntList = Field(default_factory=list)
    socket_admin_uids: IntList = Field(default_factory=list)
    socket_server_uid: int | None = Field(None, ge=0)  # a uid or a user name in the env
    default_ttl: float = 24 * 3600.0
    expiry_interval: float = 30.0
    session_rule_ttl: float = 8 * 3600.0  # a "This session" rule ends with its run or this
    default_budget_tokens: int = Field(0, ge=0)
    default_budget_dollars: float = Field(0.0, ge=0)
    default_budget_loops: int = Field(0, ge=0)
    default_budget_seconds: int = Field(0, ge=0)
    log_level: str = "INFO"

    _lists = field_validator("approver_chat_ids", "approver_user_ids", "socket_allowed_uids",
                             "socket_admin_uids", mode="before")(_int_list)

    @field_validator("database_url", "socket_path", mode="before")
    @classmethod
    def _blank_is_well_known(cls, value: object, info) -> object:
        # ``TAPGATE_SOCKET_PATH=`` (as in bot.env.example) means "the default", not "."
        if value is None or (isinstance(value, str) and not value.strip()):
            return (places.well_known_database_url() if info.field_name == "database_url"
                    else places.well_known_socket())
        return value

    @field_validator("socket_server_uid", mode="before")
    @classmethod
    def _uid(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return uid_of(value) if isinstance(value, str) else value

    @field_validator("default_ttl", "expiry_interval", "session_rule_ttl", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)  # type: ignore[arg-type]

    @field_validator("default_ttl", "session_rule_ttl")
    @classmethod
    def _ttl_bounds(cls, value: float) -> float:
        if not MIN_TTL <= value <= MAX_TTL:
            raise ValueError("must be between 1s and 30d")
        return value

    @field_validator("expiry_interval")
    @classmethod
    def _interval_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("telegram_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @property
    def admin_uids(self) -> list[int]:
        """Peer uids that may do everything on the socket (default: the bot's own uid)."""
        return self.socket_admin_uids or [os.getuid()]

    @property
    def agent_uids(self) -> list[int]:
        """Peer uids of agents: submit, wait, record their work, read (default: the bot's uid)."""
        return self.socket_allowed_uids or [os.getuid()]

    @property
    def allowed_uids(self) -> list[int]:
        """Every peer uid allowed on the socket: the agents' and the admins'."""
        return list(dict.fromkeys([*self.admin_uids, *self.agent_uids]))

    @property
    def expected_server_uid(self) -> int:
        """The uid clients require at the server end of the socket (default: their own)."""
        return os.getuid() if self.socket_server_uid is None else self.socket_server_uid

    def require_for_run(self) -> None:
        """Check what ``tapgate run`` needs beyond the defaults."""
        if self.telegram_token is None or not self.telegram_token.get_secret_value().strip():
            raise ConfigError(f"{PREFIX}TELEGRAM_TOKEN: missing (the bot token from @BotFather)")
        if not self.approver_chat_ids:
            raise ConfigError(f"{PREFIX}APPROVER_CHAT_IDS: missing (comma-separated chat ids)")
        if not self.approver_user_ids:
            raise ConfigError(f"{PREFIX}APPROVER_USER_IDS: missing (comma-separated user ids)")


def settings_file(env_file: str | Path | None = None) -> Path | None:
    """The env file :func:`load_settings` reads: ``env_file``, else the first existing
    of ``./bot.env`` and ``~/.config/tapgate/bot.env``, else None (environment only)."""
    if env_file is not None:
        if not Path(env_file).is_file():
            raise ConfigError(f"--env-file: {env_file} does not exist")
        return Path(env_file)
    return places.find_env_file()


def load_settings(env_file: str | Path | None = None) -> Settings:
    """Read the settings from the environment and :func:`settings_file`; ConfigError on
    a bad value. Environment variables win over the file."""
    path = settings_file(env_file)
    try:
        return Settings(_env_file=str(path) if path is not None else None)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{PREFIX}{field.upper()}: {message}") from None
