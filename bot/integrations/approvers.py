"""Whom an agent's requests act for, and how many people must approve them.

``--requested-by USER_ID`` (the Telegram user the agent works for: their own approval
does not count, separation of duties) and ``--required-approvals N`` (1..10 distinct
approvers; the bot raises it to its settings' or the run's policy's count, never lowers
it) of ``tapgate hook <agent>``, ``tapgate hook install``, ``tapgate mcp`` and ``tapgate
mcp install``. They go into ``POST /v1/approvals`` as ``requested_by`` and
``required_approvals``.

Whoever installs the hook or registers the MCP server sets them, never the model: the
model is the governed party, and choosing whom a request acts for would let it choose
whose approval does not count. So they are command-line options of the server and the
hook, and no tool argument.

The values are checked by the same functions as ``tapgate request``'s options
(:func:`bot.cli.approvers_count`, :func:`bot.cli.telegram_user`), so every command
accepts and refuses the same values with the same words.
"""

from __future__ import annotations

import argparse
from typing import Any

from bot.cli import approvers_count, telegram_user

# (option, the request body's field, its checker, metavar, help)
OPTIONS = (
    ("--requested-by", "requested_by", telegram_user, "USER_ID",
     "the Telegram user the agent works for: their own approval does not count"),
    ("--required-approvals", "required_approvals", approvers_count, "N",
     "distinct approvers each request needs, 1..10 (never fewer than the bot's settings "
     "or the run's policy ask)"),
)


def add_options(parser: argparse.ArgumentParser, *, checked: bool = True,
                keep_parent: bool = False) -> None:
    """Add both options to ``parser``.

    ``checked``: argparse refuses a bad value (exit 2). A hook passes False: it keeps the
    text and :func:`fields` checks it, so a bad value ends in the agent's fallback answer
    like every other error of a hook, never in an exit without an answer.
    ``keep_parent``: for a subcommand whose parent has the same options (``mcp install``
    under ``mcp``): an option the subcommand was not given leaves the parent's value."""
    for option, dest, check, metavar, text in OPTIONS:
        parser.add_argument(option, dest=dest, metavar=metavar, help=text,
                            type=check if checked else str,
                            default=argparse.SUPPRESS if keep_parent else None)


def fields(args: Any) -> dict[str, int]:
    """The request body's ``requested_by`` and ``required_approvals``, those given in
    ``args``; ValueError naming the option when a value is not one."""
    body: dict[str, int] = {}
    for option, dest, check, _, _ in OPTIONS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            body[dest] = check(str(value).strip())
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{option}: {exc}") from None
    return body


def argv(args: Any) -> list[str]:
    """The options given in ``args`` as command-line arguments again, for a command that
    install writes into an agent's or an MCP client's settings (checked first)."""
    body = fields(args)
    return [part for option, dest, *_ in OPTIONS if dest in body
            for part in (option, str(body[dest]))]
