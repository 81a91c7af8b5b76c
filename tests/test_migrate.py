"""Migrations: applying, status, downgrade protection and concurrent starts, on both backends."""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from storage.db import open_database
from storage.errors import InvalidArgument, SchemaTooNew
from storage.instances import TABLES as CLUSTER_TABLES
from storage.migrate import current_version
from storage.models import ALL_MODELS
from storage.store import Store

# Written out, not read from the folder: a migration renamed, lost or added by mistake
# must fail here.
MIGRATIONS = ["0001_initial", "0002_trust", "0003_decisions", "0004_cluster", "0005_webhook",
              "0006_teams", "0007_routes", "0008_topics", "0009_digests", "0010_policy_teams",
              "0011_rule_uid", "0012_route_approvers"]
ADMIN_URL = os.environ.get("TAPGATE_TEST_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path):
    """The URL of an empty, never migrated database (a new file / a new PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("pg_url")  # skips (or fails in CI) when PostgreSQL is unreachable
    name = f"tapgate_migrate_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(urlparse(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect_raw(url: str):
    """A driver connection that bypasses the Store entirely."""
    if url.startswith("sqlite:"):
        return sqlite3.connect(urlparse(url).path, isolation_level=None)
    return psycopg.connect(url, autocommit=True)


def snapshot(url: str) -> tuple:
    """Every table with its columns and indexes, and the migration history."""
    conn = connect_raw(url)
    try:
        if url.startswith("sqlite:"):
            schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                  "ORDER BY type, name").fetchall()
        else:
            schema = conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, column_name").fetchall()
            schema += conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                   "WHERE schemaname = 'public' ORDER BY indexname").fetchall()
        history = conn.execute("SELECT * FROM schema_migration ORDER BY name").fetchall()
        return schema, history
    finally:
        conn.close()


def tables(url: str) -> set[str]:
    conn = connect_raw(url)
    try:
        if url.startswith("sqlite:"):
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        else:
            rows = conn.execute("SELECT tablename FROM pg_tables "
                                "WHERE schemaname = 'public'").fetchall()
        return {r[0] for r in rows if not r[0].startswith("sqlite_")}
    finally:
        conn.close()


def add_future_migration(url: str) -> None:
    conn = connect_raw(url)
    try:
        param = "?" if url.startswith("sqlite:") else "%s"
        conn.execute(f"INSERT INTO schema_migration (name, applied) VALUES ({param}, {param})",
                     ("9999_future", "2030-01-01 00:00:00"))
    finally:
        conn.close()


@pytest.fixture
def open_store():
    """Open Stores from URLs and close them all at the end."""
    stores: list[Store] = []

    def make(url: str) -> Store:
        store = Store.from_url(url)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_migrate_empty_database(fresh_url, open_store):
    store = open_store(fresh_url)
    status = store.migration_status()
    assert [(s.index, s.name, s.known, s.applied) for s in status] == [
        (i, name, True, None) for i, name in enumerate(MIGRATIONS, 1)]
    store.check_schema()  # an empty database is not too new
    assert current_version(store.db) == 0

    assert store.migrate() == MIGRATIONS
    assert store.migrate() == []
    status = store.migration_status()
    assert [(s.index, s.name, s.known) for s in status] == [
        (i, name, True) for i, name in enumerate(MIGRATIONS, 1)]
    assert all(s.applied is not None for s in status)
    assert current_version(store.db) == len(MIGRATIONS)
    store.check_schema()
    # The cluster's tables (migration 0004) are read with SQL of their own, not models.
    assert {m._meta.table_name for m in ALL_MODELS} | {"schema_migration"} | set(
        CLUSTER_TABLES) == tables(fresh_url)


def test_models_describe_the_migrated_tables(fresh_url, open_store):
    store = open_store(fresh_url)
    store.migrate()
    store.db.connect(reuse_if_open=True)
    for model in ALL_MODELS:
        table = model._meta.table_name
        columns = {c.name for c in store.db.get_columns(table)}
        assert columns == {f.column_name for f in model._meta.sorted_fields}, table


def test_a_newer_schema_is_refused_and_left_alone(fresh_url, open_store):
    open_store(fresh_url).migrate()
    add_future_migration(fresh_url)
    before = snapshot(fresh_url)

    store = open_store(fresh_url)
    with pytest.raises(SchemaTooNew) as info:
        store.migrate()
    assert "on-disk v9999 > binary v12" in str(info.value)
    assert "9999_future" in str(info.value)
    assert (info.value.on_disk, info.value.binary, info.value.unknown) == (
        9999, len(MIGRATIONS), ["9999_future"])
    assert snapshot(fresh_url) == before

    with pytest.raises(SchemaTooNew) as info:
        store.check_schema()
    assert "on-disk v9999 > binary v12" in str(info.value)
    assert snapshot(fresh_url) == before

    status = store.migration_status()
    assert [(s.name, s.known, s.applied is not None) for s in status] == [
        *((name, True, True) for name in MIGRATIONS), ("9999_future", False, True)]
    assert snapshot(fresh_url) == before


def test_a_newer_schema_is_refused_before_anything_is_created(fresh_url, open_store):
    """Only the history exists, naming a migration we lack: not even 0001 may run."""
    conn = connect_raw(fresh_url)
    try:
        id_column = ("id INTEGER PRIMARY KEY" if fresh_url.startswith("sqlite:")
                     else "id SERIAL PRIMARY KEY")
        conn.execute(f"CREATE TABLE schema_migration ({id_column}, "
                     "name VARCHAR(255) NOT NULL UNIQUE, applied TIMESTAMP NOT NULL)")
    finally:
        conn.close()
    add_future_migration(fresh_url)
    before = snapshot(fresh_url)
    store = open_store(fresh_url)
    with pytest.raises(SchemaTooNew, match=r"on-disk v9999 > binary v12"):
        store.migrate()
    assert tables(fresh_url) == {"schema_migration"}
    assert snapshot(fresh_url) == before


def test_concurrent_migrations_apply_once(fresh_url):
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            store = Store.from_url(fresh_url)
            try:
                barrier.wait(timeout=30)
                results.append(store.migrate())
            finally:
                store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    assert sorted(results) == [[], [], [], MIGRATIONS]
    history = snapshot(fresh_url)[1]
    assert [row[1] for row in history] == MIGRATIONS


@pytest.mark.parametrize("url", [
    "mysql://user@localhost/db",
    "redis://localhost",
    "http://example.com/db",
    "tapgate.db",
    "",
    "sqlite:///:memory:",
    "sqlite://",
    "sqlite:///",
    "sqlite:///file::memory:?cache=shared",
])
def test_open_database_rejects_unusable_urls(url):
    with pytest.raises(InvalidArgument):
        open_database(url)
    with pytest.raises(InvalidArgument):
        Store.from_url(url)
