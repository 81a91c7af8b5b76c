"""The ``tapgate`` command line.

``tapgate request`` runs as a real subprocess (``python -m bot``) against a
server in the test's loop; the read-only commands run in-process on each
backend (they read the database directly).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.cli import main
from storage.clock import utcnow
from storage.records import (
    NewApproval,
    NewCheckpoint,
    NewLedgerEntry,
    RunUpsert,
)
from storage.store import Store
from tests.test_api import lite, short_dir  # noqa: F401  (the fixture)
from tests.test_client import approver

ROOT = Path(__file__).resolve().parent.parent


async def tapgate(harness, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Run ``python -m bot ARGS`` against ``harness``'s socket; (exit code, stdout, stderr)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT),
                   "TAPGATE_SOCKET_PATH": str(harness.path) if harness else "/nonexistent.sock",
                   "TAPGATE_DATABASE_URL": "sqlite:////nonexistent/never.db", **(env or {})}
    cwd = short_dir()  # no bot.env there
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args, env=environment, cwd=str(cwd),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return proc.returncode, stdout.decode(), stderr.decode()


# --- tapgate request (subprocess, over the socket) ------------------------------------------------


async def test_request_waits_for_approval(lite):  # noqa: F811
    approver(lite, "approved")
    code, stdout, stderr = await tapgate(lite, "request", "--kind", "shell", "--summary",
                                         "rm -rf build/", "--agent", "ci", "--wait")
    assert code == 0, stderr
    decided = json.loads(stdout)
    assert decided["status"] == "approved" and decided["agent"] == "ci"
    assert decided["decided_by"] == "telegram:7 (@carol)"


async def test_request_denied(lite, tmp_path):  # noqa: F811
    approver(lite, "denied", reason="not today")
    payload = tmp_path / "payload.json"
    payload.write_text('{"cmd": ["rm", "-rf", "/"]}')
    code, stdout, _ = await tapgate(lite, "request", "--kind", "shell", "--summary", "wipe",
                                    "--payload", f"@{payload}", "--wait", "30")
    assert code == 1
    denied = json.loads(stdout)
    assert denied["status"] == "denied" and denied["reason"] == "not today"
    assert denied["payload"] == {"cmd": ["rm", "-rf", "/"]}


async def test_request_expires(lite):  # noqa: F811
    code, stdout, _ = await tapgate(lite, "request", "--kind", "k", "--summary", "s",
                                    "--ttl", "1s", "--wait")
    assert code == 3 and json.loads(stdout)["status"] == "expired"


async def test_request_still_pending(lite):  # noqa: F811
    code, stdout, _ = await tapgate(lite, "request", "--kind", "k", "--summary", "s",
                                    "--ttl", "10m", "--wait", "1")
    assert code == 4
    pending = json.loads(stdout)
    assert pending["status"] == "pending"
    assert (await lite.manager.get(pending["id"])).status == "pending"


async def test_request_without_wait(lite):  # noqa: F811
    code, stdout, _ = await tapgate(lite, "request", "--kind", "k", "--summary", "s",
                                    "--payload", "plain words", "--idempotency-key", "once")
    assert code == 0
    accepted = json.loads(stdout)
    assert accepted["status"] == "pending" and accepted["payload"] == "plain words"
    code, again, _ = await tapgate(lite, "request", "--kind", "k", "--summary", "s",
                                   "--payload", "plain words", "--idempotency-key", "once")
    assert code == 0 and json.loads(again)["id"] == accepted["id"]
    code, _, stderr = await tapgate(lite, "request", "--kind", "k", "--summary", "")
    assert code == 2 and stderr.count("\n") == 1 and "validation_error" in stderr


async def test_request_with_approvers_and_the_person_acted_for(lite):  # noqa: F811
    code, stdout, stderr = await tapgate(lite, "request", "--kind", "deploy", "--summary",
                                         "ship v2", "--required-approvals", "2",
                                         "--requested-by", "1001")
    assert code == 0, stderr
    made = json.loads(stdout)
    assert (made["required_approvals"], made["requested_by"]) == (2, 1001)
    for flag, bad, says in [("--required-approvals", "11", "from 1 to 10"),
                            ("--required-approvals", "two", "from 1 to 10"),
                            ("--requested-by", "0", "Telegram user id")]:
        code, stdout, stderr = await tapgate(lite, "request", "--kind", "k", "--summary", "s",
                                             flag, bad)
        assert (code, stdout) == (2, "") and says in stderr.splitlines()[-1], stderr


async def test_request_errors_are_one_line():
    code, stdout, stderr = await tapgate(None, "request", "--kind", "k", "--summary", "s")
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1 and "/nonexistent.sock" in stderr
    assert "Traceback" not in stderr
    code, _, stderr = await tapgate(None, "request", "--kind", "k", "--summary", "s",
                                    "--ttl", "soon")
    assert code == 2 and "invalid duration" in stderr
    code, _, stderr = await tapgate(None, "pending", env={"TAPGATE_DEFAULT_TTL": "abc"})
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("TAPGATE_DEFAULT_TTL:")


# --- read-only commands (in-process, both backends) ----------------------------------------------


@pytest.fixture
def cli_env(db_url, monkeypatch, tmp_path):
    """Settings pointing at a populated database; a cwd without bot.env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)
    store = Store.from_url(db_url)
    now = utcnow()
    old = store.create_approval(NewApproval(agent="deployer", kind="shell",
                                            summary="rm -rf build/ " + "x" * 80,
                                            ttl_seconds=3600),
                                now=now - timedelta(minutes=30))[0]
    store.create_approval(NewApproval(agent="bot", kind="pay", summary="pay $5", ttl_seconds=60))
    store.upsert_run(RunUpsert(id="r1", name="nightly", budget_tokens=10_000,
                               budget_dollars=2.0, metadata={"team": "infra"}))
    store.upsert_run(RunUpsert(id="r2", name="adhoc"))
    store.append_ledger([
        NewLedgerEntry(run_id="r1", provider="openai", model="gpt-4o", prompt_tokens=1000,
                       completion_tokens=234, dollars=0.5),
        NewLedgerEntry(run_id="r2", provider="x", model="mystery", prompt_tokens=10,
                       dollars=None, priced=False),
    ])
    store.save_checkpoint(NewCheckpoint(run_id="r1", name="after-plan",
                                        payload={"plan": ["a", "b"]}))
    store.cancel_run("r2")
    store.close()
    return {"oldest": old.id}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pending(cli_env, capsys):
    code, out, _ = run_cli(capsys, "pending")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AGE", "EXPIRES", "IN", "AGENT", "KIND", "SUMMARY"]
    assert lines[1].startswith(cli_env["oldest"]) and " 30m " in lines[1]
    assert "…" in lines[1] and len(lines) == 3
    code, out, _ = run_cli(capsys, "pending", "--json")
    items = json.loads(out)["items"]
    assert [a["kind"] for a in items] == ["shell", "pay"] and items[0]["status"] == "pending"


