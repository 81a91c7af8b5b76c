"""``tapgate init`` and ``tapgate doctor`` as real subprocesses against the fake Telegram,
with HOME in a temporary directory (so the well-known places are the test's own)."""

from __future__ import annotations

import asyncio
import inspect
import os
import sqlite3
import stat
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from dotenv import dotenv_values
from telegram import (
    ChatMemberAdministrator,
    ChatMemberLeft,
    ChatMemberMember,
    User,
)

from bot.doctor import can_post, clock_verdict, shown_url
from tests.botproc import BotProcess, bot_env
from tests.test_telegram import ALICE, BOB


def env_for(root: Path, **tapgate: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPGATE_", "XDG_"))}
    env.update(HOME=str(root / "home"), PTB_TIMEDELTA="1", PYTHONUNBUFFERED="1",
               **{f"TAPGATE_{k.upper()}": v for k, v in tapgate.items()})
    return env


class Cli:
    """One ``python -m bot ...`` run: ``start`` then ``finish`` (or ``run`` for both)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str, stdin: bytes | None = None) -> Cli:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, cwd=self.root / "work", env=self.env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._stdin = stdin
        return self

    async def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(self._stdin), timeout)
        return self.proc.returncode, out.decode(), err.decode()

    async def run(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        await self.start(*args, stdin=stdin)
        return await self.finish()


def env_file(root: Path) -> Path:
    return root / "home" / ".config" / "tapgate" / "bot.env"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- init ---------------------------------------------------------------------------------------


async def test_init_finds_the_ids_from_a_start_and_writes_a_private_file(fake, home):
    # Queued before init polls, so they all come in its first batch.
    fake.send_text(BOB.id, BOB, "hello")
    fake.send_text(-1001234, BOB, "/start@some_other_bot", chat_type="supergroup")
    fake.send_text(-1001234, ALICE, "/start@tapgate_bot", chat_type="supergroup")
    after = fake.send_text(BOB.id, BOB, "/help")
    code, out, err = await Cli(home, env_for(home, telegram_api_url=fake.url)).run(
        "init", "--token", fake.token)
    assert (code, err) == (0, ""), err
    assert "/start to @tapgate_bot" in out and "Next: tapgate run" in out
    path = env_file(home)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700  # ~/.config did not exist either
    values = dotenv_values(path)
    assert values == {"TAPGATE_TELEGRAM_TOKEN": fake.token,
                      "TAPGATE_APPROVER_CHAT_IDS": "-1001234",
                      "TAPGATE_APPROVER_USER_IDS": str(ALICE.id),
                      "TAPGATE_TELEGRAM_API_URL": fake.url}
    # Confirmed through the /start it used, not past it: `tapgate run` still gets /help.
    assert [u["update_id"] for u in fake.pending_updates] == [after]
    assert "set up to approve" in fake.messages(-1001234)[-1].text


async def test_init_waits_for_a_start_sent_later_in_a_private_chat(fake, home):
    cli = await Cli(home, env_for(home, telegram_api_url=fake.url)).start(
        "init", "--token", fake.token)
    await fake.wait_polling(timeout=30)
    fake.send_text(ALICE.id, ALICE, "/start")
    code, out, err = await cli.finish()
    assert code == 0, err
    values = dotenv_values(env_file(home))
    assert (values["TAPGATE_APPROVER_CHAT_IDS"], values["TAPGATE_APPROVER_USER_IDS"]) == (
        str(ALICE.id), str(ALICE.id))
    assert fake.pending_updates == []


async def test_init_never_overwrites_without_force(fake, home):
    cli = Cli(home, env_for(home, telegram_api_url=fake.url))
    code, _, err = await cli.run("init", "--token", fake.token, "--chat-id", "1001",
                                 "--user-id", "1001")
    assert code == 0, err
    before = env_file(home).read_text()
    calls = len(fake.calls)
    code, out, err = await cli.run("init", "--token", fake.token, "--chat-id", "7",
                                   "--user-id", "7")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "exists" in err and "--force" in err
    assert env_file(home).read_text() == before
    assert len(fake.calls) == calls  # refused before asking Telegram anything
    code, _, err = await cli.run("init", "--force", "--token", fake.token, "--chat-id", "7",
                                 "--user-id", "8")
    assert code == 0, err
    values = dotenv_values(env_file(home))
    assert (values["TAPGATE_APPROVER_CHAT_IDS"], values["TAPGATE_APPROVER_USER_IDS"]) == (
        "7", "8")
    assert mode(env_file(home)) == 0o600
    assert [p.name for p in env_file(home).parent.iterdir()] == ["bot.env"]  # no temp left


async def test_init_non_interactive_asks_telegram_only_for_getme(fake, home):
    target = home / "work" / "custom.env"
    code, out, err = await Cli(home, env_for(home, telegram_api_url=fake.url)).run(
        "init", "--token", fake.token, "--chat-id", "-100777", "--user-id", "42",
        "--env-file", str(target))
    assert code == 0, err
    assert {c.method for c in fake.calls} == {"getMe"}
    assert dotenv_values(target)["TAPGATE_APPROVER_CHAT_IDS"] == "-100777"
    assert mode(target) == 0o600 and not env_file(home).exists()
    assert str(target) in out


async def test_init_reads_a_piped_token(fake, home):
    code, _, err = await Cli(home, env_for(home, telegram_api_url=fake.url)).run(
        "init", "--chat-id", "1", "--user-id", "2", stdin=f"{fake.token}\n".encode())
    assert code == 0, err
    assert dotenv_values(env_file(home))["TAPGATE_TELEGRAM_TOKEN"] == fake.token


@pytest.mark.parametrize("args,needle", [
    (["--token", "999:WRONG-TOKEN"], "TAPGATE_TELEGRAM_TOKEN: rejected by Telegram"),
    (["--token", "not a token"], "TAPGATE_TELEGRAM_TOKEN: that is not a bot token"),
    (["--token", "999:WRONG-TOKEN", "--chat-id", "1"], "--chat-id and --user-id go together"),
])
async def test_init_refusals_are_one_line_exit_2(fake, home, args, needle):
    code, out, err = await Cli(home, env_for(home, telegram_api_url=fake.url)).run(
        "init", *args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and needle in err
    assert "WRONG-TOKEN" not in err
    assert not env_file(home).exists()


async def test_init_gives_up_after_the_timeout(fake, home):
    code, _, err = await Cli(home, env_for(home, telegram_api_url=fake.url)).run(
        "init", "--token", fake.token, "--timeout", "1")
    assert code == 2 and "no /start reached @tapgate_bot within 1 s" in err
    assert not env_file(home).exists()


# --- doctor -------------------------------------------------------------------------------------


def doctor_env(home: Path, fake, db_url: str, socket: Path, **extra: str) -> dict[str, str]:
    env = bot_env(fake, db_url, socket)
    env.update(HOME=str(home / "home"), **{f"TAPGATE_{k.upper()}": v for k, v in extra.items()})
    return env


def lines(out: str) -> list[str]:
    return out.strip().splitlines()


async def test_doctor_all_pass_with_a_running_bot(fake, home, sqlite_url):
    async with BotProcess(fake, sqlite_url) as bot:
        code, out, err = await Cli(home, doctor_env(home, fake, sqlite_url, bot.socket_path)
                                   ).run("doctor")
    assert (code, err) == (0, ""), out + err
    assert all(line.startswith("✓ ") for line in lines(out)), out
    text = out
    assert "settings valid (from the environment only" in text
    assert "token accepted: the bot is @tapgate_bot" in text
    assert "chat 1001 (private" in text and "chat 1002 (private" in text
    assert f"database {sqlite_url} (TAPGATE_DATABASE_URL in the environment): reachable " \
           "and migrated" in text
    assert f"socket {bot.socket_path}" in text and "a bot is already answering" in text
    assert "clock in sync" in text
    assert f"served by tapgate run (pid {bot.proc.pid}); SQLite is single-instance" in text
    assert len(lines(out)) == 8


async def test_doctor_on_a_fresh_init_passes_and_names_the_well_known_places(fake, home):
    cli = Cli(home, env_for(home, telegram_api_url=fake.url))
    code, _, err = await cli.run("init", "--token", fake.token, "--chat-id", "1001",
                                 "--user-id", "1001")
    assert code == 0, err
    code, out, err = await cli.run("doctor")
    assert code == 0, out + err
    state = home / "home" / ".local" / "state" / "tapgate"
    assert f"settings valid (from {env_file(home)})" in out
    assert f"database sqlite:///{state}/tapgate.db (the well-known default): not created " \
           "yet" in out
    assert f"socket {state}/tapgate.sock (the well-known default): free" in out
    assert not state.exists()  # doctor creates nothing


async def test_doctor_flags_an_unreachable_chat_and_an_unmigrated_database(fake, home):
    empty = home / "work" / "empty.db"
    sqlite3.connect(empty).close()
    fake.set_chat_unavailable(1002)
    url = f"sqlite:///{empty}"
    code, out, err = await Cli(home, doctor_env(home, fake, url, home / "t.sock")).run("doctor")
    assert code == 1, out + err
    failed = [line for line in lines(out) if line.startswith("✗ ")]
    assert len(failed) == 2, out
    assert failed[0].startswith("✗ chat 1002 unreachable (Forbidden: bot was kicked")
    assert "TAPGATE_APPROVER_CHAT_IDS" in failed[0]
    assert failed[1].startswith(f"✗ database {url}") and "not migrated" in failed[1]
    assert "run `tapgate migrate`" in failed[1]
    assert "✓ chat 1001 (private" in out and f"✓ socket {home / 't.sock'}" in out


async def test_doctor_flags_a_rejected_token(fake, home, sqlite_url):
    env = doctor_env(home, fake, sqlite_url, home / "t.sock", telegram_token="999:WRONG")
    code, out, err = await Cli(home, env).run("doctor")
    assert code == 1, out + err
    assert [line for line in lines(out) if line.startswith("✗")] == [
        "✗ token rejected by Telegram: get it again from @BotFather and run `tapgate init "
        "--force` (or fix TAPGATE_TELEGRAM_TOKEN)"]
    assert "WRONG" not in out + err
    assert "chat 1001" not in out  # not checked without a working token


async def test_doctor_flags_invalid_settings_and_a_socket_that_is_no_socket(fake, home,
                                                                         sqlite_url):
    env = doctor_env(home, fake, sqlite_url, home / "t.sock", default_ttl="forever")
    code, out, _ = await Cli(home, env).run("doctor")
    assert code == 1 and lines(out) == [
        "✗ settings: TAPGATE_DEFAULT_TTL: invalid duration 'forever' (use seconds or 90s, "
        "15m, 24h, 7d): fix it (or run `tapgate init`)"]
    # Agents of another uid cannot enter a directory the bot would create 0700.
    env = doctor_env(home, fake, sqlite_url, home / "private" / "t.sock",
                     socket_allowed_uids=str(os.getuid() + 1))
    code, out, _ = await Cli(home, env).run("doctor")
    assert code == 1 and "cannot reach" in out and "TAPGATE_SOCKET_ALLOWED_UIDS" in out
    (home / "private").mkdir()
    os.chmod(home / "private", 0o755)  # whatever the umask
    code, out, _ = await Cli(home, env).run("doctor")
    assert code == 1 and "cannot reach" in out  # mkdtemp made its parent 0700
    os.chmod(home, 0o755)
    code, out, _ = await Cli(home, env).run("doctor")
    assert code == 0, out
    (home / "plain").write_text("")
    code, out, _ = await Cli(home, doctor_env(home, fake, sqlite_url, home / "plain")
                             ).run("doctor")
    assert code == 1 and "✗ socket" in out and "is not a socket" in out


# --- the verdicts, for what the fake cannot stage ----------------------------------------------


BOT_USER = User(123456, "Tapgate", is_bot=True)


def admin(**rights: bool) -> ChatMemberAdministrator:
    """The bot as an administrator with every right false except ``rights``."""
    params = inspect.signature(ChatMemberAdministrator).parameters
    flags = {name: rights.get(name, False) for name, p in params.items()
             if name.startswith(("can_", "is_")) and p.default is inspect.Parameter.empty}
    return ChatMemberAdministrator(BOT_USER, **flags, **{
        k: v for k, v in rights.items() if k not in flags})


@pytest.mark.parametrize("chat,member,ok", [
    ({"type": "group"}, ChatMemberMember(BOT_USER), True),
    ({"type": "group"}, ChatMemberLeft(BOT_USER), False),
    ({"type": "channel"}, ChatMemberMember(BOT_USER), False),
    ({"type": "channel"}, admin(can_post_messages=False), False),
    ({"type": "channel"}, admin(can_post_messages=True), True),
    ({"type": "supergroup", "permissions": {"can_send_messages": False}}, admin(), True),
])
def test_can_post(chat, member, ok):
    assert can_post(chat, member)[0] is ok


def test_a_group_where_members_may_not_write_needs_an_admin_bot():
    chat = {"type": "supergroup", "permissions": {"can_send_messages": False}}
    ok, why = can_post(chat, ChatMemberMember(BOT_USER))
    assert not ok and "make the bot an admin" in why


def test_clock_verdict():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert clock_verdict(format_datetime(now - timedelta(seconds=2), usegmt=True), now)[0]
    ok, text = clock_verdict(format_datetime(now - timedelta(seconds=45), usegmt=True), now)
    assert not ok and "45 s ahead of Telegram's" in text
    assert not clock_verdict(None, now)[0] and not clock_verdict("yesterday", now)[0]


def test_shown_url_hides_the_password():
    assert shown_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert shown_url("sqlite:////x/t.db") == "sqlite:////x/t.db"
