"""``tapgate hook install|uninstall AGENT``: put the hook into an agent's settings file.

Each agent reads command hooks from a JSON file of the same shape,
``{"hooks": {EVENT: [{"matcher": REGEX, "hooks": [{"type": "command", ...}]}]}}``:

- Claude Code: ``~/.claude/settings.json`` (user), ``.claude/settings.json`` (project),
  ``.claude/settings.local.json`` (local); event PreToolUse or PermissionRequest, and
  SessionEnd (the session's run completes, ending its "this session" rules);
  ``timeout`` in seconds; ``"onFailure": "block"`` so a hook that cannot answer blocks.
- Codex: ``$CODEX_HOME/hooks.json`` (default ``~/.codex``) or ``.codex/hooks.json``;
  event PermissionRequest; ``timeout`` in seconds (``codex-rs/config/src/hook_config.rs``).
- Gemini CLI: ``~/.gemini/settings.json`` or ``.gemini/settings.json``; event
  BeforeTool, and SessionEnd as for Claude Code; ``timeout`` in milliseconds.

Our entry is recognised by its command (``... hook AGENT ...``), so ``uninstall``
removes exactly what ``install`` added and every other setting and hook stays.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Settings, parse_duration
from bot.integrations import approvers
from storage.errors import TapgateError

# The hook answers within the request's TTL; the agent must not kill it first.
TIMEOUT_MARGIN_S = 30
SESSION_END_TIMEOUT_S = 10  # one call to the bot; the agent is exiting


class InstallError(TapgateError):
    """A settings file cannot be changed safely; the message is one line."""

    code = "install_error"


@dataclass(frozen=True)
class Agent:
    """Where and in what shape one agent reads its command hooks."""

    name: str
    user_file: str  # relative to the agent's home directory
    project_files: dict[str, str]  # scope -> path relative to the working directory
    events: tuple[str, ...]  # the first is the default
    timeout_unit_s: float  # 1 for seconds, 0.001 for milliseconds
    extra: tuple[tuple[str, Any], ...] = ()  # fields added to our hook entry
    # Gemini CLI runs hooks "with a sanitized environment" (docs/hooks/index.md), so the
    # XDG variables the default socket path is computed from may be missing there.
    sanitized_env: bool = False
    # The event at the end of a session: the hook completes the session's run there, so
    # the rules an approver made for "this session" end with it.
    session_end: str | None = None

    def home(self) -> Path:
        """The agent's per-user directory."""
        if self.name == "codex" and os.environ.get("CODEX_HOME"):
            return Path(os.environ["CODEX_HOME"]).expanduser()
        return Path.home() / {"claude-code": ".claude", "codex": ".codex",
                              "gemini": ".gemini"}[self.name]


AGENTS = {
    "claude-code": Agent("claude-code", "settings.json",
                         {"project": ".claude/settings.json",
                          "local": ".claude/settings.local.json"},
                         ("PreToolUse", "PermissionRequest"), 1,
                         (("onFailure", "block"),), session_end="SessionEnd"),
    "codex": Agent("codex", "hooks.json", {"project": ".codex/hooks.json"},
                   ("PermissionRequest",), 1),
    "gemini": Agent("gemini", "settings.json", {"project": ".gemini/settings.json"},
                    ("BeforeTool",), 0.001, (("name", "tapgate"),), sanitized_env=True,
                    session_end="SessionEnd"),
}


# --- the hook's command line ----------------------------------------------------------------


def tapgate_argv() -> list[str]:
    """How to run this very tapgate from any directory: an absolute argv prefix.

    The running ``tapgate`` script when that is how we were started, else the one
    installed next to this interpreter, else ``python -m bot`` with this interpreter,
    so the hook always runs the same installation as the one that installed it.
    """
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started and started.name == "tapgate" and started.is_file():
        return [os.path.abspath(started)]
    sibling = Path(sys.executable).parent / "tapgate"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    return [sys.executable, "-m", "bot"]


def default_socket_path() -> Path | None:
    """The socket a client finds with no settings at all; None if it depends on cwd."""
    try:
        default = Settings.model_fields["socket_path"].get_default(call_default_factory=True)
    except Exception:  # a default that cannot be computed here: always say the path
        return None
    path = Path(default).expanduser()
    return path if path.is_absolute() else None


