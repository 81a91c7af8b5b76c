"""The ``tapgate`` command line (also ``python -m bot``).

``run`` serves; ``request`` talks to the running bot over its socket; the
read-only commands (``pending``, ``runs``, ``spend``, ``migrate --status``,
``audit export``) open the database directly, so they work while the bot is
down, and never migrate it. Every error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from storage.errors import TapgateError
from storage.records import MAX_APPROVALS, MAX_USER_ID

# bot.config (pydantic-settings) is imported where it is used: a hook runs this module
# before every tool call of an agent, and must not pay for the bot's settings.
if TYPE_CHECKING:
    from bot.config import Settings
    from storage.store import Store

EXIT_BY_STATUS = {"approved": 0, "denied": 1, "expired": 3, "cancelled": 3, "pending": 4}
UNTIL_EXPIRY = -1.0  # a bare --wait


class CommandError(TapgateError):
    """A command cannot do what was asked (the message is the one line printed)."""

    code = "command_error"


# --- argument types ------------------------------------------------------------------------


def _duration(text: str) -> float:
    from bot.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _instant(text: str) -> datetime:
    """``--since``/``--until``: parsed and bounded by :func:`bot.window.parse_instant`.

    A bad time is one line and exit 2 (not argparse's usage block): it is a value
    error, like every other error of the command line."""
    from bot.window import parse_instant

    try:
        return parse_instant(text)
    except TapgateError as exc:
        raise SystemExit(fail(str(exc))) from None


def _whole(text: str, high: int, must: str) -> int:
    """``text`` as a whole number from 1 to ``high``; argparse's error saying ``must``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {must}, got {text!r}")
    return value


def approvers_count(text: str) -> int:
    """``--required-approvals``: distinct approvers, within the socket API's bounds."""
    return _whole(text, MAX_APPROVALS, f"a whole number from 1 to {MAX_APPROVALS}")


def telegram_user(text: str) -> int:
    """``--requested-by``: a Telegram user id (a positive integer up to 2**53)."""
    return _whole(text, MAX_USER_ID, "a Telegram user id (a positive whole number, e.g. "
                                     "123456789)")


def _payload(text: str) -> Any:
    """``TEXT`` or ``@FILE``; JSON when it parses as JSON, else the string itself."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tapgate", description="Human-in-the-loop approvals for AI agents over Telegram.")
    parser.add_argument("--env-file", metavar="PATH",
                        help="read settings from PATH (default: ./bot.env, else "
                             "~/.config/tapgate/bot.env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from bot.onboarding_cli import add_commands as add_onboarding

    add_onboarding(sub)  # init, doctor

    sub.add_parser("run", help="migrate, then serve Telegram, the socket API and expiry"
                   ).set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="apply pending migrations (or show them)")
    p.add_argument("--status", action="store_true", help="show applied and pending migrations")
    p.add_argument("--json", action="store_true", help="with --status: JSON")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("request", help="submit an approval request over the socket")
    p.add_argument("--kind", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--payload", type=_payload, help="TEXT or @FILE (sent as JSON if it is JSON)")
    p.add_argument("--agent", default=os.environ.get("USER") or "cli")
    p.add_argument("--run", dest="run_id", metavar="RUN", help="the run it belongs to")
    p.add_argument("--ttl", type=_duration, help="e.g. 90s, 10m, 24h, 7d (default: the bot's)")
    p.add_argument("--wait", type=_duration, nargs="?", const=UNTIL_EXPIRY, metavar="SECONDS",
                   help="wait for the decision (bare: until the request expires)")
    p.add_argument("--idempotency-key", metavar="KEY")
    p.add_argument("--required-approvals", type=approvers_count, metavar="N",
                   help="distinct approvers it needs, 1..10 (the bot never goes below its "
                        "settings' or the run's policy's count)")
    p.add_argument("--requested-by", type=telegram_user, metavar="USER_ID",
                   help="the Telegram user it acts for: their own approval does not count")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("pending", help="table of pending requests")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pending)

    runs = sub.add_parser("runs", help="runs with usage against budget").add_subparsers(
        dest="runs_command", required=True, metavar="{list,show}")
    p = runs.add_parser("list", help="runs, newest first")
    p.add_argument("--status", choices=("running", "halted", "completed"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show", help="one run, its usage and latest checkpoint")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs_show)

    p = sub.add_parser("spend", help="spend summary")
    p.add_argument("--by", default="model", help="provider, model, day, name or metadata.KEY")
    p.add_argument("--since", type=_instant, metavar="T", help="RFC 3339 or YYYY-MM-DD")
    p.add_argument("--until", type=_instant, metavar="T", help="RFC 3339 or YYYY-MM-DD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_spend)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="{export}")
    p = audit.add_parser("export", help="every approval, tool call and ledger row")
    p.add_argument("--run", dest="run_id", metavar="ID")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--out", metavar="FILE", help="default: stdout")
    p.set_defaults(func=cmd_audit_export)

    from bot.cluster_cli import add_commands as add_cluster

    add_cluster(sub)  # status

    from bot.cli_rules import add_commands as add_rules

    add_rules(sub)  # rules list|add|revoke

    from bot.cli_routes import add_commands as add_routes

    add_routes(sub)  # routes

    from bot.integrations.cli import add_commands

    add_commands(sub)

    policy = sub.add_parser("policy", help="policy bundles").add_subparsers(
        dest="policy_command", required=True, metavar="{apply}")
    p = policy.add_parser("apply", help="register the bundles (and routes) of a YAML or TOML "
                          "file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the stored policies as JSON")
    p.set_defaults(func=cmd_policy_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit 2
    try:
        # A hook or the MCP server reads its settings itself: an invalid bot.env must
        # still end in the agent's own answer, never in a bare exit 2.
        settings = None
        if getattr(args, "needs_settings", True):
            from bot.config import load_settings

            settings = load_settings(args.env_file)
        return args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except (TapgateError, OSError) as exc:
        return fail(str(exc) or type(exc).__name__)
    except Exception as exc:  # a driver error, say: still one line, no traceback
        return fail(f"{type(exc).__name__}: {exc}")


def fail(message: str) -> int:
    print(" ".join(message.split()), file=sys.stderr)
    return 2


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def dump(data: Any) -> None:
    out(json.dumps(data, indent=2, ensure_ascii=False))


# --- run, migrate ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_for_run()
    from bot.service import run_service

    return run_service(settings)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from bot.tables import migrations_table
    from storage.store import Store

    if args.status:
        with database(settings, check=False) as store:
            statuses = store.migration_status()
        if args.json:
            dump({"items": [{"index": s.index, "name": s.name, "known": s.known,
                             "applied_at": s.applied.isoformat() if s.applied else None}
                            for s in statuses]})
        else:
            out(migrations_table(statuses))
        return 0
    from bot import places

    places.prepare_dirs(None, settings.database_url)  # a fresh well-known place: create it
    store = Store.from_url(settings.database_url, workers=1)
    try:
        applied = store.migrate()
    finally:
        store.close()
    out("applied " + ", ".join(applied) if applied else "up to date")
    return 0


# --- request (over the socket) ---------------------------------------------------------------


def cmd_request(args: argparse.Namespace, settings: Settings) -> int:
    """Submit; with ``--wait``, wait for the decision across restarts of the bot (until
    SECONDS pass, or the request's expiry for a bare ``--wait``). A socket served by
    another uid than ``TAPGATE_SOCKET_SERVER_UID`` (default: ours) is refused."""
    from bot.client import TapgateClient

    with TapgateClient(settings.socket_path, server_uid=settings.expected_server_uid) as client:
        approval = client.request_approval(
            args.agent, args.kind, args.summary, payload=args.payload, ttl_seconds=args.ttl,
            run_id=args.run_id, idempotency_key=args.idempotency_key,
            required_approvals=args.required_approvals, requested_by=args.requested_by)
        if args.wait is not None:
            timeout = None if args.wait == UNTIL_EXPIRY else args.wait
            # The record, not its id: its expiry bounds the wait through an outage.
            approval = client.wait_for_decision(approval, timeout)
    out(approval.model_dump_json(indent=2))
    return EXIT_BY_STATUS[approval.status] if args.wait is not None else 0


# --- read-only commands (the database, directly) -------------------------------------------------


@contextmanager
def database(settings: Settings, check: bool = True) -> Iterator[Store]:
    """The Store, read-only in spirit: no migration, a newer schema refused."""
    from storage.store import Store

    url = urlparse(settings.database_url)
    if url.scheme == "sqlite":
        path = Path(settings.database_url.removeprefix("sqlite:///").split("?")[0])
        if not path.exists():
            raise CommandError(f"no database at {path} (`tapgate migrate` or `tapgate run` "
                               "creates it)")
    store = Store.from_url(settings.database_url, workers=1)
    try:
        if check:
            statuses = store.migration_status()
            store.check_schema()
            pending = [s.name for s in statuses if s.known and s.applied is None]
            if pending:
                raise CommandError(f"the database is not migrated ({', '.join(pending)} "
                                   "pending): run `tapgate migrate`")
        yield store
    finally:
        store.close()


def _read(settings: Settings, fn: Callable[[Store], Any]) -> Any:
    with database(settings) as store:
        return fn(store)


def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    from bot.tables import pending_table

    approvals = _read(settings, lambda s: s.list_approvals("pending", oldest_first=True))
    if args.json:
        dump({"items": [a.model_dump(mode="json") for a in approvals]})
    else:
        out(pending_table(approvals, datetime.now(UTC)))
    return 0


def cmd_runs_list(args: argparse.Namespace, settings: Settings) -> int:
    from bot.tables import runs_table

    runs = _read(settings, lambda s: s.list_runs(args.status))
    if args.json:
        dump({"items": [r.model_dump(mode="json") for r in runs]})
    else:
        out(runs_table(runs, datetime.now(UTC)))
    return 0


def cmd_runs_show(args: argparse.Namespace, settings: Settings) -> int:
    from bot.tables import run_detail
    from storage.errors import NotFound

    def load(store: Store):
        run = store.get_run(args.id)
        try:
            return run, store.latest_checkpoint(args.id)
        except NotFound:
            return run, None

    run, checkpoint = _read(settings, load)
    if args.json:
        dump({"run": run.model_dump(mode="json"),
              "latest_checkpoint": checkpoint.model_dump(mode="json") if checkpoint else None})
    else:
        out(run_detail(run, checkpoint, datetime.now(UTC)))
    return 0


def cmd_spend(args: argparse.Namespace, settings: Settings) -> int:
    from bot.tables import spend_table

    summary = _read(settings, lambda s: s.summarize_ledger(args.by, args.since, args.until))
    if args.json:
        dump(summary.model_dump(mode="json"))
    else:
        out(spend_table(summary))
    return 0


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from bot.audit import export

    with database(settings) as store:
        if args.out is None:
            export(store, sys.stdout, args.format, args.run_id)
            return 0
        with _private_file(args.out) as f:
            count = export(store, f, args.format, args.run_id)
    print(f"wrote {count:,} rows to {args.out}", file=sys.stderr)
    return 0


def _private_file(path: str):
    """Open ``path`` for writing, created (or reset to) mode 0600: an audit trail holds
    every payload and decision, for its owner's eyes only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by the caller)


def cmd_policy_apply(args: argparse.Namespace, settings: Settings) -> int:
    """Validate every bundle and route of the file first, then write them all (works while
    the bot is down; runs created later with ``policy_ref`` use them; a running bot
    routes by the new routes within about a second)."""
    from bot.policyfile import load_policy_file
    from bot.routing import check_approvers

    loaded = load_policy_file(args.file)  # all valid, or nothing is written
    try:  # approvers must be allowed users, enough for a request (these settings')
        check_approvers(loaded.routes or [], settings.approver_user_ids,
                        settings.default_required_approvals)
    except ValueError as exc:
        raise CommandError(f"{args.file}: {exc}") from None
    with database(settings) as store:
        stored = [store.upsert_policy(bundle) for bundle in loaded.policies]
        routes = None if loaded.routes is None else store.replace_routes(loaded.routes)
    if args.json:
        dump({"items": [p.model_dump(mode="json") for p in stored],
              **({} if routes is None else {"routes": [r.model_dump() for r in routes]})})
    else:
        for p in stored:
            rules = len(p.approval_rules)
            out(f"applied {p.name}: {len(p.tool_allowlist)} allowed tool(s), {rules} approval "
                f"rule(s){', default_safe' if p.default_safe else ''}")
        if routes is not None:
            out(f"stored {len(routes)} route(s), replacing the stored routes")
    return 0
