"""``tapgate doctor``: check a setup end to end, one line per check with ✓ or ✗ and,
for a ✗, what to do. Exit 0 when every check passes, 1 otherwise.

Checks: the settings (and where the env file, socket and database come from),
the token (``getMe``), each chat requests may be posted to — approver, escalation
and route chats, stored routes included — (``getChat``; in groups and channels
``getChatMember`` of the bot: may it post?), the database (reachable, migrated,
not newer than this code), the socket (a bot already answering, or free with a
writable directory) and the clock (against the ``Date`` of Telegram's answer).
Doctor reads and asks; it never writes, migrates or posts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
from telegram import Bot, Chat, ChatMember
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.warnings import PTBUserWarning

from bot import places
from bot.config import ConfigError, Settings, load_settings, settings_file
from bot.onboarding import make_bot
from bot.peers import peer_credentials

MAX_SKEW = 30.0  # seconds; approvals expire and alerts are dated by this clock
AF_UNIX_MAX = 107  # bytes of sun_path, the terminating NUL aside (Linux)


class Report:
    """Prints each check as it completes and remembers whether all passed."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self, ok: bool, text: str) -> None:
        self.ok = self.ok and ok
        print(f"{'✓' if ok else '✗'} {text}", flush=True)


def run_doctor(env_file: str | None) -> int:
    """Run every check; the exit code (0: all passed, 1: something failed)."""
    report = Report()
    source = None
    try:
        source = settings_file(env_file)
        settings = load_settings(env_file)
        settings.require_for_run()
    except ConfigError as exc:
        where = f"in {source}" if source else "(or run `tapgate init`)"
        report(False, f"settings: {exc}: fix it {where}")
        return 1
    file_values = _file_values(source)
    report(True, f"settings valid (from {source or 'the environment only: no env file'})")
    asyncio.run(_telegram_checks(settings, report))
    _check_database(settings, _origin("TAPGATE_DATABASE_URL", source, file_values), report)
    _check_socket(settings, _origin("TAPGATE_SOCKET_PATH", source, file_values), report)
    return 0 if report.ok else 1


def _file_values(path: Path | None) -> Mapping[str, str | None]:
    if path is None:
        return {}
    from dotenv import dotenv_values  # pydantic-settings reads env files with it too

    return dotenv_values(path)


def _origin(var: str, source: Path | None, file_values: Mapping[str, str | None]) -> str:
    """Where a setting came from, as pydantic-settings decides: environment, file, default."""
    if os.environ.get(var, "").strip():
        return f"{var} in the environment"
    if (file_values.get(var) or "").strip():
        return f"{var} in {source}"
    return "the well-known default"


# --- Telegram ----------------------------------------------------------------------------------


async def _telegram_checks(settings: Settings, report: Report) -> None:
    bot = make_bot(settings.telegram_token.get_secret_value(), settings.telegram_api_url)
    try:
        await bot.initialize()  # getMe
    except InvalidToken:
        report(False, "token rejected by Telegram: get it again from @BotFather and run "
                      "`tapgate init --force` (or fix TAPGATE_TELEGRAM_TOKEN)")
    except NetworkError as exc:
        report(False, f"Telegram unreachable at {settings.telegram_api_url}: {exc}: check the "
                      "network (or TAPGATE_TELEGRAM_API_URL)")
    except TelegramError as exc:
        report(False, f"getMe refused: {exc.message}")
    else:
        report(True, f"token accepted: the bot is @{bot.username}")
        for chat_id, setting in chats_to_check(settings).items():
            try:
                ok, text = await check_chat(bot, chat_id, setting)
            except Exception as exc:  # an answer PTB cannot read: still one line
                ok, text = False, f"chat {chat_id}: {type(exc).__name__}: {exc}"
            report(ok, text)
        await _webhook_check(bot, settings, report)
    finally:
        await bot.shutdown()
    ok, text = await check_clock(settings.telegram_api_url)
    report(ok, text)


STORED_ROUTES = ("the routes stored by `tapgate policy apply` (edit the policy file, "
                 "apply it again)")


def chats_to_check(settings: Settings) -> dict[int, str]:
    """Every chat the bot may post requests to, each once, with where it is set: the
    approver chats, the escalation chats, ``TAPGATE_ROUTES`` and the routes stored by
    ``tapgate policy apply`` (read when the database can be; its own check says why
    not)."""
    chats = dict.fromkeys(settings.approver_chat_ids, "TAPGATE_APPROVER_CHAT_IDS")
    sources = [("TAPGATE_ESCALATION_CHAT_IDS", settings.escalation_chat_ids),
               ("TAPGATE_ROUTES", [c for r in settings.routes for c in r.chats]),
               (STORED_ROUTES, [c for r in _stored_routes(settings) for c in r.chats])]
    for setting, ids in sources:
        chats.update({chat: setting for chat in ids if chat not in chats})
    return chats


