"""Routes: TAPGATE_ROUTES and policy-file routes, the Router, the storage behind them, and
through the real bot and the fake Telegram (both backends): each agent's requests in
its own chats, taps and /pending there, routes applied while the bot runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.policyfile import load_policies, load_policy_file
from bot.routing import Router, glob_matches, parse_routes
from bot.service import Service
from storage.errors import InvalidArgument
from storage.records import NewApproval
from storage.rule_records import Route
from storage.store import Store
from tests.fake_telegram import User
from tests.test_onboarding import Cli, doctor_env
from tests.test_telegram import ALICE, BOB, CHAT_B, EVE, answer_of, edited_to, posted, settings_for

DEPLOYS, DOCS, LATE, ORPHAN = -100111, -100222, -100333, -100444

# --- TAPGATE_ROUTES ----------------------------------------------------------------------


def test_routes_setting_is_json_with_defaults(monkeypatch, clean_env):
    monkeypatch.setenv("TAPGATE_ROUTES", '[{"agent": "deploy-*", "chats": [-100111, -100111]},'
                                         ' {"kind": "budget.grant", "chats": [42]}]')
    routes = load_settings().routes
    assert routes == [Route(agent="deploy-*", kind="*", chats=[-100111]),
                      Route(agent="*", kind="budget.grant", chats=[42])]
    monkeypatch.setenv("TAPGATE_ROUTES", "")
    assert load_settings().routes == []


@pytest.mark.parametrize("value,needle", [
    ("[{agent: x}]", "not valid JSON"),
    ('{"agent": "x", "chats": [1]}', "expected a JSON list of routes"),
    ('[{"agent": "x", "chats": [1]}, 7]', "route #2: must be a mapping"),
    ('[{"agent": "x"}]', "route #1: field chats: must be a non-empty list of chat ids"),
    ('[{"chats": []}]', "route #1: field chats: must be a non-empty list"),
    ('[{"chats": ["-100"]}]', "route #1: field chats: must be a non-empty list"),
    ('[{"chats": [true]}]', "route #1: field chats"),
    ('[{"chats": [0]}]', "route #1: field chats: 0 is not a Telegram chat id"),
    ('[{"agent": "", "chats": [1]}]', "route #1: field agent: must be a non-empty glob"),
    ('[{"kind": 5, "chats": [1]}]', "route #1: field kind: must be a non-empty glob"),
    ('[{"agents": "x", "chats": [1]}]', "route #1: field agents: unknown field"),
])
def test_bad_routes_setting_is_one_line_naming_it(monkeypatch, clean_env, value, needle):
    monkeypatch.setenv("TAPGATE_ROUTES", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("TAPGATE_ROUTES: ") and "\n" not in message
    assert needle in message, message


def test_tapgate_run_with_bad_routes_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPGATE_", "XDG_"))}
    env.update(HOME=str(tmp_path), TAPGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'never.db'}",
               TAPGATE_ROUTES='[{"agent": "deploy-*", "chats": []}]')
    proc = subprocess.run([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("TAPGATE_ROUTES: route #1: field chats")


@pytest.mark.parametrize("glob,text,matches", [
    ("deploy-*", "deploy-api", True), ("deploy-*", "deploy-", True),
    ("deploy-*", "xdeploy-api", False), ("docs-?", "docs-1", True), ("docs-?", "docs-12", False),
    ("a.b", "a.b", True), ("a.b", "axb", False), ("[x]*", "[x]y", True), ("*", "", True),
    ("shell", "Shell", False),
])
def test_globs_know_only_star_and_question_mark(glob, text, matches):
    assert glob_matches(glob, text) is matches


# --- policy files --------------------------------------------------------------------------

ROUTES_YAML = """
careful:
  budget_dollars: 5
routes:
  - agent: "deploy-*"
    chats: [-100111]
  - {kind: "budget.grant", chats: [-100222, 42]}
"""

ROUTES_TOML = """
[careful]
budget_dollars = 5

[[routes]]
agent = "deploy-*"
chats = [-100111]

