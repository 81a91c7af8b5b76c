"""What the approver sees of a gated tool call: a one-line summary and the payload.

The summary is what a person judges at a glance (the shell command, ``Edit path``,
``Write path (N lines)``, an MCP tool and its main argument); the payload is what they
can open (the tool input and where it runs, never the transcript itself), cut to fit
the API's payload limit so a big Write still reaches the approver.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.integrations.core import HookRequest

# The API's limit on a payload as compact JSON (bot/api/schemas.py, which costs pydantic
# models to import; a test keeps the two equal).
MAX_PAYLOAD = 64 * 1024
LONG_STRING = 2000  # tool_input strings longer than this are cut when the payload is too big
PATH_KEYS = ("file_path", "notebook_path", "path", "absolute_path", "dir_path")
MAIN_KEYS = ("command", "url", "query", "pattern", "prompt", "description", "name", "id")


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).replace("\x00", "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def summarize(request: HookRequest, limit: int = 500) -> str:
    """One line a person can judge at a glance: the shell command, ``Edit path``,
    ``Write path (N lines)``, ``mcp__server__tool: main argument``."""
    name, data = request.tool_name, request.tool_input
    command = data.get("command")
    if isinstance(command, list):
        command = " ".join(str(part) for part in command)
    if isinstance(command, str) and command.strip():
        return _one_line(f"{name}: {command}" if name.startswith("mcp__") else command, limit)
    path = next((data[k] for k in PATH_KEYS if isinstance(data.get(k), str) and data[k]), None)
    if path is not None:
        base = (request.cwd or "").rstrip("/") + "/"
        text = f"{name} {path.removeprefix(base) if base != '/' else path}"
        content = data.get("content")
        if isinstance(content, str):  # a file written whole: how big it is
            lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
            text += f" ({lines} line{'' if lines == 1 else 's'})"
        return _one_line(text, limit)
    main = next((data[k] for k in MAIN_KEYS if isinstance(data.get(k), str) and data[k]), None)
    if main is None:  # an MCP tool's own argument names: its first short string
        main = next((v for v in data.values() if isinstance(v, str) and v.strip()), None)
    return _one_line(f"{name}: {main}" if main else name, limit) or "tool call"


def payload_of(request: HookRequest) -> dict[str, Any]:
    """What the approver can open: the tool input and where it runs (never the transcript
    itself, only its path), cut to fit the API's payload limit."""
    payload = {"tool_input": request.tool_input, "cwd": request.cwd,
               "session_id": request.session_id, "tool_use_id": request.tool_use_id,
               "hook_event_name": request.event, **request.extra}
    payload = {k: v for k, v in payload.items() if v is not None}
    budget = MAX_PAYLOAD - 1024  # room for the envelope's own growth
    try:
        if json_size(payload) <= budget:
            return payload
        payload["tool_input"] = _cut(request.tool_input, LONG_STRING)
        if json_size(payload) <= budget:
            return payload
    except ValueError:  # NaN or Infinity somewhere: send a readable text instead
        pass
    text = json.dumps(request.tool_input, ensure_ascii=False, default=str)
    payload["tool_input"] = {"truncated": _cut(text, budget // 4), "chars": len(text)}
    return payload


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON, as the API counts them (ValueError: NaN, Infinity)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _cut(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… [{len(value) - limit} more characters]"
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # the API refuses NaN and Infinity
    return value
