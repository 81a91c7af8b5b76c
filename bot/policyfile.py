"""``tapgate policy apply FILE``: policy bundles from YAML or TOML, validated.

The file holds named bundles, either as a mapping of name → bundle or as a
list under ``policies`` with a ``name`` each::

    # policies.yaml
    careful:
      budget_dollars: 5
      tool_allowlist: [ls, cat, rm, deploy]
      approval_rules:
        - tool: deploy
        - side_effect: "fs.delete*"
      default_safe: false

Every error names the file, the bundle and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from storage.errors import InvalidArgument
from storage.records import PolicyUpsert


def load_policies(path: str | Path) -> list[PolicyUpsert]:
    """Parse and validate every bundle in ``path`` (``.yaml``/``.yml``/``.toml``)."""
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
    bundles = _bundles(path, data)
    policies = []
    for name, body in bundles:
        if not isinstance(body, dict):
            raise InvalidArgument(f"{path}: bundle {name!r}: must be a mapping of fields")
        try:
            policies.append(PolicyUpsert(**{**body, "name": name}))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "?"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            raise InvalidArgument(f"{path}: bundle {name!r}: field {field}: {message}") from None
    return policies


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