[[routes]]
kind = "budget.grant"
chats = [-100222, 42]
"""

EXPECTED = [Route(agent="deploy-*", chats=[DEPLOYS]),
            Route(kind="budget.grant", chats=[DOCS, 42])]


@pytest.mark.parametrize("name,text", [("p.yaml", ROUTES_YAML), ("p.toml", ROUTES_TOML)])
def test_policy_file_routes_beside_the_bundles(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    loaded = load_policy_file(path)
    assert [p.name for p in loaded.policies] == ["careful"] and loaded.routes == EXPECTED
    assert [p.name for p in load_policies(path)] == ["careful"]  # the old reader still works


def test_policy_file_with_routes_only_or_without_any(tmp_path):
    only = tmp_path / "routes.yaml"
    only.write_text("routes: []\n")
    assert load_policy_file(only) == ([], [])  # [] removes every stored route
    listed = tmp_path / "listed.yaml"
    listed.write_text("policies:\n  - {name: a}\nroutes:\n  - {chats: [7]}\n")
    assert load_policy_file(listed) == (load_policies(listed), [Route(chats=[7])])
    without = tmp_path / "bundles.yaml"
    without.write_text("careful: {budget_tokens: 3}\n")
    assert load_policy_file(without).routes is None  # leaves the stored routes alone


@pytest.mark.parametrize("text,needle", [
    ("routes:\n", "routes: must be a list of routes"),
    ("routes: {agent: x}\n", "a bundle named 'routes' goes in a 'policies' list"),
    ("routes:\n  - {agent: x, chats: [1]}\n  - {chats: []}\n", "route #2: field chats"),
    ("routes:\n  - {agent: x, chats: [1], kinds: y}\n", "route #1: field kinds: unknown field"),
    ("routes:\n  - deploy\n", "route #1: must be a mapping"),
    ("a:\n  budget_tokens: -1\nroutes: []\n", "bundle 'a': field budget_tokens"),
])
def test_policy_file_route_errors_name_file_route_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as info:
        load_policy_file(path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)


def test_toml_route_errors_too(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[routes]]\nagent = "x"\nchats = ["-100"]\n')
    with pytest.raises(InvalidArgument, match=r"bad\.toml: route #1: field chats"):
        load_policy_file(path)


@pytest.fixture
def cli(clean_env, monkeypatch, db_url, capsys):
    """``tapgate ...`` against ``db_url``; returns (exit code, stdout, stderr)."""
    from bot.cli import main

    monkeypatch.setenv("TAPGATE_DATABASE_URL", db_url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _stored(db_url: str) -> list[Route]:
    # A Store of its own after each command: the CLI's Store took over the models' proxy.
    store = Store.from_url(db_url)
    try:
        return store.list_routes()
    finally:
        store.close()


def test_policy_apply_replaces_the_stored_routes_only_when_the_file_has_some(cli, tmp_path,
                                                                            db_url):
    first = tmp_path / "first.toml"
    first.write_text(ROUTES_TOML)
    code, out, _ = cli("policy", "apply", str(first))
    assert code == 0 and "stored 2 route(s)" in out and "applied careful" in out
    assert _stored(db_url) == EXPECTED
    bundles = tmp_path / "bundles.yaml"
    bundles.write_text("relaxed: {}\n")
    code, out, _ = cli("policy", "apply", str(bundles))
    assert code == 0 and "route" not in out
    assert _stored(db_url) == EXPECTED  # no routes section: left as they were
    second = tmp_path / "second.yaml"
    second.write_text("routes:\n  - {agent: 'docs-?', kind: edit, chats: [-100333]}\n")
    code, out, _ = cli("policy", "apply", "--json", str(second))
    assert code == 0 and json.loads(out) == {
        "items": [], "routes": [{"agent": "docs-?", "kind": "edit", "chats": [LATE],
                                 "approvers": None}]}
    assert _stored(db_url) == [Route(agent="docs-?", kind="edit", chats=[LATE])]
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {chats: [0]}\n")
    code, _, err = cli("policy", "apply", str(bad))
    assert code == 2 and "route #1: field chats: 0 is not a Telegram chat id" in err
    assert len(_stored(db_url)) == 1  # nothing written
    empty = tmp_path / "empty.yaml"
    empty.write_text("routes: []\n")
    assert cli("policy", "apply", str(empty))[1].strip() == \
        "stored 0 route(s), replacing the stored routes"
    assert _stored(db_url) == []


# --- storage and the router ---------------------------------------------------------------


def _new(agent: str, chats: list[int], **kwargs) -> NewApproval:
    return NewApproval(agent=agent, kind="shell", summary="s", ttl_seconds=600, chat_ids=chats,
                       **kwargs)


def test_pending_in_chat_lists_what_has_a_copy_there(store):
    a, _ = store.create_approval(_new("a", [DEPLOYS]))
    b, _ = store.create_approval(_new("b", [DEPLOYS, DOCS]))
    c, _ = store.create_approval(_new("c", [DOCS], escalate_after=1))
    assert [x.id for x in store.pending_in_chat(DEPLOYS)] == [a.id, b.id]  # oldest first
    assert [x.id for x in store.pending_in_chat(DOCS, limit=1)] == [b.id]
    assert store.count_pending_in_chat(DOCS) == 2
    store.resolve_approval(b.id, "approved", "test")
    assert [x.id for x in store.pending_in_chat(DOCS)] == [c.id]
    assert store.count_pending_in_chat(DEPLOYS) == 1 and store.count_pending_in_chat(LATE) == 0
    # An escalation chat sees what escalated there.
    store.escalate_due([LATE], now=store.clock() + timedelta(seconds=2))
    assert [x.id for x in store.pending_in_chat(LATE)] == [c.id]
    snapshot = store.routing_snapshot()
    assert snapshot.routes == [] and set(snapshot.owed_chat_ids) == {DEPLOYS, DOCS, LATE}


async def test_router_orders_stored_routes_then_settings_then_approver_chats(store):
    now = [0.0]
    # The router reads through a view whose version never moves: like routes stored by
    # another process (the CLI), which it can learn of only by reading again.
    elsewhere = SimpleNamespace(routes_version=0, run=store.run,
                                routing_snapshot=store.routing_snapshot)
    router = Router(elsewhere, parse_routes('[{"agent": "deploy-*", "chats": [-100111]},'
                                        ' {"kind": "edit", "chats": [-100222]}]'),
                    default_chat_ids=[CHAT_B], extra_chat_ids=[-100900],
                    clock=lambda: now[0])
    learnt = []
    router.subscribe(lambda: learnt.append(list(router.all_chat_ids())))
    assert (await router.target_for("deploy-api", "edit")).chats == [DEPLOYS]
    assert (await router.target_for("docs", "edit")).chats == [DOCS]
    assert (await router.target_for("builder", "shell")).chats == [CHAT_B]
    assert router.all_chat_ids() == [CHAT_B, -100900, DEPLOYS, DOCS]
    assert router.is_route_chat(-100900) and not router.is_route_chat(LATE)
    # Stored by another process: seen once the cache is older than max_age.
    store.replace_routes([Route(agent="deploy-api", chats=[LATE])])
    now[0] = 0.5
    assert (await router.target_for("deploy-api", "shell")).chats == [DEPLOYS]  # still cached
    now[0] = 1.0
    assert (await router.target_for("deploy-api", "shell")).chats == [LATE]  # stored routes first
    assert (await router.target_for("deploy-web", "shell")).chats == [DEPLOYS]
    assert learnt and LATE in learnt[-1]
    # Stored through the router's own Store: read at once, whatever the age.
    router.store = store
    assert (await router.target_for("deploy-api", "shell")).chats == [LATE]
    assert not router.stale
    await store.run(store.replace_routes, [])
    assert router.stale
    assert (await router.target_for("deploy-api", "shell")).chats == [DEPLOYS]


# --- through the real bot -------------------------------------------------------------------

GROUP = "supergroup"


def _routed_settings(fake, db_url, **overrides) -> Settings:
    return settings_for(fake, db_url, approver_chat_ids=[CHAT_B], routes=[
        {"agent": "deploy-*", "chats": [DEPLOYS]},
        {"agent": "docs-?", "kind": "edit", "chats": [DOCS]},
        {"agent": "tapgate", "kind": "budget.grant", "chats": [DOCS]}], **overrides)


async def _copies(svc: Service, approval_id: str) -> set[int]:
    return {m.chat_id for m in await svc.store.run(svc.store.approval_messages, approval_id)}


async def _pending_listing(fake, chat_id: int, user: User, chat_type: str = GROUP) -> str:
    seen = len(fake.calls_of("sendMessage"))
    fake.send_text(chat_id, user, "/pending", chat_type=chat_type)
    call = await fake.wait_for("sendMessage", lambda c: int(c.params["chat_id"]) == chat_id
                               and c in fake.calls_of("sendMessage")[seen:]
                               and "ending" in c.params["text"])
    return call.params["text"]


async def test_each_agents_requests_go_to_their_own_chats(fake, db_url):
    svc = Service(_routed_settings(fake, db_url), with_socket=False)
    await svc.start()
    try:
        await fake.wait_polling()
        deploy, _ = await svc.manager.submit(agent="deploy-api", kind="shell", summary="ship")
        docs, _ = await svc.manager.submit(agent="docs-1", kind="edit", summary="typo")
        other, _ = await svc.manager.submit(agent="builder", kind="shell", summary="make")
        grant, _ = await svc.manager.submit(agent="tapgate", kind="budget.grant",
                                            summary="run x: budget reached")
        msg = await posted(fake, DEPLOYS, deploy.id)
        await posted(fake, DOCS, docs.id)
        await posted(fake, DOCS, grant.id)
        await posted(fake, CHAT_B, other.id)
        assert await _copies(svc, deploy.id) == {DEPLOYS}
        assert await _copies(svc, docs.id) == await _copies(svc, grant.id) == {DOCS}
        assert await _copies(svc, other.id) == {CHAT_B}
        # /pending lists what was routed to the chat it is typed in...
        listing = await _pending_listing(fake, DOCS, ALICE)
        assert docs.id in listing and grant.id in listing
        assert deploy.id not in listing and other.id not in listing
        listing = await _pending_listing(fake, CHAT_B, BOB, chat_type="private")
        assert other.id in listing and docs.id not in listing
        # ... and everything in an allowed user's private chat that no route posts to.
        listing = await _pending_listing(fake, ALICE.id, ALICE, chat_type="private")
        assert all(a.id in listing for a in (deploy, docs, other, grant))
        # A route's chat is an approver chat: an allowed user decides there, others not.
        refused = fake.tap(DEPLOYS, msg.message_id, EVE, button_text="✅ Approve")
        assert "not allowed" in await answer_of(fake, refused)
        tap = fake.tap(DEPLOYS, msg.message_id, BOB, button_text="✅ Approve")
        assert "Approved" in await answer_of(fake, tap)
        await edited_to(fake, DEPLOYS, msg.message_id, "Approved by @bob")
        assert (await svc.manager.get(deploy.id)).status == "approved"
        sends = {int(c.params["chat_id"]) for c in fake.calls_of("sendMessage")
                 if deploy.id in c.params["text"] and "Pending requests" not in c.params["text"]}
        assert sends == {DEPLOYS}  # never posted anywhere else (but listed by /pending)
    finally:
        await svc.stop()


async def _apply_in_another_process(db_url: str, path, cwd) -> str:
    """``tapgate policy apply PATH`` as its own process (as an operator runs it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPGATE_", "XDG_"))}
    env.update(HOME=str(cwd), TAPGATE_DATABASE_URL=db_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "policy", "apply", str(path), cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_routes_applied_while_the_bot_runs_take_effect(fake, db_url, tmp_path):
    svc = Service(settings_for(fake, db_url, approver_chat_ids=[CHAT_B]), with_socket=False)
    await svc.start()
    try:
        await fake.wait_polling()
        before, _ = await svc.manager.submit(agent="deploy-api", kind="shell", summary="one")
        await posted(fake, CHAT_B, before.id)
        path = tmp_path / "routes.yaml"
        path.write_text(f"routes:\n  - {{agent: 'deploy-*', chats: [{LATE}]}}\n")
        assert "stored 1 route(s)" in await _apply_in_another_process(db_url, path, tmp_path)
        # Another process stored them: this bot reads them within about a second.
        async def routed() -> None:
            while (await svc.router.target_for("deploy-api", "shell")).chats != [LATE]:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(routed(), 5)
        after, _ = await svc.manager.submit(agent="deploy-api", kind="shell", summary="two")
        msg = await posted(fake, LATE, after.id)  # a chat learnt while running is served
        assert await _copies(svc, after.id) == {LATE}
        tap = fake.tap(LATE, msg.message_id, ALICE, button_text="❌ Deny")
        assert "Denied" in await answer_of(fake, tap)
        await edited_to(fake, LATE, msg.message_id, "Denied by @alice")
        # Stored by this process: at once. LATE is no route's any more, yet the copy of a
        # request still pending there gets its edit; ORPHAN is an approver chat at once.
        pending, _ = await svc.manager.submit(agent="deploy-api", kind="shell", summary="3")
        left = await posted(fake, LATE, pending.id)
        await svc.store.run(svc.store.replace_routes, [Route(agent="deploy-*",
                                                             chats=[ORPHAN])])
        listing = await _pending_listing(fake, ORPHAN, ALICE)
        assert "No pending requests" in listing
        await svc.manager.resolve(pending.id, "approved", "telegram:1002 (@bob)")
        await edited_to(fake, LATE, left.message_id, "Approved by @bob")
        # Routed to LATE, but LATE is taken out before its copy is posted: no new message.
        await svc.store.run(svc.store.replace_routes, [Route(agent="deploy-*", chats=[LATE])])
        await svc.router.refresh()
        await svc.notifier.stop()
        unsent, _ = await svc.manager.submit(agent="deploy-api", kind="shell", summary="4")
        await svc.store.run(svc.store.replace_routes, [Route(agent="deploy-*",
                                                             chats=[ORPHAN])])
        await svc.router.refresh()
        await svc.notifier.start()
        svc.notifier.kick()

        async def given_up() -> None:
            while await svc.store.run(svc.store.messages_owed, LATE):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(given_up(), 10)
        assert not [m for m in fake.messages(LATE) if unsent.id in (m.text or "")]
    finally:
        await svc.stop()


async def test_doctor_checks_the_route_chats_too(fake, home, sqlite_url):
    fake.set_chat_unavailable(DEPLOYS)
    env = doctor_env(home, fake, sqlite_url, home / "t.sock",
                     routes=json.dumps([{"agent": "deploy-*", "chats": [DEPLOYS, CHAT_B]}]))
    code, out, err = await Cli(home, env).run("doctor")
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if line.startswith("✗ ")]
    assert len(failed) == 1 and failed[0].startswith(f"✗ chat {DEPLOYS} unreachable")
    assert failed[0].endswith("or remove the id from TAPGATE_ROUTES")
    assert out.count(f"chat {CHAT_B} (private") == 1  # an approver chat: checked once


async def test_doctor_checks_the_stored_routes_and_escalation_chats(fake, home, sqlite_url):
    store = Store.from_url(sqlite_url)
    try:
        store.replace_routes([Route(agent="docs-*", chats=[DOCS, CHAT_B])])
    finally:
        store.close()
    fake.set_chat_unavailable(DOCS)
    fake.set_chat_unavailable(LATE)
    env = doctor_env(home, fake, sqlite_url, home / "t.sock", escalation_chat_ids=str(LATE))
    code, out, err = await Cli(home, env).run("doctor")
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if line.startswith("✗ ")]
    assert [line.split()[2] for line in failed] == [str(LATE), str(DOCS)], out
    assert failed[0].endswith("or remove the id from TAPGATE_ESCALATION_CHAT_IDS")
    assert failed[1].endswith("or remove the id from the routes stored by `tapgate policy "
                              "apply` (edit the policy file, apply it again)")
    assert out.count(f"chat {CHAT_B} (private") == 1
