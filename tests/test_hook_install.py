"""``tapgate hook install|uninstall``: merged into real-looking settings files, undone exactly.

Every test runs with a temporary HOME and a temporary project directory as cwd, and
calls ``bot.cli.main`` (one test runs ``python -m bot`` in a subprocess).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot import cli
from bot.integrations import install as inst

# What each agent's settings file already holds before we arrive: other settings,
# another hook on our event, and hooks on other events.
EXISTING = {
    "claude-code": {
        "model": "opus",
        "permissions": {"allow": ["Bash(ls:*)"], "deny": []},
        "hooks": {
            "PreToolUse": [{"matcher": "Bash", "hooks": [
                {"type": "command", "command": "/usr/local/bin/guard.sh", "timeout": 5}]}],
            "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
        },
    },
    "codex": {
        "hooks": {
            "PermissionRequest": [{"matcher": "Bash", "hooks": [
                {"type": "command", "command": "python3 audit.py", "timeout": 10}]}],
            "PreToolUse": [{"matcher": "Bash", "hooks": [
                {"type": "command", "command": "sh check.sh", "statusMessage": "checking"}]}],
        },
    },
    "gemini": {
        "general": {"vimMode": True},
        "hooksConfig": {"enabled": True},
        "hooks": {
            "BeforeTool": [{"matcher": "run_shell_command", "hooks": [
                {"type": "command", "command": "lint.sh", "timeout": 5000}]}],
            "AfterTool": [{"hooks": [{"type": "command", "command": "log.sh"}]}],
        },
    },
}
EVENT = {"claude-code": "PreToolUse", "codex": "PermissionRequest", "gemini": "BeforeTool"}
CASES = [("claude-code", "user"), ("claude-code", "project"), ("claude-code", "local"),
         ("codex", "user"), ("codex", "project"), ("gemini", "user"), ("gemini", "project")]
FILES = {("claude-code", "user"): "home/.claude/settings.json",
         ("claude-code", "project"): "proj/.claude/settings.json",
         ("claude-code", "local"): "proj/.claude/settings.local.json",
         ("codex", "user"): "home/.codex/hooks.json",
         ("codex", "project"): "proj/.codex/hooks.json",
         ("gemini", "user"): "home/.gemini/settings.json",
         ("gemini", "project"): "proj/.gemini/settings.json"}
# The stdin each agent documents for a Bash call (Gemini names the tool run_shell_command).
STDIN = {
    "claude-code": {"session_id": "s1", "transcript_path": "/tmp/t.jsonl", "cwd": "/tmp",
                    "permission_mode": "default", "hook_event_name": "PreToolUse",
                    "tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "t1"},
    "codex": {"session_id": "s1", "transcript_path": None, "cwd": "/tmp",
              "hook_event_name": "PermissionRequest", "model": "gpt-5", "tool_name": "Bash",
              "tool_input": {"command": "ls", "description": "list"}},
    "gemini": {"session_id": "s1", "transcript_path": "/tmp/t.json", "cwd": "/tmp",
               "hook_event_name": "BeforeTool", "timestamp": "2026-01-01T00:00:00Z",
               "tool_name": "run_shell_command", "tool_input": {"command": "ls"}},
}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A temporary HOME and project directory (the cwd), with no TAPGATE_* settings."""
    home, proj = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    proj.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("TAPGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(proj)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def seed(root: Path, agent: str, scope: str) -> Path:
    """Write the agent's existing settings (4-space indent, no final newline)."""
    path = root / FILES[agent, scope]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(EXISTING[agent], indent=4), encoding="utf-8")
    return path


def ours(data: dict, agent: str, session_end: bool = False) -> list[dict]:
    """Our handlers for tool calls (or, with ``session_end``, our SessionEnd handlers)."""
    return [h for event, groups in data.get("hooks", {}).items() if isinstance(groups, list)
            and (event == "SessionEnd") == session_end
            for g in groups for h in g["hooks"] if inst.is_ours(h, agent)]


ENDS = {"claude-code": " + SessionEnd", "codex": "", "gemini": " + SessionEnd"}


