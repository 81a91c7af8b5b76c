"""Audit export (JSON Lines and CSV, streamed) and policy files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bot.audit import CSV_COLUMNS, export
from bot.policyfile import load_policies
from storage.errors import InvalidArgument, NotFound
from storage.records import (
    NewApproval,
    NewLedgerEntry,
    NewToolCall,
    RunUpsert,
)
from storage.rule_records import NewRule


@pytest.fixture
def filled(store):
    store.upsert_run(RunUpsert(id="r1", name="one"))
    store.upsert_run(RunUpsert(id="r2", name="two"))
    call = store.append_tool_call(NewToolCall(run_id="r1", tool="rm", side_effect="fs.delete",
                                              arguments={"path": "/tmp/x"}))
    a, _ = store.create_approval(NewApproval(agent="a", kind="tool_call", summary="rm",
                                             payload={"p": 1}, ttl_seconds=60, run_id="r1",
                                             tool_call_id=call.id))
    store.resolve_approval(a.id, "denied", "telegram:1 (@alice)", "too risky")
    store.create_approval(NewApproval(agent="b", kind="shell", summary="ls", ttl_seconds=60))
    store.append_ledger([NewLedgerEntry(run_id=r, model="gpt-4o", provider="openai",
                                        prompt_tokens=i, dollars=0.001 * i)
                         for i in range(1, 6) for r in ("r1", "r2")])
    return store


def test_jsonl_has_every_record_with_one_naming_scheme(filled):
    out = io.StringIO()
    count = export(filled, out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(rows) == 2 + 1 + 10
    kinds = [r["type"] for r in rows]
    assert kinds == ["approval"] * 2 + ["tool_call"] + ["ledger"] * 10
    denied = next(r for r in rows if r["type"] == "approval" and r["status"] == "denied")
    assert denied["decided_by"] == "telegram:1 (@alice)" and denied["reason"] == "too risky"
    assert denied["decided_at"].endswith("Z")
    for row in rows:
        assert all(key == key.lower() and " " not in key for key in row)  # snake_case only


def test_export_one_run_and_unknown_run(filled):
    out = io.StringIO()
    assert export(filled, out, run_id="r2") == 5
    with pytest.raises(NotFound):
        export(filled, io.StringIO(), run_id="nope")


def test_csv(filled):
    out = io.StringIO()
    export(filled, out, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == CSV_COLUMNS
    call = next(r for r in rows if r["type"] == "tool_call")
    assert json.loads(call["arguments"]) == {"path": "/tmp/x"}
    assert sum(1 for r in rows if r["type"] == "ledger") == 10


def test_rules_and_their_uses_are_in_the_trail(store):
    store.upsert_run(RunUpsert(id="s1", name="session"))
    store.upsert_run(RunUpsert(id="s2", name="other"))
    always = store.create_rule(NewRule(agent="cc", kind="Bash", match="git *",
                                       created_by="telegram:1 (@alice)"))
    session = store.create_rule(NewRule(agent="cc", kind="Bash", match="make", run_id="s1",
                                        created_by="cli:ops"))
    elsewhere = store.create_rule(NewRule(agent="cc", kind="Bash", match="ls", run_id="s2",
                                          created_by="socket:uid0"))
    ruled, _ = store.create_approval(NewApproval(agent="cc", kind="Bash", summary="git log",
                                                 ttl_seconds=60, run_id="s1"))
    store.create_approval(NewApproval(agent="cc", kind="Bash", summary="make", ttl_seconds=60,
                                      run_id="s1"))
    asked, _ = store.create_approval(NewApproval(agent="cc", kind="Bash", summary="rm -rf x",
                                                 payload={"command": "rm -rf x"},
                                                 ttl_seconds=60, run_id="s1",
                                                 accepts_edits=True))
    store.resolve_approval(asked.id, "approved", "telegram:1 (@alice)",
                           edited_payload={"command": "rm -rf x/tmp"})
    store.revoke_rule(always.id, "cli:ops")
    assert ruled.decided_by.startswith(f"rule:{always.id}")

    out = io.StringIO()
    count = export(store, out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(rows) == 3 + 3
    rules = {r["id"]: r for r in rows if r["type"] == "rule"}
    assert list(rules) == [always.id, session.id, elsewhere.id]
    assert rules[always.id]["uses"] == 1 and rules[always.id]["revoked_by"] == "cli:ops"
    assert rules[always.id]["revoked_at"].endswith("Z")
    assert rules[always.id]["created_by"] == "telegram:1 (@alice)"
    assert rules[session.id]["uses"] == 1 and rules[session.id]["last_used_at"]
    edited = next(r for r in rows if r.get("id") == asked.id)
    assert edited["edited_payload"] == {"command": "rm -rf x/tmp"}
    assert edited["accepts_edits"] is True

    # One run: its session rules and the rules that approved its requests, no others.
    out = io.StringIO()
    export(store, out, run_id="s1")
    ids = [json.loads(line)["id"] for line in out.getvalue().splitlines()
           if json.loads(line)["type"] == "rule"]
    assert ids == [always.id, session.id]

    out = io.StringIO()
    export(store, out, fmt="csv")
    csv_rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(csv_rows[0]) == CSV_COLUMNS
    rule_row = next(r for r in csv_rows if r["type"] == "rule" and r["id"] == str(always.id))
    assert (rule_row["match"], rule_row["uses"], rule_row["created_by"]) == (
        "git *", "1", "telegram:1 (@alice)")
    edited_row = next(r for r in csv_rows if r["id"] == asked.id)
    assert json.loads(edited_row["edited_payload"]) == {"command": "rm -rf x/tmp"}


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://evil\")", "+1+cmd|' /C calc'!A0",
                                  "-2+3", "@SUM(A1)", "\tTAB", "\rCR"])
def test_csv_neutralizes_formulas(store, text):
    """OWASP CSV injection: a cell a spreadsheet would run as a formula starts with a quote."""
    store.upsert_run(RunUpsert(id="r1", name=text))
    store.create_approval(NewApproval(agent=text, kind=text, summary=text, payload=text,
                                      ttl_seconds=60, run_id="r1"))
    store.append_ledger([NewLedgerEntry(run_id="r1", model=text, provider=text,
                                        response_id=text, dollars=0.5)])
    out = io.StringIO()
    export(store, out, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    approval = next(r for r in rows if r["type"] == "approval")
    ledger = next(r for r in rows if r["type"] == "ledger")
    for cell in (approval["agent"], approval["kind"], approval["summary"], approval["payload"],
                 ledger["model"], ledger["provider"], ledger["response_id"]):
        assert cell == "'" + text
    assert ledger["dollars"] == "0.5"  # numbers are left as they are


def test_cli_out_file_is_private(filled, tmp_path, db_url, monkeypatch):
    from bot.cli import main

    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)
    existing = tmp_path / "open.csv"
    existing.write_text("old")
    existing.chmod(0o644)
    for target in (tmp_path / "new.jsonl", existing):
        assert main(["audit", "export", "--format", "csv", "--out", str(target)]) == 0
        assert target.stat().st_mode & 0o777 == 0o600
    assert existing.read_text().startswith("type,id")


def test_streams_in_pages(filled):
    seen = [a.id for a in filled.iter_approvals(page=1)]
    assert len(seen) == len(set(seen)) == 2
    assert len(list(filled.iter_ledger(batch=3))) == 10


POLICY_YAML = """
careful:
  budget_dollars: 5
  tool_allowlist: [ls, rm]
  approval_rules:
    - tool: deploy
    - side_effect: "fs.delete*"
  default_safe: true