def socket_arg(settings: Settings | None, always: bool = False) -> str | None:
    """The ``--socket`` value the hook needs, or None when the default finds the bot."""
    if settings is None:
        return None
    configured = Path(settings.socket_path).expanduser().absolute()
    if always:
        return str(configured)
    default = default_socket_path()
    # A relative default is resolved in the agent's working directory, which is
    # wherever the agent runs: only an absolute path reaches the bot from there.
    if default is not None and configured == default.absolute():
        return None
    return str(configured)


def hook_command(agent: str, args: argparse.Namespace, settings: Settings | None) -> str:
    """The shell command the agent runs: ``<tapgate> [--env-file F] hook AGENT --ttl ...``
    (with ``--requested-by`` and ``--required-approvals`` when given)."""
    argv = tapgate_argv()
    env_file = getattr(args, "env_file", None)
    if env_file is None and Path("bot.env").is_file():
        # The settings came from ./bot.env, which the hook, run in the agent's working
        # directory, would not find: name it.
        env_file = "bot.env"
    if env_file:
        argv += ["--env-file", os.path.abspath(env_file)]
    argv += ["hook", agent, "--ttl", str(args.ttl).strip()]
    if args.fallback:
        argv += ["--fallback", args.fallback]
    if args.only:
        argv += ["--only", args.only]
    argv += approvers.argv(args)
    socket = socket_arg(settings, always=AGENTS[agent].sanitized_env)
    if socket:
        argv += ["--socket", socket]
    return shlex.join(argv)


def is_ours(handler: object, agent: str) -> bool:
    """True for a hook entry that ``install`` wrote for ``agent``."""
    if not isinstance(handler, dict) or not isinstance(handler.get("command"), str):
        return False
    return re.search(rf"(^|\s)hook\s+{re.escape(agent)}(\s|$)", handler["command"]) is not None


# --- settings files ---------------------------------------------------------------------------


def settings_path(agent: Agent, scope: str) -> Path:
    """The file ``scope`` names for ``agent``; InstallError for a scope it lacks."""
    if scope == "user":
        return agent.home() / agent.user_file
    if scope not in agent.project_files:
        scopes = " or ".join(["user", *agent.project_files])
        raise InstallError(f"{agent.name} has no {scope} settings file; use --scope {scopes}")
    return Path.cwd() / agent.project_files[scope]


