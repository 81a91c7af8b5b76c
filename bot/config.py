"""Settings: ``TAPGATE_*`` environment variables, also read from ``bot.env``.

Every problem is reported as one line naming the environment variable, so a
person can fix it without reading a traceback (``tapgate run`` exits 2).
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage.errors import TapgateError

PREFIX = "TAPGATE_"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_TTL, MAX_TTL = 1.0, 30 * 86400.0


class ConfigError(TapgateError):
    """A setting is missing or invalid; the message is one line naming the variable."""

    code = "config_error"


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    if isinstance(value, int | float):
        return float(value)
    match = DURATION.match(str(value))
    if not match:
        raise ValueError(f"invalid duration {value!r} (use seconds or 90s, 15m, 24h, 7d)")
    return float(match.group(1)) * UNITS[match.group(2)]


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

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file="bot.env", extra="ignore",
                                      env_file_encoding="utf-8")

    telegram_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    approver_chat_ids: IntList = Field(default_factory=list)
    approver_user_ids: IntList = Field(default_factory=list)
    database_url: str = "sqlite:///tapgate.db"
    socket_path: Path = Path("tapgate.sock")
    socket_allowed_uids: IntList = Field(default_factory=list)
    socket_admin_uids: IntList = Field(default_factory=list)
    socket_server_uid: int | None = Field(None, ge=0)  # a uid or a user name in the env
    default_ttl: float = 24 * 3600.0
    expiry_interval: float = 30.0
    default_budget_tokens: int = Field(0, ge=0)
    default_budget_dollars: float = Field(0.0, ge=0)
    default_budget_loops: int = Field(0, ge=0)
    default_budget_seconds: int = Field(0, ge=0)
    log_level: str = "INFO"

    _lists = field_validator("approver_chat_ids", "approver_user_ids", "socket_allowed_uids",
                             "socket_admin_uids", mode="before")(_int_list)

    @field_validator("socket_server_uid", mode="before")
    @classmethod
    def _uid(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) and not value.strip().isdigit():
            try:
                return pwd.getpwnam(value.strip()).pw_uid
            except KeyError:
                raise ValueError(f"no user named {value.strip()!r}") from None
        return value

    @field_validator("default_ttl", "expiry_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)  # type: ignore[arg-type]

    @field_validator("default_ttl")
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


def load_settings(env_file: str | Path | None = None) -> Settings:
    """Read the settings (``env_file`` replaces ``bot.env``); ConfigError on a bad value."""
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"--env-file: {env_file} does not exist")
    try:
        if env_file is not None:
            return Settings(_env_file=str(env_file))
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{PREFIX}{field.upper()}: {message}") from None
