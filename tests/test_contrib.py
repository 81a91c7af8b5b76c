"""The shipped systemd unit: its own user, its directories, hardening, a command that parses."""

from __future__ import annotations

import shlex
from pathlib import Path

from bot.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "tapgate.service"


def _settings(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


def test_the_unit_runs_tapgate_as_its_own_hardened_user():
    unit = _settings(UNIT.read_text())
    assert unit["User"] == ["tapgate"] and unit["Group"] == ["tapgate"]
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0].endswith("/tapgate")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.env_file == "/etc/tapgate/bot.env"
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert env["TAPGATE_DATABASE_URL"] == "sqlite:////var/lib/tapgate/tapgate.db"
    assert env["TAPGATE_SOCKET_PATH"].startswith("/run/tapgate/")
    assert unit["StateDirectory"] == ["tapgate"] and unit["RuntimeDirectory"] == ["tapgate"]
    assert unit["RuntimeDirectoryMode"] == ["0755"]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                      "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert hardening in unit, hardening
    assert unit["KillSignal"] == ["SIGTERM"]