def _stored_routes(settings: Settings) -> list:
    db_file = places.sqlite_file(settings.database_url)
    if db_file is not None and not db_file.exists():
        return []  # doctor creates nothing
    from storage.store import Store

    try:
        store = Store.from_url(settings.database_url, workers=1)
        try:
            store.check_schema()
            return store.list_routes()
        finally:
            store.close()
    except Exception:  # down, not migrated, newer: the database check reports it
        return []


async def _webhook_check(bot: Bot, settings: Settings, report: Report) -> None:
    """Webhook mode, or a webhook left set while polling (bot/telegram/webhook.py)."""
    from bot.telegram import webhook

    try:
        found = await webhook.check(bot, settings)
    except TelegramError as exc:
        found = False, f"getWebhookInfo refused: {exc.message}"
    if found is not None:
        report(*found)


async def check_chat(bot: Bot, chat_id: int, setting: str = "TAPGATE_APPROVER_CHAT_IDS"
                     ) -> tuple[bool, str]:
    """Is approver chat ``chat_id`` (of ``setting``) reachable (``getChat``) and may the
    bot post there?"""
    try:
        # The raw answer: doctor needs four fields, and must not fail because a newer
        # Bot API field is missing from (or required by) PTB's ChatFullInfo.
        # PTB warns that a typed method exists: that is the point. Doctor checks one
        # chat at a time, so no other task runs under this filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Please use 'Bot.getChat'", PTBUserWarning)
            chat = await bot.do_api_request("getChat", api_kwargs={"chat_id": chat_id})
    except TelegramError as exc:
        return False, (f"chat {chat_id} unreachable ({exc.message}): send /start to "
                       f"@{bot.username} from that account, or add the bot to that group, "
                       f"or remove the id from {setting}")
    kind = chat.get("type")
    if kind == Chat.PRIVATE:
        who = f"@{chat['username']}" if chat.get("username") else chat.get("first_name", "?")
        # getChat answers for a private chat only once the user has started the bot.
        return True, f"chat {chat_id} (private, {who}) reachable: the bot can post there"
    label = f"chat {chat_id} ({kind}, {chat.get('title') or 'untitled'})"
    try:
        member = await bot.get_chat_member(chat_id, bot.id)
    except TelegramError as exc:
        return False, f"{label}: cannot see the bot's rights there ({exc.message})"
    ok, why = can_post(chat, member)
    return ok, f"{label} reachable: {why}"


def can_post(chat: Mapping, member: ChatMember) -> tuple[bool, str]:
    """Whether the bot, as ``member`` of the group or channel ``chat`` (getChat's answer:
    ``type`` and ``permissions``, what a group allows ordinary members), may post."""
    status = member.status
    if status in (ChatMember.LEFT, ChatMember.BANNED):
        return False, "the bot is not a member: add it to the group (or channel)"
    admin = status in (ChatMember.ADMINISTRATOR, ChatMember.OWNER)
    if chat.get("type") == Chat.CHANNEL:
        if admin and (status == ChatMember.OWNER or getattr(member, "can_post_messages", False)):
            return True, "the bot can post there (admin with Post messages)"
        return False, "only admins with 'Post messages' post in a channel: grant the bot that"
    if admin:
        return True, "the bot can post there (admin)"
    if status == ChatMember.RESTRICTED and not getattr(member, "can_send_messages", False):
        return False, "the bot is restricted from sending messages: lift it or make it admin"
    if (chat.get("permissions") or {}).get("can_send_messages") is False:
        return False, "members may not send messages in this group: make the bot an admin"
    return True, "the bot can post there (member)"


async def check_clock(api_url: str, now: datetime | None = None) -> tuple[bool, str]:
    """Compare the local UTC clock with the ``Date`` of an answer of the Bot API root
    (no token in that URL: nothing secret travels for this)."""
    try:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            response = await client.get(f"{api_url}/")
    except httpx.HTTPError as exc:
        return False, f"clock not checked: {api_url} unreachable ({exc})"
    return clock_verdict(response.headers.get("date"), now or datetime.now(UTC))


def clock_verdict(date_header: str | None, now: datetime) -> tuple[bool, str]:
    """✓ when ``now`` is within :data:`MAX_SKEW` of the HTTP ``Date`` header."""
    if not date_header:
        return False, "clock not checked: Telegram's answer had no Date header"
    try:
        server = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return False, f"clock not checked: unreadable Date header {date_header!r}"
    skew = (now - server).total_seconds()
    direction = "ahead of" if skew > 0 else "behind"
    if abs(skew) > MAX_SKEW:
        return False, (f"clock {abs(skew):.0f} s {direction} Telegram's: turn on time sync "
                       "(timedatectl set-ntp true); expiry and dates depend on it")
    return True, f"clock in sync with Telegram's (within {max(abs(skew), 1):.0f} s)"


