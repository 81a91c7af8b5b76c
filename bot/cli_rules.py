"""``tapgate rules list|add|revoke``: standing decisions, on the database directly.

Like the other maintenance commands they work while the bot is down and never
migrate; the bot reads rules from the database at every submit, so a rule added
or revoked here takes effect with the next request. Every error is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bot.cli import CommandError, _duration, _read, database, dump, out

if TYPE_CHECKING:
    from bot.config import Settings
    from storage.rule_records import Rule

MAX_RULE_TTL = 366 * 86400.0  # as the socket API's (bot.api.schemas.MAX_RULE_TTL)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``rules`` on the top-level parser's subcommands."""
    rules = sub.add_parser("rules", help="standing decisions: requests they approve at once"
                           ).add_subparsers(dest="rules_command", required=True,
                                            metavar="{list,add,revoke}")
    p = rules.add_parser("list", help="live rules, oldest first")
    p.add_argument("--all", action="store_true", help="revoked and expired rules too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rules_list)

    p = rules.add_parser("add", help="approve an agent's matching requests from now on")
    p.add_argument("--agent", required=True, help="the requests' agent, e.g. claude-code")
    p.add_argument("--kind", required=True, help="the requests' kind, e.g. Bash")
    p.add_argument("--match", required=True, metavar="GLOB",
                   help="a glob on the summary; * is the only wildcard (e.g. 'git status *')")
    p.add_argument("--run", dest="run_id", metavar="RUN", help="only requests of this run")
    p.add_argument("--ttl", type=_duration, help="the rule ends after this long, e.g. 8h "
                                                 "(default: never, until revoked)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rules_add)

    p = rules.add_parser("revoke", help="end a rule now")
    p.add_argument("id", metavar="ID", help="the rule's id (tapgate rules list)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rules_revoke)


def _who() -> str:
    """``cli:<user>``: who made or revoked a rule from the command line."""
    import getpass
    import os

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid
        return f"cli:uid{os.getuid()}"


def cmd_rules_list(args: argparse.Namespace, settings: Settings) -> int:
    rules = _read(settings, lambda s: s.list_rules(not args.all))
    if args.json:
        dump({"items": [r.model_dump(mode="json") for r in rules]})
    else:
        out(rules_table(rules, datetime.now(UTC)))
    return 0


def cmd_rules_add(args: argparse.Namespace, settings: Settings) -> int:
    from bot.rules import validate_new_rule
    from storage.rule_records import NewRule

    validate_new_rule(args.agent, args.kind, args.match)  # one line, exit 2
    expires_at = None
    if args.ttl is not None:
        if not 1 <= args.ttl <= MAX_RULE_TTL:
            raise CommandError("--ttl: must be between 1s and 366d")
        expires_at = datetime.now(UTC) + timedelta(seconds=args.ttl)
    new = NewRule(agent=args.agent, kind=args.kind, match=args.match, run_id=args.run_id,
                  created_by=_who(), expires_at=expires_at)
    with database(settings) as store:
        # "run ... not found" (or completed), before writing
        if args.run_id is not None and store.get_run(args.run_id).status == "completed":
            raise CommandError(f"run {args.run_id} is completed: a rule for it would never "
                               "apply")
        rule = store.create_rule(new)
    if args.json:
        dump(rule.model_dump(mode="json"))
    else:
        out(f"added rule #{rule.id}: {_describe(rule)}")
    return 0


def cmd_rules_revoke(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rule_id = int(args.id.lstrip("#"))
    except ValueError:
        raise CommandError(f"invalid rule id {args.id!r}: a number, e.g. 12") from None
    if not 1 <= rule_id < 2**63:
        raise CommandError(f"invalid rule id {args.id!r}: a number, e.g. 12")
    with database(settings) as store:
        rule = store.revoke_rule(rule_id, _who())
    if args.json:
        dump(rule.model_dump(mode="json"))
    else:
        out(f"revoked rule #{rule.id}: {_describe(rule)} ({rule.uses:,} use"
            f"{'' if rule.uses == 1 else 's'})")
    return 0


# --- rendering ------------------------------------------------------------------------------


def _describe(rule: Rule) -> str:
    scope = f"in run {rule.run_id}" if rule.run_id else "in any run"
    return f"{rule.agent} {rule.kind} {rule.match!r} {scope}"


def _state(rule: Rule, now: datetime) -> str:
    from bot.tables import duration

    if rule.revoked_at is not None:
        return "revoked"
    if rule.expires_at is None:
        return "never"
    if rule.expires_at <= now:
        return "expired"
    return "in " + duration((rule.expires_at - now).total_seconds())


def rules_table(rules: list[Rule], now: datetime) -> str:
    from bot.tables import duration, table, truncate

    if not rules:
        return "no rules"
    rows = [(rule.id, rule.agent, rule.kind, truncate(rule.match, 40),
             truncate(rule.run_id, 20) if rule.run_id else "any run", _state(rule, now),
             f"{rule.uses:,}",
             "-" if rule.last_used_at is None
             else duration((now - rule.last_used_at).total_seconds()) + " ago",
             rule.created_by) for rule in rules]
    return table(("ID", "AGENT", "KIND", "MATCH", "SCOPE", "ENDS", "USES", "LAST USED",
                  "BY"), rows, right=(0, 6))