def test_runs(cli_env, capsys):
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert "1,234 / 10,000 (12%)" in out and "halted (cancelled)" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--status", "halted", "--json")
    assert [r["id"] for r in json.loads(out)["items"]] == ["r2"]

    code, out, _ = run_cli(capsys, "runs", "show", "r1")
    assert code == 0
    assert "tokens    1,234 / 10,000 (12%)" in out
    assert "dollars   $0.5000 / $2.0000 (25%)" in out
    assert "loops     0 / unlimited" in out and "team=infra" in out
    assert "latest checkpoint: #" in out and "'after-plan'" in out
    assert '"plan": [\n    "a",' in out  # the payload, pretty
    code, out, _ = run_cli(capsys, "runs", "show", "r1", "--json")
    shown = json.loads(out)
    assert shown["run"]["usage_prompt_tokens"] == 1000
    assert shown["latest_checkpoint"]["payload"] == {"plan": ["a", "b"]}
    code, out, _ = run_cli(capsys, "runs", "show", "r2")
    assert "latest checkpoint: none" in out
    code, out, err = run_cli(capsys, "runs", "show", "ghost")
    assert (code, out) == (2, "") and err == "run ghost not found\n"


def test_spend(cli_env, capsys):
    code, out, _ = run_cli(capsys, "spend", "--by", "model")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "CALLS", "PROMPT", "COMPLETION", "DOLLARS"]
    assert lines[1].split() == ["gpt-4o", "1", "1,000", "234", "0.5000"]
    assert lines[3].split() == ["TOTAL", "2", "1,010", "234", "0.5000"]
    assert lines[4] == "unpriced calls: 1"
    code, out, _ = run_cli(capsys, "spend", "--by", "metadata.team", "--since", "2000-01-01",
                           "--until", "2999-01-01T00:00:00Z", "--json")
    summary = json.loads(out)
    assert summary["by"] == "metadata.team" and summary["since"] == "2000-01-01T00:00:00Z"
    assert {g["key"] for g in summary["groups"]} == {"infra", "(none)"}
    assert summary["total"]["key"] == "total" and summary["unpriced_calls"] == 1
    code, _, err = run_cli(capsys, "spend", "--by", "colour")
    assert code == 2 and err.startswith("invalid grouping")


