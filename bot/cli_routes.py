"""``tapgate routes``: where requests go, on the database directly.

Lists the routes in the order the bot tries them — the stored ones (the last policy
file applied with a ``routes`` section), then ``TAPGATE_ROUTES``, then the approver
chats for everything else — and, given an agent and a kind, which route a request of
theirs takes. Reads only, works while the bot is down, never migrates; every error is
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bot.cli import CommandError, _read, dump, out

if TYPE_CHECKING:
    from bot.config import Settings

STORED = "policy file"  # where a stored route came from (tapgate policy apply)
SETTINGS = "TAPGATE_ROUTES"
DEFAULT = "TAPGATE_APPROVER_CHAT_IDS"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``routes`` on the top-level parser's subcommands."""
    p = sub.add_parser("routes", help="where requests are posted: the routes in order, or "
                                      "the one an agent and kind take")
    p.add_argument("--agent", help="with --kind: show the route a request of this agent and "
                                   "kind takes")
    p.add_argument("--kind", help="with --agent: the request's kind")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_routes)


def in_order(stored: list, settings: Settings) -> list[dict[str, Any]]:
    """Every route the bot tries, first match first, with where it came from."""
    return [{"position": n, "source": source, "agent": r.agent, "kind": r.kind,
             "chats": list(r.chats), "approvers": r.approvers}
            for n, (source, r) in enumerate([*((STORED, r) for r in stored),
                                             *((SETTINGS, r) for r in settings.routes)], 1)]


def cmd_routes(args: argparse.Namespace, settings: Settings) -> int:
    from bot.routing import first_route

    if (args.agent is None) != (args.kind is None):
        raise CommandError("give both --agent and --kind (a request has both), or neither "
                           "to list the routes")

    stored = _read(settings, lambda s: s.list_routes())
    routes = in_order(stored, settings)
    default = list(settings.approver_chat_ids)
    escalation = {"chats": list(settings.escalation_chat_ids),
                  "after_seconds": settings.escalate_after}
    if args.agent is None and args.kind is None:
        if args.json:
            dump({"routes": routes, "default_chats": default, "escalation": escalation})
        else:
            out(routes_table(routes, default, escalation))
        return 0
    agent, kind = args.agent, args.kind
    n = first_route([*stored, *settings.routes], agent, kind)  # the order of in_order
    taken = None if n is None else routes[n]
    chats = default if taken is None else taken["chats"]
    if args.json:
        dump({"agent": agent, "kind": kind, "route": taken, "chats": chats})
    elif taken is None:
        out(f"{agent} · {kind} → no route matches: the approver chats ({DEFAULT}): "
            f"{_chats(chats)}")
    else:
        decides = "" if taken["approvers"] is None else \
            f"; decided by {_approvers(taken['approvers'])}"
        out(f"{agent} · {kind} → route {taken['position']} ({taken['source']}: agent "
            f"{taken['agent']}, kind {taken['kind']}): {_chats(chats)}{decides}")
    return 0


def _chats(chats: list[int]) -> str:
    return ", ".join(map(str, chats)) or "none"


def _approvers(users: list[int] | None) -> str:
    return "any allowed user" if users is None else ", ".join(map(str, users))


def routes_table(routes: list[dict], default: list[int], escalation: dict) -> str:
    from bot.tables import duration, table, truncate

    rows = [(r["position"], r["source"], truncate(r["agent"], 30), truncate(r["kind"], 30),
             _chats(r["chats"]), _approvers(r["approvers"])) for r in routes]
    rows.append(("-", DEFAULT, "*", "*", _chats(default), _approvers(None)))
    lines = [table(("#", "FROM", "AGENT", "KIND", "CHATS", "APPROVERS"), rows, right=(0,)),
             "First match wins; a request no route matches goes to the approver chats."]
    if escalation["chats"] and escalation["after_seconds"]:
        lines.append(f"Still pending after {duration(escalation['after_seconds'])}: also "
                     f"{_chats(escalation['chats'])} (TAPGATE_ESCALATION_CHAT_IDS; a run's "
                     "policy may set another delay).")
    return "\n".join(lines)
