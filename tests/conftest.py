"""Shared fixtures: a migrated Store on SQLite (temp file) and on PostgreSQL.

PostgreSQL: ``TAPGATE_TEST_POSTGRES_URL`` (default the local trust-auth
server) names a server; one fresh database is created per test session and
dropped at the end; tables are emptied before each test. When ``CI`` is set
an unreachable server fails the Postgres tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
from peewee import AutoField

from storage.models import ALL_MODELS
from storage.store import Store

os.environ.setdefault("PTB_TIMEDELTA", "1")

PG_URL = os.environ.get("TAPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = bool(os.environ.get("CI"))


def _with_db(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{name}"))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No TAPGATE_ variable, env file or XDG place but the test's own: HOME is a fresh
    directory (no ~/.config/tapgate/bot.env) and so is the working one (no bot.env)."""
    for key in list(os.environ):
        if key.startswith(("TAPGATE_", "XDG_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def home():
    """A short temporary directory (AF_UNIX paths are short) holding ``home`` and ``work``:
    a user's home and working directory for the CLI and doctor tests."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="tgo-"))
    (root / "home").mkdir()
    (root / "work").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url():
    """The URL of a fresh, migrated PostgreSQL database for this test session."""
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable and CI is set: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({exc}); set "
                    "TAPGATE_TEST_POSTGRES_URL to run the PostgreSQL tests")
    name = f"tapgate_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(PG_URL, name)
    store = Store.from_url(url)
    store.migrate()
    store.close()
    try:
        yield url
    finally:
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        try:
            admin.execute(drop)
        except psycopg.OperationalError:
            # A test restarted the server (tests/test_db_faults.py) and this idle
            # connection died with it: drop on a new one.
            with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as fresh:
                fresh.execute(drop)
        finally:
            admin.close()


@pytest.fixture
def db(pg_url):
    """A fresh, empty PostgreSQL database of its own, dropped afterwards (several
    instances of the bot share it; they migrate it themselves)."""
    from tests.clusterproc import drop_database, fresh_database

    url = fresh_database(PG_URL)
    try:
        yield url
    finally:
        drop_database(PG_URL, url)


def _empty_postgres(url: str) -> None:
    """Empty every table and restart its id sequence. DELETE, not TRUNCATE: TRUNCATE
    makes new files for each of ~20 tables (~0.8 s a test), deleting a test's few rows
    takes milliseconds. Foreign keys are not checked meanwhile (replica role; the test
    server is a superuser), so the order does not matter."""
    serial = [m._meta.table_name for m in ALL_MODELS
              if isinstance(m._meta.primary_key, AutoField)]
    sql = ["SET session_replication_role = replica"]
    sql += [f'DELETE FROM "{m._meta.table_name}"' for m in ALL_MODELS]
    sql += [f"SELECT setval(pg_get_serial_sequence('\"{t}\"', 'id'), 1, false)" for t in serial]
    sql += ["SET session_replication_role = DEFAULT"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(";".join(sql))


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    """One migrated SQLite file per session: each test gets a copy (a copy takes well
    under a millisecond, migrating a new file ~150 ms, and hundreds of tests need one)."""
    path = tmp_path_factory.mktemp("template") / "tapgate.db"
    store = Store.from_url(f"sqlite:///{path}")
    store.migrate()
    store.close()  # the last connection checkpoints the WAL into the file
    return path


def _fresh_sqlite(request, tmp_path: Path) -> str:
    path = tmp_path / "tapgate.db"
    shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A migrated, empty database URL, on each backend in turn."""
    if request.param == "sqlite":
        return _fresh_sqlite(request, tmp_path)
    url = request.getfixturevalue("pg_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def sqlite_url(request, tmp_path):
    """A migrated, empty SQLite database URL (for tests that need one backend only)."""
    return _fresh_sqlite(request, tmp_path)


@pytest.fixture
def store(db_url):
    """A Store on a migrated, empty database (each backend in turn)."""
    s = Store.from_url(db_url)
    yield s
    s.close()


@pytest.fixture
async def fake():
    """A fake Telegram Bot API server on a random port."""
    from tests.fake_telegram import FakeTelegram

    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def service(fake, db_url):
    """The whole bot (no socket) against ``fake``, listening for updates."""
    from bot.service import Service
    from tests.test_telegram import settings_for

    svc = Service(settings_for(fake, db_url), with_socket=False)
    await svc.start()
    await fake.wait_polling()
    yield svc
    await svc.stop()
