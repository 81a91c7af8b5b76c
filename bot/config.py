"""Settings: ``TAPGATE_*`` environment variables, also read from an env file.

The env file is ``--env-file``, else ``./bot.env``, else ``~/.config/tapgate/bot.env``;
the socket and the SQLite database default to the well-known places of
:mod:`bot.places`, which the clients compute the same way.

Every problem is reported as one line naming the environment variable, so a
person can fix it without reading a traceback (``tapgate run`` exits 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot import places
from bot.durations import parse_duration  # noqa: F401  (re-exported: the settings parse with it)
from bot.peers import uid_of
from bot.routing import check_approvers, parse_routes
from storage.errors import TapgateError
from storage.records import MAX_APPROVALS
from storage.rule_records import Route

PREFIX = "TAPGATE_"
TOPIC_PER = ("agent", "run", "none")
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

# Webhook mode. Telegram sends the secret back in X-Telegram-Bot-Api-Secret-Token and
# allows 1-256 characters of A-Z a-z 0-9 _ -; Tapgate asks for at least 16, since the
# header is all that tells a forged tap from Telegram's (and the log filter of
# bot/redact.py masks nothing shorter than 6 characters).
DEFAULT_WEBHOOK_LISTEN = "127.0.0.1:8081"
WEBHOOK_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,256}")
WEBHOOK_SECRET_RULE = "must be 16-256 characters of A-Z, a-z, 0-9, _ and -"
WEBHOOK_PORTS = (443, 80, 88, 8443)  # the only ports Telegram delivers webhooks to


def check_webhook_url(url: str) -> str:
    """``url`` if Telegram can deliver to it: https, a host, one of Telegram's ports."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https:// URL (Telegram delivers webhooks over HTTPS only)")
    try:
        port = parts.port or 443
    except ValueError:
        raise ValueError("has an invalid port") from None
    if port not in WEBHOOK_PORTS:
        raise ValueError("port must be 443, 80, 88 or 8443 (the ports Telegram delivers to)")
    return url


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as (host, port); port 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8081")
    return host, int(port)


class Settings(BaseSettings):
    """Every setting of DESIGN.md's table."""

    # No env_file here: load_settings picks the file (see bot.places).
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore",
                                      env_file_encoding="utf-8")

    telegram_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    approver_chat_ids: IntList = Field(default_factory=list)
    approver_user_ids: IntList = Field(default_factory=list)
    # Before routes: a route's approvers are checked against both.
    default_required_approvals: int = Field(1, ge=1, le=MAX_APPROVALS)
    # Routes (bot/routing.py): a JSON list of {"agent", "kind", "chats", "approvers"},
    # first match wins; requests no route matches go to the approver chats.
    routes: Annotated[list[Route], NoDecode] = Field(default_factory=list)
    database_url: str = Field(default_factory=places.well_known_database_url)
    socket_path: Path = Field(default_factory=places.well_known_socket)
    socket_allowed_uids: IntList = Field(default_factory=list)
    socket_admin_uids: IntList = Field(default_factory=list)
    socket_server_uid: int | None = Field(None, ge=0)  # a uid or a user name in the env
    default_ttl: float = 24 * 3600.0
    expiry_interval: float = 30.0
    session_rule_ttl: float = 8 * 3600.0  # a "This session" rule ends with its run or this
    escalation_chat_ids: IntList = Field(default_factory=list)
    escalate_after: float = 0.0  # 0: never; else a pending request escalates after this
    # Forum topics (bot/topics.py): one topic per agent or per run in chats that have
    # topics; "none": every request in the chat's main thread.
    topic_per: str = "none"
    # More than this many new requests owed to one chat at once are posted as digest
    # messages (bot/telegram/digest.py); 0: never.
    digest_threshold: int = Field(5, ge=0, le=1000)
    default_budget_tokens: int = Field(0, ge=0)
    default_budget_dollars: float = Field(0.0, ge=0)
    default_budget_loops: int = Field(0, ge=0)
    default_budget_seconds: int = Field(0, ge=0)
    log_level: str = "INFO"
    # Several instances on PostgreSQL (bot/cluster.py): a dead or frozen leader is
    # replaced within this many seconds.
    failover_seconds: float = 5.0
    # Webhook mode (bot/telegram/webhook.py): an empty URL means long polling.
    telegram_webhook_url: str = ""
    webhook_listen: str = DEFAULT_WEBHOOK_LISTEN
    webhook_secret: SecretStr | None = None

    @property
    def request_chat_ids(self) -> list[int]:
        """Every chat requests are posted to: the approver chats, then the escalation chats."""
        return list(dict.fromkeys([*self.approver_chat_ids, *self.escalation_chat_ids]))

    _lists = field_validator("approver_chat_ids", "approver_user_ids", "socket_allowed_uids",
                             "socket_admin_uids", "escalation_chat_ids",
                             mode="before")(_int_list)

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: object, info) -> list[Route]:
        routes = parse_routes(value)
        if "approver_user_ids" in info.data and "default_required_approvals" in info.data:
            check_approvers(routes, info.data["approver_user_ids"],
                            info.data["default_required_approvals"])
        return routes

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

    @field_validator("default_ttl", "expiry_interval", "session_rule_ttl", "escalate_after",
                     mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)  # type: ignore[arg-type]

    @field_validator("default_ttl", "session_rule_ttl")
    @classmethod
    def _ttl_bounds(cls, value: float) -> float:
        if not MIN_TTL <= value <= MAX_TTL:
            raise ValueError("must be between 1s and 30d")
        return value

    @field_validator("topic_per", mode="before")
    @classmethod
    def _topic_per(cls, value: object) -> str:
        text = "" if value is None else str(value).strip().lower()
        if text == "":
            return "none"
        if text not in TOPIC_PER:
            raise ValueError(f"must be agent, run or none, got {value!r}")
        return text

    @field_validator("failover_seconds", mode="before")
    @classmethod
    def _failover(cls, value: object) -> float:
        seconds = parse_duration(value)  # type: ignore[arg-type]
        if not 2 <= seconds <= 600:
            raise ValueError("must be between 2s and 10m")
        return seconds

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

    @field_validator("telegram_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        return check_webhook_url(str(value).strip())

    @field_validator("webhook_listen", mode="before")
    @classmethod
    def _webhook_listen(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return DEFAULT_WEBHOOK_LISTEN
        host, port = parse_listen(str(value).strip())
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        # The message never quotes the value: it is a secret.
        if not isinstance(value, str) or not WEBHOOK_SECRET_RE.fullmatch(value):
            raise ValueError(WEBHOOK_SECRET_RULE)
        return value

    @property
    def webhook_mode(self) -> bool:
        """True when updates arrive by webhook (``TAPGATE_TELEGRAM_WEBHOOK_URL`` is set)."""
        return bool(self.telegram_webhook_url)

    @property
    def webhook_address(self) -> tuple[str, int]:
        """``TAPGATE_WEBHOOK_LISTEN`` as (host, port)."""
        return parse_listen(self.webhook_listen)

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
        if self.webhook_mode and self.webhook_secret is None:
            raise ConfigError(f"{PREFIX}WEBHOOK_SECRET: missing (required with {PREFIX}"
                              f"TELEGRAM_WEBHOOK_URL; {WEBHOOK_SECRET_RULE}, e.g. from "
                              "`openssl rand -hex 32`)")


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
