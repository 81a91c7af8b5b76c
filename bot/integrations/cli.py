"""The ``tapgate hook ...`` and ``tapgate mcp ...`` command lines.

Only argument parsing lives here; each command imports its module when it runs,
so a hook (which runs before every tool call of an agent) loads only what it needs.
"""

from __future__ import annotations

import argparse

from bot.integrations.approvers import add_options as add_approver_options

AGENTS = ("claude-code", "codex", "gemini")
FALLBACKS = ("ask", "deny", "allow")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``hook`` and ``mcp`` on the top-level parser's subcommands."""
    hook = sub.add_parser("hook", help="agent hooks: ask for approval before a tool runs")
    agents = hook.add_subparsers(dest="hook_command", required=True,
                                 metavar="{claude-code,codex,gemini,install,uninstall}")
    for agent in AGENTS:
        p = agents.add_parser(agent, help=f"the {agent} hook: event JSON on stdin, "
                                          "the agent's decision JSON on stdout")
        p.add_argument("--fallback", choices=FALLBACKS, default=None,
                       help="answer when the request expires or the bot is unreachable "
                            "(default: ask; for gemini, which has no ask: deny)")
        p.add_argument("--ttl", default="10m",
                       help="how long the request waits for a person (default 10m)")
        p.add_argument("--only", metavar="REGEX",
                       help="gate only tools whose name matches; others pass untouched")
        p.add_argument("--socket", metavar="PATH", help="the bot's socket (default: the "
                                                        "settings' TAPGATE_SOCKET_PATH)")
        add_approver_options(p, checked=False)  # a bad value: the fallback, as for --ttl
        p.set_defaults(func=_run_hook, agent=agent, needs_settings=False)
    for verb in ("install", "uninstall"):
        p = agents.add_parser(verb, help=f"{verb} the hook in an agent's settings")
        p.add_argument("agent", choices=AGENTS)
        p.add_argument("--scope", choices=("user", "project", "local"), default="user",
                       help="user (~/.claude, ~/.codex, ~/.gemini) or this project's files")
        p.add_argument("--dry-run", action="store_true",
                       help="print the resulting settings file instead of writing it")
        if verb == "install":
            p.add_argument("--matcher", metavar="REGEX",
                           help="which tools the agent sends to the hook (default: all)")
            p.add_argument("--event", choices=("PreToolUse", "PermissionRequest"),
                           default="PreToolUse", help="claude-code only: the hook event")
            p.add_argument("--ttl", default="10m", help="the request's TTL (the hook's "
                                                        "timeout is set above it)")
            p.add_argument("--fallback", choices=FALLBACKS, default=None)
            p.add_argument("--only", metavar="REGEX")
            add_approver_options(p)
        p.set_defaults(func=_install if verb == "install" else _uninstall)

    mcp = sub.add_parser("mcp", help="an MCP server over stdio (ask a human from any MCP "
                                     "client)")
    # Options of the server, not tool arguments: the model must not choose whom its
    # requests act for (bot/integrations/approvers.py).
    add_approver_options(mcp)
    mcp.set_defaults(func=_serve_mcp, needs_settings=False)
    mcp_sub = mcp.add_subparsers(dest="mcp_command", metavar="{install}")
    p = mcp_sub.add_parser("install", help="register the MCP server with an MCP client")
    p.add_argument("client", choices=("claude-code",))
    p.add_argument("--scope", choices=("user", "project", "local"), default="project")
    p.add_argument("--dry-run", action="store_true")
    add_approver_options(p, keep_parent=True)  # mcp --requested-by U install: kept too
    p.set_defaults(func=_install_mcp, needs_settings=True)


def _run_hook(args: argparse.Namespace, settings) -> int:
    from bot.integrations.core import run_hook

    return run_hook(args.agent, args)


def _install(args: argparse.Namespace, settings) -> int:
    from bot.integrations.install import install

    return install(args, settings)


def _uninstall(args: argparse.Namespace, settings) -> int:
    from bot.integrations.install import uninstall

    return uninstall(args, settings)


def _serve_mcp(args: argparse.Namespace, settings) -> int:
    from bot.integrations.mcp import serve

    return serve(args)


def _install_mcp(args: argparse.Namespace, settings) -> int:
    from bot.integrations.mcp import install

    return install(args, settings)