# --- database ----------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """``url`` without its password (doctor's output gets pasted into issues)."""
    parts = urlparse(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_database(settings: Settings, origin: str, report: Report) -> None:
    label = f"database {shown_url(settings.database_url)} ({origin})"
    db_file = places.sqlite_file(settings.database_url)
    if db_file is not None and not db_file.exists():
        # A first start creates and migrates it: not a failure, unless it cannot.
        if _creatable(db_file.parent):
            report(True, f"{label}: not created yet; `tapgate run` creates and migrates it")
        else:
            report(False, f"{label}: {_nearest(db_file.parent)} is not writable: choose "
                          "another TAPGATE_DATABASE_URL")
        return
    from storage.errors import TapgateError
    from storage.store import Store

    try:
        store = Store.from_url(settings.database_url, workers=1)
        try:
            statuses = store.migration_status()
            store.check_schema()
        finally:
            store.close()
    except TapgateError as exc:
        report(False, f"{label}: {exc}")
        return
    except Exception as exc:  # a driver error: the server is down, a file is not SQLite
        report(False, f"{label} unreachable: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return
    pending = [s.name for s in statuses if s.known and s.applied is None]
    if pending:
        report(False, f"{label}: not migrated ({', '.join(pending)} pending): run "
                      "`tapgate migrate` (`tapgate run` migrates too)")
    else:
        report(True, f"{label}: reachable and migrated")
    if db_file is not None:
        from bot.sqlite_lock import holder

        pid = holder(db_file)
        if pid is not None:  # SQLite is single-instance (bot.cluster.SqliteLock)
            who = f"pid {pid}" if pid > 0 else "another process"
            report(True, f"{label}: served by tapgate run ({who}); SQLite is single-instance, "
                         "a second `tapgate run` on it refuses to start (use PostgreSQL "
                         "for several)")


# --- socket ------------------------------------------------------------------------------------


def _check_socket(settings: Settings, origin: str, report: Report) -> None:
    path = Path(settings.socket_path)
    label = f"socket {path} ({origin})"
    if len(os.fsencode(str(path.absolute()))) > AF_UNIX_MAX:
        report(False, f"{label}: path too long for a Unix socket: set a shorter "
                      "TAPGATE_SOCKET_PATH")
        return
    if set(settings.agent_uids) - {os.getuid()} and not _enterable_by_others(path.parent):
        # The bot creates a missing directory 0700: right for one user, a wall for agents
        # running as other uids.
        report(False, f"{label}: agents of other uids (TAPGATE_SOCKET_ALLOWED_UIDS) cannot "
                      f"reach {path.parent}: give it and its parents mode 0755 (or 0711), "
                      "or use a shared directory such as /run/tapgate")
        return
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if path.parent.is_dir() and _creatable(path.parent):
            report(True, f"{label}: free, and its directory is writable")
        elif _creatable(path.parent):
            report(True, f"{label}: free; `tapgate run` creates {path.parent} (mode 0700)")
        else:
            report(False, f"{label}: cannot create it, {_nearest(path.parent)} is not "
                          "writable: set TAPGATE_SOCKET_PATH")
        return
    if not stat.S_ISSOCK(mode):
        report(False, f"{label}: exists and is not a socket: move it away or set "
                      "TAPGATE_SOCKET_PATH")
        return
    report(*probe_socket(path, settings.expected_server_uid, label))


def probe_socket(path: Path, expected_uid: int, label: str) -> tuple[bool, str]:
    """Who answers on the socket at ``path``: a Tapgate bot of the expected uid, nobody
    (a stale file ``tapgate run`` replaces) or someone else."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3.0)
    try:
        sock.connect(str(path))
        _pid, uid, _gid = peer_credentials(sock)
    except (ConnectionRefusedError, FileNotFoundError):
        return True, f"{label}: a stale socket file, nothing answers; `tapgate run` replaces it"
    except OSError as exc:
        return False, f"{label}: cannot connect ({exc.strerror or exc})"
    finally:
        sock.close()
    if uid != expected_uid:
        # Never talk to it: a squatter's answers are not to be trusted.
        return False, (f"{label}: served by uid {uid}, not uid {expected_uid}: if that is your "
                       "bot's user, set TAPGATE_SOCKET_SERVER_UID; else remove the socket")
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path), verify=False), timeout=5.0,
                          base_url="http://tapgate") as client:
            health = client.get("/v1/health").json()
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"{label}: something answers, but not as Tapgate does ({exc})"
    return True, (f"{label}: a bot is already answering (tapgate {health.get('version')}, "
                  f"{health.get('pending')} pending)")


def _enterable_by_others(directory: Path) -> bool:
    """Do ``directory`` and all its ancestors exist with execute permission for others?"""
    try:
        return all(os.stat(d).st_mode & stat.S_IXOTH
                   for d in (directory, *directory.absolute().parents))
    except OSError:
        return False  # missing: `tapgate run` would create it 0700


def _nearest(path: Path) -> Path:
    """``path`` or its closest existing ancestor (what would hold what we create)."""
    return next(p for p in (path, *path.absolute().parents) if p.exists())


def _creatable(directory: Path) -> bool:
    """Can this user create files in ``directory``, creating it first if need be?"""
    nearest = _nearest(directory)
    return nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)