def test_migrate_status_and_newer_schema(cli_env, db_url, capsys):
    code, out, _ = run_cli(capsys, "migrate", "--status")
    assert code == 0 and out.splitlines()[0].split() == ["INDEX", "NAME", "APPLIED"]
    assert "0001_initial" in out and "pending" not in out
    code, out, _ = run_cli(capsys, "migrate", "--status", "--json")
    assert json.loads(out)["items"][0]["known"] is True
    assert run_cli(capsys, "migrate")[1] == "up to date\n"

    def history(sql: str) -> None:
        store = Store.from_url(db_url)
        store.db.execute_sql(sql)
        store.close()

    history("INSERT INTO schema_migration (name, applied) VALUES "
            "('9999_from_the_future', '2030-01-01 00:00:00')")
    try:
        code, out, _ = run_cli(capsys, "migrate", "--status")
        assert "9999_from_the_future  UNKNOWN (newer than this tapgate)" in out
        for args in (("migrate",), ("pending",), ("spend",)):
            code, out, err = run_cli(capsys, *args)
            assert (code, out) == (2, "") and err.count("\n") == 1
            assert "newer than this binary" in err
    finally:  # the PostgreSQL database is shared by the whole session
        history("DELETE FROM schema_migration WHERE name = '9999_from_the_future'")


def test_read_only_commands_do_not_migrate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAPGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, _, err = run_cli(capsys, "pending")
    assert code == 2 and "no database" in err and not (tmp_path / "fresh.db").exists()
    Store.from_url(f"sqlite:///{tmp_path / 'fresh.db'}").close()  # an empty file
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2 and "tapgate migrate" in err
    assert run_cli(capsys, "migrate")[1] == (
        "applied 0001_initial, 0002_trust, 0003_decisions, 0004_cluster, 0005_webhook, "
        "0006_teams, 0007_routes, 0008_topics, 0009_digests, 0010_policy_teams, "
        "0011_rule_uid, 0012_route_approvers\n")
    assert run_cli(capsys, "pending")[1] == "no pending requests\n"


def test_bad_setting_and_env_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAPGATE_DEFAULT_TTL", "abc")
    code, out, err = run_cli(capsys, "pending")
    assert (code, out) == (2, "") and err.startswith("TAPGATE_DEFAULT_TTL:")
    assert err.count("\n") == 1
    code, _, err = run_cli(capsys, "--env-file", str(tmp_path / "missing.env"), "pending")
    assert code == 2 and "missing.env" in err
    with pytest.raises(SystemExit) as usage:
        main(["request", "--summary", "no kind"])
    assert usage.value.code == 2