relaxed: {}
"""


def test_policy_file_yaml_and_toml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY_YAML)
    policies = {p.name: p for p in load_policies(path)}
    assert policies["careful"].budget_dollars == 5
    assert policies["careful"].approval_rules[1].side_effect == "fs.delete*"
    assert policies["relaxed"].tool_allowlist == []
    toml = tmp_path / "p.toml"
    toml.write_text('[[policies]]\nname = "t"\nbudget_tokens = 100\n'
                    '[[policies.approval_rules]]\ntool = "x"\n')
    (only,) = load_policies(toml)
    assert only.name == "t" and only.budget_tokens == 100 and only.approval_rules[0].tool == "x"


@pytest.mark.parametrize("text,needle", [
    ("careful:\n  budget_dollars: lots\n", "bundle 'careful': field budget_dollars"),
    ("careful:\n  budget_tokens: -1\n", "bundle 'careful': field budget_tokens"),
    ("careful:\n  colour: red\n", "bundle 'careful': field colour: unknown field"),
    ("careful:\n  approval_rules: [{tol: x}]\n", "field approval_rules.0.tol"),
    ("careful: [1, 2]\n", "bundle 'careful': must be a mapping"),
    ("a: [\n", "not valid YAML"),
    ("", "no policy bundles"),
])
def test_policy_file_errors_name_file_bundle_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        load_policies(path)
    assert str(info.value).startswith(str(path))
    assert needle in str(info.value)


def test_cli_policy_apply_and_audit_export(tmp_path, monkeypatch, capsys):
    from bot.cli import main
    from storage.store import Store

    for key in [k for k in __import__("os").environ if k.startswith("TAPGATE_")]:
        monkeypatch.delenv(key)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("TAPGATE_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    store = Store.from_url(url)
    store.migrate()
    store.close()
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY_YAML)
    assert main(["policy", "apply", str(policies)]) == 0
    assert "applied careful: 2 allowed tool(s), 2 approval rule(s), default_safe" in \
        capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("careful:\n  budget_dollars: lots\n")
    assert main(["policy", "apply", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(str(bad)) and "bundle 'careful': field budget_dollars" in err
    out_file = tmp_path / "audit.csv"
    assert main(["audit", "export", "--format", "csv", "--out", str(out_file)]) == 0
    assert out_file.read_text().startswith("type,id,run_id")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_policy_files_refuse_non_finite_budgets(tmp_path, value):
    path = tmp_path / "p.yaml"
    path.write_text(f"lax:\n  budget_dollars: {value}\n")
    with pytest.raises(InvalidArgument, match=r"bundle 'lax': field budget_dollars"):
        load_policies(path)
    toml = tmp_path / "p.toml"
    toml.write_text(f"[lax]\nbudget_dollars = {value.replace('.', '') if 'e' not in value else value}\n")
    with pytest.raises(InvalidArgument, match=r"budget_dollars"):
        load_policies(toml)