@pytest.mark.parametrize(("agent", "scope"), CASES)
def test_install_keeps_everything_second_run_changes_nothing_uninstall_restores(
        dirs, capsys, agent, scope):
    path = seed(dirs, agent, scope)
    original = path.read_bytes()

    code, out, _ = run(capsys, "hook", "install", agent, "--scope", scope)
    assert code == 0
    assert out == (f"installed the {agent} hook in {path} ({EVENT[agent]}{ENDS[agent]}, "
                   "timeout 630 s)\n")
    data = json.loads(path.read_text())
    added = data["hooks"][EVENT[agent]].pop()  # ours comes last, after the user's own
    if ENDS[agent]:  # and one at the session's end, which completes the session's run
        [ending] = data["hooks"].pop("SessionEnd")
        [handler] = ending["hooks"]
        assert set(ending) == {"hooks"} and inst.is_ours(handler, agent)
        assert handler["timeout"] == (10 if agent == "claude-code" else 10_000)
        assert "onFailure" not in handler
    assert data == EXISTING[agent]  # nothing lost, nothing else changed
    assert "matcher" not in added and len(added["hooks"]) == 1
    assert inst.is_ours(added["hooks"][0], agent)

    installed = path.read_bytes()
    code, out, _ = run(capsys, "hook", "install", agent, "--scope", scope)
    assert code == 0 and out.startswith("already installed: ")
    assert path.read_bytes() == installed

    code, out, _ = run(capsys, "hook", "uninstall", agent, "--scope", scope)
    assert (code, out) == (0, f"removed the {agent} hook from {path}\n")
    assert json.loads(path.read_text()) == json.loads(original)

    code, out, _ = run(capsys, "hook", "uninstall", agent, "--scope", scope)
    assert (code, out) == (0, f"not installed: no {agent} hook in {path}\n")


@pytest.mark.parametrize(("agent", "scope"), CASES)
def test_dry_run_prints_the_result_and_writes_nothing(dirs, capsys, agent, scope):
    path = seed(dirs, agent, scope)
    original = path.read_bytes()
    code, out, err = run(capsys, "hook", "install", agent, "--scope", scope, "--dry-run")
    assert code == 0 and "nothing written" in err
    assert path.read_bytes() == original
    printed = json.loads(out)

    run(capsys, "hook", "install", agent, "--scope", scope)
    assert printed == json.loads(path.read_text())  # exactly what install then writes
    installed = path.read_bytes()
    code, out, err = run(capsys, "hook", "uninstall", agent, "--scope", scope, "--dry-run")
    assert code == 0 and "nothing written" in err
    assert json.loads(out) == json.loads(original)
    assert path.read_bytes() == installed


@pytest.mark.parametrize(("agent", "scope"), CASES)
@pytest.mark.parametrize("verb", ["install", "uninstall"])
def test_invalid_json_is_refused_in_one_line_and_left_alone(dirs, capsys, agent, scope, verb):
    path = dirs / FILES[agent, scope]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"model": "opus",, }')
    code, out, err = run(capsys, "hook", verb, agent, "--scope", scope)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(path) in err and "not valid JSON" in err
    assert path.read_text() == '{"model": "opus",, }'


@pytest.mark.parametrize("text", ['["a list"]', '{"hooks": []}', '{"hooks": {"PreToolUse": [1]}}'])
def test_unexpected_shapes_are_refused_not_overwritten(dirs, capsys, text):
    path = dirs / FILES["claude-code", "user"]
    path.parent.mkdir(parents=True)
    path.write_text(text)
    code, _, err = run(capsys, "hook", "install", "claude-code")
    assert code == 2 and err.count("\n") == 1 and "nothing was changed" in err
    assert path.read_text() == text


