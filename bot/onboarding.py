"""``tapgate init``: from a bot token to a working ``bot.env`` in one step.

Finding one's chat id and user id is where new users give up, so ``init`` asks
Telegram instead: it checks the token with ``getMe``, waits for the user to
send ``/start`` to the bot (in a private chat or a group), and writes the token,
that chat id and that user id to ``~/.config/tapgate/bot.env`` (mode 0600).
``tapgate doctor`` (:mod:`bot.doctor`) then checks the whole setup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bot import places
from storage.errors import TapgateError

if TYPE_CHECKING:
    from telegram import Bot, Message

# python-telegram-bot is imported by the commands themselves: the parser that registers
# them also serves the agent hooks, which run before every tool call and must start fast.

DEFAULT_API_URL = "https://api.telegram.org"
TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
POLL_SECONDS = 20  # one long poll; the overall wait is --timeout


class OnboardingError(TapgateError):
    """``init`` cannot go on; the message is the one line printed (exit 2)."""

    code = "onboarding_error"


def cmd_doctor(args: argparse.Namespace, settings: object) -> int:
    from bot.doctor import run_doctor

    return run_doctor(args.env_file)


def api_url() -> str:
    """The Bot API root: ``$TAPGATE_TELEGRAM_API_URL`` or Telegram's."""
    return (os.environ.get("TAPGATE_TELEGRAM_API_URL") or DEFAULT_API_URL).rstrip("/")


def make_bot(token: str, root: str) -> Bot:
    """A PTB Bot against the API root ``root`` (PTB appends the token to these bases)."""
    from telegram import Bot

    return Bot(token, base_url=f"{root}/bot", base_file_url=f"{root}/file/bot")


def cmd_init(args: argparse.Namespace, settings: object) -> int:
    """``tapgate init``: check the token, find the ids, write the env file, say what's next."""
    target = Path(args.env_file) if args.env_file else places.user_env_file()
    if (args.chat_id is None) != (args.user_id is None):
        raise OnboardingError("--chat-id and --user-id go together (or give neither and "
                              "send /start to the bot)")
    # Refuse before the user goes to the trouble of sending /start.
    if target.exists() and not args.force:
        raise OnboardingError(f"{target} exists: pass --force to replace it, or --env-file "
                              "PATH to write elsewhere")
    token = (args.token if args.token is not None else _ask_token()).strip()
    if not TOKEN.match(token):
        raise OnboardingError("TAPGATE_TELEGRAM_TOKEN: that is not a bot token (it looks "
                              "like 123456789:AAE..., from @BotFather)")
    root = api_url()
    username, chat_id, user_id = asyncio.run(
        _find_ids(token, root, args.chat_id, args.user_id, args.timeout))
    values = {"TAPGATE_TELEGRAM_TOKEN": token, "TAPGATE_APPROVER_CHAT_IDS": str(chat_id),
              "TAPGATE_APPROVER_USER_IDS": str(user_id)}
    if root != DEFAULT_API_URL:
        values["TAPGATE_TELEGRAM_API_URL"] = root  # a local Bot API server stays in use
    write_env_file(target, values, args.force)
    print(f"✓ wrote {target} (mode 0600): bot @{username}, approver chat {chat_id}, "
          f"approver user {user_id}")
    local = Path(places.ENV_FILE)
    if local.is_file() and local.resolve() != target.resolve():
        print(f"! ./{places.ENV_FILE} in this directory is read before {target}: remove it, "
              "or run tapgate elsewhere")
    print("Next: tapgate run   (and tapgate doctor to check the setup)")
    return 0


def _ask_token() -> str:
    prompt = "Bot token from @BotFather: "
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    # Piped in (a script): getpass would warn and echo anyway.
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


