"""``tapgate policy apply FILE``: policy bundles from YAML or TOML, validated.

The file holds named bundles, either as a mapping of name → bundle or as a
list under ``policies`` with a ``name`` each::

    # policies.yaml
    careful:
      budget_dollars: 5
      tool_allowlist: [ls, cat, rm, deploy]
      approval_rules:
        - tool: deploy
          required_approvals: 2    # two distinct approvers (default 1)
        - side_effect: "fs.delete*"
      default_safe: false
      escalate_after: 15m          # else TAPGATE_ESCALATE_AFTER

Beside the bundles, a top-level ``routes`` list (see :mod:`bot.routing`) replaces
the stored routes when applied; a file without one leaves them as they are::

    routes:
      - {agent: "deploy-*", chats: [-1001234567890]}
      - {kind: "budget.grant", chats: [-1009876543210]}

Every error names the file, the bundle (or route) and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from bot.durations import parse_duration
from bot.routing import route_list
from storage.errors import InvalidArgument
from storage.records import PolicyUpsert
from storage.rule_records import Route


class PolicyFile(NamedTuple):
    """A validated policy file: its bundles, and its routes (None: no ``routes`` section,
    which leaves the stored routes alone; [] removes them)."""

    policies: list[PolicyUpsert]
    routes: list[Route] | None


def load_policies(path: str | Path) -> list[PolicyUpsert]:
    """Parse and validate every bundle in ``path`` (``.yaml``/``.yml``/``.toml``)."""
    return load_policy_file(path).policies


def load_policy_file(path: str | Path) -> PolicyFile:
    """Parse and validate every bundle and route in ``path`` (``.yaml``/``.yml``/``.toml``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise InvalidArgument(f"{path}: unknown file type (use .yaml, .yml or .toml)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        detail = str(exc).replace("\n", " ")
        raise InvalidArgument(f"{path}: not valid {path.suffix[1:].upper()}: {detail}") from None
    routes = _routes(path, data)
    if routes is not None:
        data = {k: v for k, v in data.items() if k != "routes"}
    bundles = _bundles(path, data) if data or routes is None else []  # routes alone: fine
    policies = []
    for name, body in bundles:
        if not isinstance(body, dict):
            raise InvalidArgument(f"{path}: bundle {name!r}: must be a mapping of fields")
        if isinstance(body.get("escalate_after"), str):  # "15m", as in the settings
            try:
                body = {**body, "escalate_after": parse_duration(body["escalate_after"])}
            except ValueError as exc:
                raise InvalidArgument(f"{path}: bundle {name!r}: field escalate_after: "
                                      f"{exc}") from None
        try:
            policies.append(PolicyUpsert(**{**body, "name": name}))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "?"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            raise InvalidArgument(f"{path}: bundle {name!r}: field {field}: {message}") from None
    return PolicyFile(policies, routes)


def _routes(path: Path, data: Any) -> list[Route] | None:
    """The file's top-level ``routes`` list, validated (None if it has none)."""
    if not isinstance(data, dict) or "routes" not in data:
        return None
    items = data["routes"]
    if not isinstance(items, list):  # ``routes:`` alone too: say [] to remove them all
        raise InvalidArgument(f"{path}: routes: must be a list of routes, each with agent, "
                              "kind and chats ([] removes every stored route; a bundle named "
                              "'routes' goes in a 'policies' list)")
    try:
        return route_list(items)
    except ValueError as exc:
        raise InvalidArgument(f"{path}: {exc}") from None


def _bundles(path: Path, data: Any) -> list[tuple[str, Any]]:
    if not data:
        raise InvalidArgument(f"{path}: no policy bundles found")
    if isinstance(data, dict) and isinstance(data.get("policies"), list):
        data = data["policies"]
    if isinstance(data, list):
        out = []
        for i, body in enumerate(data):
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                raise InvalidArgument(f"{path}: bundle #{i + 1}: field name: required")
            out.append((body["name"], {k: v for k, v in body.items() if k != "name"}))
        return out
    if isinstance(data, dict):
        return [(str(name), body) for name, body in data.items()]
    raise InvalidArgument(f"{path}: expected a mapping of bundles or a 'policies' list")