def test_each_agent_gets_its_own_shape(dirs, capsys):
    for agent in ("claude-code", "codex", "gemini"):
        assert run(capsys, "hook", "install", agent, "--ttl", "90s")[0] == 0
    claude = json.loads((dirs / FILES["claude-code", "user"]).read_text())
    codex = json.loads((dirs / FILES["codex", "user"]).read_text())
    gemini = json.loads((dirs / FILES["gemini", "user"]).read_text())
    [handler] = claude["hooks"]["PreToolUse"][0]["hooks"]
    assert {k: v for k, v in handler.items() if k != "command"} == {
        "type": "command", "timeout": 120, "onFailure": "block"}
    [handler] = codex["hooks"]["PermissionRequest"][0]["hooks"]
    assert {k: v for k, v in handler.items() if k != "command"} == {
        "type": "command", "timeout": 120}  # seconds; Codex has no onFailure
    [handler] = gemini["hooks"]["BeforeTool"][0]["hooks"]
    assert {k: v for k, v in handler.items() if k != "command"} == {
        "type": "command", "timeout": 120_000, "name": "tapgate"}  # milliseconds


def test_claude_permission_request_event_and_matcher(dirs, capsys):
    code, out, _ = run(capsys, "hook", "install", "claude-code", "--event", "PermissionRequest",
                       "--matcher", "Bash|Write|Edit|mcp__.*")
    assert code == 0 and "(PermissionRequest + SessionEnd, timeout 630 s)" in out
    data = json.loads((dirs / FILES["claude-code", "user"]).read_text())
    assert list(data["hooks"]) == ["PermissionRequest", "SessionEnd"]
    assert data["hooks"]["PermissionRequest"][0]["matcher"] == "Bash|Write|Edit|mcp__.*"


def test_new_options_update_our_entry_in_place_and_never_duplicate(dirs, capsys):
    path = seed(dirs, "claude-code", "user")
    run(capsys, "hook", "install", "claude-code")
    code, out, _ = run(capsys, "hook", "install", "claude-code", "--event", "PermissionRequest",
                       "--ttl", "2m", "--fallback", "deny")
    assert code == 0 and out.startswith("updated the claude-code hook")
    data = json.loads(path.read_text())
    assert data["hooks"]["PreToolUse"] == EXISTING["claude-code"]["hooks"]["PreToolUse"]
    [handler] = ours(data, "claude-code")
    assert handler["timeout"] == 150 and "--fallback deny" in handler["command"]
    run(capsys, "hook", "uninstall", "claude-code")
    assert json.loads(path.read_text()) == EXISTING["claude-code"]


def test_uninstall_keeps_the_users_hooks_that_share_our_group_and_their_empty_containers(
        dirs, capsys):
    path = dirs / FILES["claude-code", "user"]
    path.parent.mkdir(parents=True)
    ours_cmd = "/opt/bin/tapgate hook claude-code --ttl 10m"
    before = {"hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [
        {"type": "command", "command": "guard.sh"}, {"type": "command", "command": ours_cmd}]},
        {"hooks": []}], "Stop": []}}
    path.write_text(json.dumps(before))
    assert run(capsys, "hook", "uninstall", "claude-code")[0] == 0
    assert json.loads(path.read_text()) == {"hooks": {"PreToolUse": [
        {"matcher": "Bash", "hooks": [{"type": "command", "command": "guard.sh"}]},
        {"hooks": []}], "Stop": []}}
    # Another agent's tapgate hook is not ours to remove.
    assert not inst.is_ours({"command": "/opt/bin/tapgate hook codex"}, "claude-code")
    assert not inst.is_ours({"command": "/opt/bin/notify hook claude-codex"}, "claude-code")


def test_a_new_file_is_created_and_uninstall_leaves_it_empty(dirs, capsys):
    path = dirs / FILES["gemini", "project"]
    assert run(capsys, "hook", "install", "gemini", "--scope", "project")[0] == 0
    assert len(ours(json.loads(path.read_text()), "gemini")) == 1
    assert run(capsys, "hook", "uninstall", "gemini", "--scope", "project")[0] == 0
    assert json.loads(path.read_text()) == {}


def test_mode_and_symlink_are_kept(dirs, capsys):
    real = dirs / "dotfiles" / "claude.json"
    real.parent.mkdir()
    real.write_text(json.dumps(EXISTING["claude-code"]))
    real.chmod(0o640)  # not mkstemp's 0600, so a lost mode shows
    link = dirs / FILES["claude-code", "user"]
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    assert run(capsys, "hook", "install", "claude-code")[0] == 0
    assert link.is_symlink() and len(ours(json.loads(real.read_text()), "claude-code")) == 1
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert [p.name for p in real.parent.iterdir()] == ["claude.json"]  # no temp file left


