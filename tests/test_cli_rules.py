"""``tapgate rules list|add|revoke``: in-process, on the database directly, both backends."""

from __future__ import annotations

import json

import pytest

from bot.cli import main
from storage.records import NewApproval, RunUpsert
from storage.store import Store
from tests.test_cli import run_cli


@pytest.fixture
def rules_env(db_url, monkeypatch, tmp_path):
    """Settings pointing at the database (one run, ``s1``); a cwd without bot.env."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("TAPGATE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)
    store = Store.from_url(db_url)
    store.upsert_run(RunUpsert(id="s1", name="session"))
    store.upsert_run(RunUpsert(id="done", name="finished"))
    store.complete_run("done")
    store.close()
    return db_url


def submit(url: str, summary: str, run_id: str | None = None, kind: str = "Bash") -> str:
    store = Store.from_url(url)
    try:
        approval, _ = store.create_approval(NewApproval(agent="claude-code", kind=kind,
                                                        summary=summary, ttl_seconds=60,
                                                        run_id=run_id))
    finally:
        store.close()
    return approval.status


def test_add_list_revoke(rules_env, capsys):
    assert run_cli(capsys, "rules", "list") == (0, "no rules\n", "")
    code, out, err = run_cli(capsys, "rules", "add", "--agent", "claude-code", "--kind", "Bash",
                             "--match", "git *")
    assert code == 0, err
    assert out.startswith("added rule #1: claude-code Bash 'git *' in any run")
    code, out, _ = run_cli(capsys, "rules", "add", "--agent", "claude-code", "--kind", "Bash",
                           "--match", "make test", "--run", "s1", "--ttl", "8h", "--json")
    session = json.loads(out)
    assert session["run_id"] == "s1" and session["expires_at"] and session["id"] == 2
    assert session["created_by"].startswith("cli:")

    assert submit(rules_env, "git status") == "approved"
    assert submit(rules_env, "make test", run_id="s1") == "approved"
    assert submit(rules_env, "make test") == "pending"  # not in the session's run

    code, out, _ = run_cli(capsys, "rules", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AGENT", "KIND", "MATCH", "SCOPE", "ENDS", "USES",
                                "LAST", "USED", "BY"]
    assert "git *" in lines[1] and "any run" in lines[1] and "never" in lines[1]
    assert "s1" in lines[2] and "in 7h 59m" in lines[2]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    code, out, _ = run_cli(capsys, "rules", "list", "--json")
    assert [(r["id"], r["uses"]) for r in json.loads(out)["items"]] == [(1, 1), (2, 1)]

    code, out, _ = run_cli(capsys, "rules", "revoke", "1")
    assert code == 0 and out == "revoked rule #1: claude-code Bash 'git *' in any run (1 use)\n"
    assert submit(rules_env, "git status") == "pending"
    code, out, err = run_cli(capsys, "rules", "revoke", "#1")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "1" in err
    code, out, _ = run_cli(capsys, "rules", "list", "--json")
    assert [r["id"] for r in json.loads(out)["items"]] == [2]
    code, out, _ = run_cli(capsys, "rules", "list", "--all")
    assert "revoked" in out.splitlines()[1]
    code, out, _ = run_cli(capsys, "rules", "revoke", "2", "--json")
    assert json.loads(out)["revoked_by"].startswith("cli:")


@pytest.mark.parametrize("args,needle", [
    (("--kind", "budget.grant", "--match", "*"), "budget.grant"),
    (("--kind", "tool_call", "--match", "*"), "tool_call"),
    (("--kind", "Bash", "--match", ""), "match"),
    (("--kind", "Bash", "--match", "x" * 501), "match"),
    (("--kind", "Bash", "--match", "ls", "--run", "ghost"), "ghost"),
    (("--kind", "Bash", "--match", "ls", "--run", "done"), "completed"),
    (("--kind", "Bash", "--match", "ls", "--ttl", "0s"), "--ttl"),
    (("--kind", "Bash", "--match", "ls", "--ttl", "400d"), "--ttl"),
])
def test_bad_input_is_one_line_and_exit_2(rules_env, capsys, args, needle):
    code, out, err = run_cli(capsys, "rules", "add", "--agent", "claude-code", *args)
    assert (code, out) == (2, "") and err.count("\n") == 1 and needle in err, err
    assert run_cli(capsys, "rules", "list", "--all")[1] == "no rules\n"


def test_revoke_errors(rules_env, capsys):
    for bad in ("abc", "0", "-3"):
        code, out, err = run_cli(capsys, "rules", "revoke", bad)
        assert (code, out) == (2, "") and err.count("\n") == 1 and "invalid rule id" in err
    code, _, err = run_cli(capsys, "rules", "revoke", "42")
    assert code == 2 and err.count("\n") == 1 and "42" in err
    with pytest.raises(SystemExit) as usage:  # argparse: a bad duration
        main(["rules", "add", "--agent", "a", "--kind", "k", "--match", "m", "--ttl", "soon"])
    assert usage.value.code == 2