def read_settings(path: Path) -> tuple[dict[str, Any], str | None]:
    """The settings object and the file's text (None when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except UnicodeDecodeError:
        raise InstallError(f"{path}: not UTF-8 text; nothing was changed") from None
    if not text.strip():
        return {}, text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}); fix it first, nothing was changed") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path}: expected a JSON object at the top; nothing was changed")
    return data, text


def render(data: dict[str, Any]) -> str:
    """The file's new text: two-space JSON, as the agents write it themselves."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temp file and rename, keeping its mode.

    A symlinked settings file (dotfile managers) is written through the link, so
    the link stays. A crash leaves either the old file or the new one, never half.
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hooks_table(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data["hooks"]`` checked for the shape we edit (an object of lists of groups)."""
    hooks = data.get("hooks", {})
    if not isinstance(hooks, dict):
        raise InstallError(f"{path}: \"hooks\" is not an object; nothing was changed")
    for event, groups in hooks.items():
        # Gemini keeps non-event keys (e.g. "enabled": true) in the same object.
        if isinstance(groups, list) and not all(isinstance(g, dict) for g in groups):
            raise InstallError(f"{path}: hooks.{event} holds a non-object entry; "
                               "nothing was changed")
    return hooks


def remove_ours(data: dict[str, Any], agent: str, path: Path) -> int:
    """Delete our hook entries from ``data`` in place; returns how many were removed.

    Only containers that held our entry and are empty afterwards are deleted, so a
    group, event list or ``hooks`` object the user left empty stays as it was.
    """
    if "hooks" not in data:
        return 0
    hooks = _hooks_table(data, path)
    removed = 0
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list):
            continue
        kept_groups = []
        for group in groups:
            handlers = group.get("hooks")
            if not isinstance(handlers, list):
                kept_groups.append(group)
                continue
            kept = [h for h in handlers if not is_ours(h, agent)]
            removed += len(handlers) - len(kept)
            if kept or len(kept) == len(handlers):
                group["hooks"] = kept
                kept_groups.append(group)
        if len(kept_groups) != len(groups):
            if kept_groups:
                hooks[event] = kept_groups
            else:
                del hooks[event]
    if removed and not hooks:
        del data["hooks"]
    return removed


def _installed(data: dict[str, Any], agent: str, wanted: dict[str, dict[str, Any]]) -> bool:
    """True when our hook for ``agent`` sits exactly in the ``wanted`` groups (one per
    event) and nowhere else."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return False
    places = [(name, g) for name, groups in hooks.items() if isinstance(groups, list)
              for g in groups if isinstance(g, dict) and isinstance(g.get("hooks"), list)
              for h in g["hooks"] if is_ours(h, agent)]
    return len(places) == len(wanted) and all(wanted.get(e) == g for e, g in places)


# --- the commands -----------------------------------------------------------------------------


def _agent_and_path(args: argparse.Namespace) -> tuple[Agent, Path]:
    agent = AGENTS[args.agent]
    return agent, settings_path(agent, args.scope)


def _emit(path: Path, text: str, dry_run: bool) -> None:
    if dry_run:
        sys.stdout.write(text)
    else:
        write_atomically(path, text)


def install(args: argparse.Namespace, settings: Settings | None) -> int:
    """Merge the hook into the agent's settings file; exit code 0, or 2 on a refusal."""
    agent, path = _agent_and_path(args)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise InstallError(f"--ttl: {exc}") from None
    if ttl <= 0:
        raise InstallError("--ttl: must be positive")
    if args.matcher:
        try:
            re.compile(args.matcher)
        except re.error as exc:
            raise InstallError(f"--matcher: not a regular expression ({exc})") from None
    event = args.event if args.agent == "claude-code" else agent.events[0]
    timeout_s = math.ceil(ttl) + TIMEOUT_MARGIN_S
    handler: dict[str, Any] = {"type": "command",
                               "command": hook_command(args.agent, args, settings),
                               "timeout": round(timeout_s / agent.timeout_unit_s)}
    handler.update(agent.extra)
    group: dict[str, Any] = {"matcher": args.matcher} if args.matcher else {}
    group["hooks"] = [handler]
    wanted = {event: group}
    if agent.session_end:  # no matcher: the event is not about a tool
        ending = {**handler, "timeout": round(SESSION_END_TIMEOUT_S / agent.timeout_unit_s)}
        ending.pop("onFailure", None)  # nothing to block at the end of a session
        wanted[agent.session_end] = {"hooks": [ending]}

    data, before = read_settings(path)
    events = " + ".join(wanted)
    where = f"the {agent.name} hook in {path} ({events}, timeout {timeout_s} s)"
    if _installed(data, agent.name, wanted):
        if args.dry_run:
            sys.stdout.write(before if before is not None else render(data))
        print(f"already installed: {where}", file=sys.stderr if args.dry_run else sys.stdout)
        return 0
    replaced = remove_ours(data, agent.name, path)
    hooks = data.setdefault("hooks", {})
    for name, wanted_group in wanted.items():
        groups = hooks.setdefault(name, [])
        if not isinstance(groups, list):
            raise InstallError(f"{path}: hooks.{name} is not a list; nothing was changed")
        groups.append(wanted_group)
    _emit(path, render(data), args.dry_run)
    verb = "updated" if replaced else "installed"
    if args.dry_run:
        print(f"dry run, nothing written: would have {verb} {where}", file=sys.stderr)
    else:
        print(f"{verb} {where}")
    return 0


def uninstall(args: argparse.Namespace, settings: Settings | None) -> int:
    """Remove exactly what ``install`` added; "not installed" (exit 0) when absent."""
    agent, path = _agent_and_path(args)
    data, before = read_settings(path)
    if not remove_ours(data, agent.name, path):
        if args.dry_run and before is not None:
            sys.stdout.write(before)
        print(f"not installed: no {agent.name} hook in {path}",
              file=sys.stderr if args.dry_run else sys.stdout)
        return 0
    _emit(path, render(data), args.dry_run)
    if args.dry_run:
        print(f"dry run, nothing written: would have removed the {agent.name} hook from {path}",
              file=sys.stderr)
    else:
        print(f"removed the {agent.name} hook from {path}")
    return 0