def test_scopes_an_agent_lacks_and_bad_options_are_one_line_errors(dirs, capsys):
    for argv in (["codex", "--scope", "local"], ["gemini", "--scope", "local"],
                 ["claude-code", "--ttl", "soon"], ["claude-code", "--matcher", "("]):
        code, out, err = run(capsys, "hook", "install", *argv)
        assert code == 2 and out == "" and err.count("\n") == 1, argv
    assert not (dirs / "home" / ".claude").exists()


def test_codex_home_is_honoured(dirs, capsys, monkeypatch):
    monkeypatch.setenv("CODEX_HOME", str(dirs / "codexhome"))
    assert run(capsys, "hook", "install", "codex")[0] == 0
    assert (dirs / "codexhome" / "hooks.json").is_file()


# --- the command line written into the file -----------------------------------------------


def installed_argv(root: Path, agent: str) -> list[str]:
    data = json.loads((root / FILES[agent, "user"]).read_text())
    [handler] = ours(data, agent)
    return shlex.split(handler["command"])


def split_prefix(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the executable part, tapgate's own arguments) of an installed command."""
    if argv[1:3] == ["-m", "bot"]:
        return argv[:3], argv[3:]
    return argv[:1], argv[1:]


@pytest.mark.parametrize("agent", ["claude-code", "codex", "gemini"])
def test_the_command_is_an_executable_tapgate_hook_command_line(dirs, capsys, agent):
    env_file = dirs / "proj" / "my.env"
    env_file.write_text("TAPGATE_SOCKET_PATH=/run/elsewhere/t.sock\n")
    code, _, _ = run(capsys, "--env-file", "my.env", "hook", "install", agent, "--ttl", "5m",
                     "--fallback", "deny", "--only", "Bash|mcp__.*")
    assert code == 0
    argv = installed_argv(dirs, agent)
    exe, rest = split_prefix(argv)
    if len(exe) == 3:
        assert exe[0] == sys.executable
    else:
        assert os.path.isabs(exe[0]) and os.access(exe[0], os.X_OK)
    args = cli.build_parser().parse_args(rest)
    assert (args.command, args.hook_command, args.agent) == ("hook", agent, agent)
    assert (args.ttl, args.fallback, args.only) == ("5m", "deny", "Bash|mcp__.*")
    assert args.env_file == str(env_file)  # absolute: hooks run in any directory
    assert args.socket == "/run/elsewhere/t.sock"  # the non-default socket is spelled out


@pytest.mark.parametrize(("agent", "scope"), CASES)
def test_requested_by_and_required_approvals_are_written_and_uninstalled(
        dirs, capsys, agent, scope):
    path = seed(dirs, agent, scope)
    original = path.read_bytes()
    run(capsys, "hook", "install", agent, "--scope", scope)
    code, out, _ = run(capsys, "hook", "install", agent, "--scope", scope,
                       "--requested-by", "1001", "--required-approvals", "2")
    assert code == 0 and out.startswith("updated the ")  # in place, never doubled
    data = json.loads(path.read_text())
    handlers = ours(data, agent) + ours(data, agent, session_end=True)
    assert len(handlers) == (1 if agent == "codex" else 2)
    for handler in handlers:  # the tool hook, and the SessionEnd one where there is one
        args = cli.build_parser().parse_args(split_prefix(shlex.split(handler["command"]))[1])
        assert (args.agent, args.requested_by, args.required_approvals) == (agent, "1001", "2")
    code, out, _ = run(capsys, "hook", "uninstall", agent, "--scope", scope)
    assert code == 0 and out.startswith("removed the ")
    assert json.loads(path.read_text()) == json.loads(original)


@pytest.mark.parametrize("argv", [["--requested-by", "@alice"], ["--required-approvals", "11"]])
def test_bad_approver_options_are_refused_before_anything_is_written(dirs, capsys, argv):
    with pytest.raises(SystemExit) as exit_:  # argparse's, as for tapgate request's
        cli.main(["hook", "install", "claude-code", *argv])
    last = capsys.readouterr().err.splitlines()[-1]
    assert exit_.value.code == 2 and repr(argv[1]) in last
    assert last.startswith(f"tapgate hook install: error: argument {argv[0]}: ")
    assert not (dirs / "home" / ".claude").exists()


def test_the_default_socket_is_left_to_the_client(dirs, capsys, monkeypatch):
    monkeypatch.setenv("TAPGATE_SOCKET_PATH", str(dirs / "default.sock"))
    monkeypatch.setattr(inst, "default_socket_path", lambda: dirs / "default.sock")
    run(capsys, "hook", "install", "claude-code")
    run(capsys, "hook", "install", "codex")
    run(capsys, "hook", "install", "gemini")
    assert "--socket" not in installed_argv(dirs, "claude-code")
    assert "--socket" not in installed_argv(dirs, "codex")
    # Gemini CLI runs hooks in a sanitized environment: the path is always spelled out.
    _, rest = split_prefix(installed_argv(dirs, "gemini"))
    assert cli.build_parser().parse_args(rest).socket == str(dirs / "default.sock")


def test_a_relative_socket_is_made_absolute(dirs, capsys, monkeypatch):
    monkeypatch.setenv("TAPGATE_SOCKET_PATH", "rel.sock")
    monkeypatch.setattr(inst, "default_socket_path", lambda: None)  # cwd-dependent default
    run(capsys, "hook", "install", "codex")
    _, rest = split_prefix(installed_argv(dirs, "codex"))
    assert cli.build_parser().parse_args(rest).socket == str(dirs / "proj" / "rel.sock")


def test_the_running_tapgate_script_is_preferred(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "tapgate"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "hook", "install", "codex"])
    assert inst.tapgate_argv() == [str(script)]
    monkeypatch.setattr(sys, "argv", ["/nonexistent/pytest"])
    argv = inst.tapgate_argv()
    assert argv == [sys.executable, "-m", "bot"] or Path(argv[0]).parent == Path(
        sys.executable).parent


