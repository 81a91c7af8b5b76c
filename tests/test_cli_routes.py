"""``tapgate routes``: the routes in the order the bot tries them, and which one a
request takes — the stored routes (``tapgate policy apply``) first, then
``TAPGATE_ROUTES``, then the approver chats. In-process, both backends, checked against
the router the bot itself uses."""

from __future__ import annotations

import json

import pytest

from bot.config import load_settings
from bot.routing import Router
from tests.test_cli import run_cli

ROUTES = ('[{"agent": "deploy-*", "chats": [-1001], "approvers": [1002]}, '
          '{"kind": "budget.grant", "chats": [-1003]}]')
POLICY = """
routes:
  - agent: "docs-?"
    kind: edit
    chats: [-1002, 4242]
  - agent: "deploy-api"
    kind: shell
    chats: [-1004]
"""


@pytest.fixture
def routes_env(db_url, clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("TAPGATE_APPROVER_CHAT_IDS", "111,222")
    monkeypatch.setenv("TAPGATE_APPROVER_USER_IDS", "1001,1002")
    monkeypatch.setenv("TAPGATE_ROUTES", ROUTES)
    monkeypatch.setenv("TAPGATE_ESCALATION_CHAT_IDS", "-1009")
    monkeypatch.setenv("TAPGATE_ESCALATE_AFTER", "15m")
    (tmp_path / "p.yaml").write_text(POLICY, encoding="utf-8")
    return tmp_path / "p.yaml"


def test_the_settings_routes_then_the_approver_chats(routes_env, capsys):
    code, out, err = run_cli(capsys, "routes")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["#", "FROM", "AGENT", "KIND", "CHATS", "APPROVERS"]
    assert lines[1].split() == ["1", "TAPGATE_ROUTES", "deploy-*", "*", "-1001", "1002"]
    assert lines[2].split() == ["2", "TAPGATE_ROUTES", "*", "budget.grant", "-1003", "any",
                                "allowed", "user"]
    assert lines[3].split() == ["-", "TAPGATE_APPROVER_CHAT_IDS", "*", "*", "111,", "222",
                                "any", "allowed", "user"]
    assert "Still pending after 15m: also -1009" in out


async def test_stored_routes_come_first_and_match_as_the_bot_does(routes_env, capsys):
    assert run_cli(capsys, "policy", "apply", str(routes_env))[0] == 0
    code, out, _ = run_cli(capsys, "routes", "--json")
    listed = json.loads(out)
    assert [(r["position"], r["source"], r["agent"], r["chats"]) for r in listed["routes"]] == [
        (1, "policy file", "docs-?", [-1002, 4242]), (2, "policy file", "deploy-api", [-1004]),
        (3, "TAPGATE_ROUTES", "deploy-*", [-1001]), (4, "TAPGATE_ROUTES", "*", [-1003])]
    assert listed["default_chats"] == [111, 222]
    assert listed["escalation"] == {"chats": [-1009], "after_seconds": 900.0}

    cases = [("deploy-api", "shell", 2), ("deploy-api", "edit", 3), ("docs-1", "edit", 1),
             ("docs-12", "edit", None), ("tapgate", "budget.grant", 4), ("cc", "Bash", None)]
    answers = {}
    for agent, kind, position in cases:
        code, out, err = run_cli(capsys, "routes", "--agent", agent, "--kind", kind, "--json")
        assert code == 0, err
        taken = json.loads(out)
        assert (taken["route"] or {}).get("position") == position, (agent, kind)
        answers[agent, kind] = taken["chats"]

    # The answers are the bot's own router's (a Store of its own after the commands: the
    # CLI's Store took over the models' proxy).
    from storage.store import Store

    settings = load_settings(None)
    store = Store.from_url(settings.database_url)
    try:
        router = Router.from_settings(store, settings)
        assert answers == {(a, k): (await router.target_for(a, k)).chats for a, k, _ in cases}
        await router.close()
    finally:
        store.close()

    code, out, _ = run_cli(capsys, "routes", "--agent", "deploy-api", "--kind", "shell")
    assert out == ("deploy-api · shell → route 2 (policy file: agent deploy-api, kind shell): "
                   "-1004\n")
    code, out, _ = run_cli(capsys, "routes", "--agent", "deploy-api", "--kind", "edit")
    assert out == ("deploy-api · edit → route 3 (TAPGATE_ROUTES: agent deploy-*, kind *): "
                   "-1001; decided by 1002\n")
    code, out, _ = run_cli(capsys, "routes", "--agent", "cc", "--kind", "Bash")
    assert out == "cc · Bash → no route matches: the approver chats " \
                  "(TAPGATE_APPROVER_CHAT_IDS): 111, 222\n"
    code, out, err = run_cli(capsys, "routes", "--agent", "cc")
    assert (code, out) == (2, "")
    assert err == "give both --agent and --kind (a request has both), or neither to list " \
                  "the routes\n"


def test_without_a_database_one_line(clean_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TAPGATE_DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    code, out, err = run_cli(capsys, "routes")
    assert (code, out) == (2, "")
    assert err.startswith("no database at ") and err.count("\n") == 1
