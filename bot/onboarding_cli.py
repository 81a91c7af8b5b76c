"""The ``tapgate init`` and ``tapgate doctor`` command lines (parsing only).

Kept apart from :mod:`bot.onboarding`, which imports asyncio and Telegram: every
``tapgate`` command builds the whole parser, hooks included, and a hook must not
pay for what only ``init`` needs.
"""

from __future__ import annotations

import argparse

from bot import places


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``init`` and ``doctor`` on the top-level parser's subcommands."""
    p = sub.add_parser("init", help="write bot.env: check the token, find your chat and user "
                                    "ids from a /start you send the bot")
    p.add_argument("--token", help="the bot token from @BotFather (default: asked for)")
    p.add_argument("--chat-id", type=int, help="with --user-id: write these, skip the /start")
    p.add_argument("--user-id", type=int)
    p.add_argument("--force", action="store_true", help="replace an existing env file")
    # SUPPRESS: without the flag, the top-level --env-file (if any) stays in effect.
    p.add_argument("--env-file", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"where to write (default: {places.user_env_file()})")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the /start (default 300)")
    p.set_defaults(func=_init, needs_settings=False)

    p = sub.add_parser("doctor", help="check the settings, Telegram, the database, the socket "
                                      "and the clock, one line each")
    p.add_argument("--env-file", metavar="PATH", default=argparse.SUPPRESS,
                   help="check the settings of PATH")
    # Invalid settings are one of the things doctor reports, not a reason to exit 2.
    p.set_defaults(func=_doctor, needs_settings=False)


def _init(args: argparse.Namespace, settings: object) -> int:
    from bot.onboarding import cmd_init

    return cmd_init(args, settings)


def _doctor(args: argparse.Namespace, settings: object) -> int:
    from bot.onboarding import cmd_doctor

    return cmd_doctor(args, settings)