@pytest.mark.parametrize("agent", ["claude-code", "codex", "gemini"])
def test_the_installed_command_answers_a_documented_stdin(dirs, capsys, agent):
    pytest.importorskip("bot.integrations.core", reason="the hook command itself is not built yet")
    code, _, _ = run(capsys, "hook", "install", agent, "--ttl", "2s", "--fallback", "deny")
    assert code == 0
    data = json.loads((dirs / FILES[agent, "user"]).read_text())
    [handler] = ours(data, agent)
    env = {**os.environ, "TAPGATE_SOCKET_PATH": str(dirs / "nobody-listens.sock")}
    # Run from elsewhere, through a shell, as the agent does.
    done = subprocess.run(handler["command"], shell=True, input=json.dumps(STDIN[agent]),
                          capture_output=True, text=True, env=env, timeout=60, cwd=dirs)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    answer = json.loads(done.stdout)  # an unreachable bot: the deny fallback, in its contract
    if agent == "claude-code":
        assert answer["hookSpecificOutput"]["permissionDecision"] == "deny"
    elif agent == "codex":
        assert answer["hookSpecificOutput"]["decision"]["behavior"] == "deny"
    else:
        assert answer["decision"] == "deny"


def test_python_dash_m_bot_installs_end_to_end(dirs):
    path = seed(dirs, "codex", "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPGATE_", "CODEX_"))}
    env.update(HOME=str(dirs / "home"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "bot", "hook", "install", "codex",
                           "--scope", "project"], cwd=dirs / "proj", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"installed the codex hook in {path} (PermissionRequest")
    assert len(ours(json.loads(path.read_text()), "codex")) == 1


def test_settings_from_a_bot_env_in_the_cwd_are_named_absolutely(dirs, capsys):
    (dirs / "proj" / "bot.env").write_text("TAPGATE_LOG_LEVEL=DEBUG\n")
    run(capsys, "hook", "install", "gemini")
    _, rest = split_prefix(installed_argv(dirs, "gemini"))
    assert cli.build_parser().parse_args(rest).env_file == str(dirs / "proj" / "bot.env")


def test_with_no_socket_setting_the_hook_finds_the_well_known_one_itself(dirs, capsys):
    run(capsys, "hook", "install", "claude-code")
    assert "--socket" not in installed_argv(dirs, "claude-code")