async def _find_ids(token: str, root: str, chat_id: int | None, user_id: int | None,
                    timeout: float) -> tuple[str, int, int]:
    from telegram.error import InvalidToken, NetworkError, TelegramError

    bot = make_bot(token, root)
    try:
        await bot.initialize()  # getMe
    except InvalidToken:
        # PTB's message may quote the token: never print it.
        raise OnboardingError("TAPGATE_TELEGRAM_TOKEN: rejected by Telegram (copy the token "
                              "from @BotFather again)") from None
    except NetworkError as exc:
        raise OnboardingError(f"cannot reach Telegram at {root}: {exc}") from None
    try:
        if chat_id is not None and user_id is not None:
            return bot.username, chat_id, user_id
        message = await wait_for_start(bot, timeout)
        with contextlib.suppress(TelegramError):  # a courtesy; the ids are what matters
            await bot.send_message(message.chat.id, "Tapgate: this chat and you are now set "
                                   "up to approve requests. Start the bot with `tapgate run`.")
        return bot.username, message.chat.id, message.from_user.id
    finally:
        await bot.shutdown()


def is_start(message: Message | None, username: str) -> bool:
    """``/start`` from a person, or ``/start@<this bot>`` (groups name the bot)."""
    if message is None or message.from_user is None or message.from_user.is_bot:
        return False
    words = (message.text or "").split(maxsplit=1)
    if not words:
        return False
    command, _, addressee = words[0].partition("@")
    return command == "/start" and addressee.lower() in ("", username.lower())


async def wait_for_start(bot: Bot, timeout: float) -> Message:
    """Long-poll ``getUpdates`` until a ``/start`` arrives; OnboardingError after ``timeout``.

    Telegram confirms updates by offset, so everything up to the ``/start`` is
    consumed, but nothing after it: the bot sees those at ``tapgate run``.
    """
    from telegram.error import Conflict, InvalidToken, NetworkError

    from bot.telegram.app import ALLOWED_UPDATES

    name = bot.username
    print(f"Send /start to @{name} in Telegram (https://t.me/{name}), or add the bot to a "
          f"group and send /start@{name} there. Waiting up to {timeout:.0f} s...", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    offset = None
    while (remaining := deadline - loop.time()) > 0:
        try:
            # The bot's own allowed_updates: Telegram keeps the last value given, and a
            # narrower one would discard the taps waiting for `tapgate run`.
            updates = await bot.get_updates(offset=offset, allowed_updates=ALLOWED_UPDATES,
                                            timeout=max(1, int(min(POLL_SECONDS, remaining))))
        except Conflict:
            raise OnboardingError(f"another process is reading @{name}'s updates (is `tapgate "
                                  "run` running? stop it, or pass --chat-id and --user-id)"
                                  ) from None
        except InvalidToken:
            raise OnboardingError("TAPGATE_TELEGRAM_TOKEN: rejected by Telegram") from None
        except NetworkError as exc:  # BadRequest included: both are worth a retry here
            print(f"Telegram: {exc}; retrying", file=sys.stderr, flush=True)
            await asyncio.sleep(min(2.0, max(0.0, deadline - loop.time())))
            continue
        for update in updates:
            if is_start(update.message, name):
                await _confirm_through(bot, update.update_id, ALLOWED_UPDATES)
                return update.message
        if updates:
            offset = updates[-1].update_id + 1
    raise OnboardingError(f"no /start reached @{name} within {timeout:.0f} s: send it and run "
                          "`tapgate init` again, or pass --chat-id and --user-id")


async def _confirm_through(bot: Bot, update_id: int, allowed: list[str]) -> None:
    # An offset confirms every update below it; limit=1 and timeout=0 keep this from
    # waiting, and what it returns is not confirmed until a later offset.
    from telegram.error import TelegramError

    with contextlib.suppress(TelegramError):
        await bot.get_updates(offset=update_id + 1, limit=1, timeout=0, allowed_updates=allowed)


def write_env_file(path: Path, values: dict[str, str], force: bool) -> None:
    """Write ``values`` to ``path`` as mode 0600, creating its directory 0700; an existing
    file is replaced only with ``force`` (atomically), never truncated half-way."""
    places.make_private_dir(path.parent)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"# Written by `tapgate init` on {stamp}. Every setting is described in "
            "bot.env.example.\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise OnboardingError(f"{path} exists: pass --force to replace it") from None
        _write_all(fd, text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_all(fd: int, text: str) -> None:
    try:
        os.fchmod(fd, 0o600)  # the token is a secret; O_CREAT's mode is subject to umask
        with open(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(text)
            f.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
