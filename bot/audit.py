"""``tapgate audit export``: every approval, tool call, ledger row and rule, streamed.

One naming scheme throughout (the snake_case record fields of DESIGN.md),
one ``type`` column saying which record a row is. Rows are read and written
page by page, so a million ledger rows need a page of memory, not a million.
CSV cells that a spreadsheet would run as formulas are neutralized.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import IO, Any

from storage.records import Approval, LedgerEntry, ToolCall
from storage.rule_records import Rule
from storage.store import Store

# The columns in the order people read them; then every other field of the exported
# records, so a field a record gains is exported too (never a failed or a lossy export).
_PREFERRED = [
    "type", "id", "run_id", "step_index", "created_at",
    # approvals
    "agent", "kind", "summary", "payload", "status", "reason", "decided_by", "decided_at",
    "expires_at", "tool_call_id", "submitter_uid", "accepts_edits", "edited_payload",
    # tool calls
    "tool", "side_effect", "arguments", "approval_id",
    # ledger
    "provider", "model", "prompt_tokens", "completion_tokens", "cached_tokens", "dollars",
    "priced", "price_version", "response_id",
    # rules (a rule-approved request's decided_by is "rule:<id> (...)")
    "match", "created_by", "revoked_at", "revoked_by", "uses", "last_used_at", "chat_id",
    "origin", "source_approval_id",
]
CSV_COLUMNS = list(dict.fromkeys(
    [*_PREFERRED, *(name for record in (Approval, ToolCall, LedgerEntry, Rule)
                    for name in record.model_fields)]))
JSON_CELLS = ("payload", "arguments", "edited_payload")  # any JSON value: always JSON text
RULE_DECIDER = re.compile(r"^rule:(\d+)\b")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, made inert (OWASP, "CSV
    Injection"): a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    single quote in front. Numbers and other cells are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def audit_rows(store: Store, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Approvals, then tool calls, then ledger entries, each in id/time order, then rules
    (with their uses, creator and revocation). For one run: its session rules and every
    rule that approved one of its requests."""
    used: set[int] = set()
    for approval in store.iter_approvals(run_id):
        found = RULE_DECIDER.match(approval.decided_by or "") if run_id is not None else None
        if found:
            used.add(int(found.group(1)))
        yield {"type": "approval", **approval.model_dump(mode="json")}
    for call in store.iter_tool_calls(run_id):
        yield {"type": "tool_call", **call.model_dump(mode="json")}
    for entry in store.iter_ledger(run_id):
        yield {"type": "ledger", **entry.model_dump(mode="json")}
    for rule in store.iter_rules():
        if run_id is None or rule.run_id == run_id or rule.id in used:
            yield {"type": "rule", **rule.model_dump(mode="json")}


def export(store: Store, out: IO[str], fmt: str = "jsonl", run_id: str | None = None) -> int:
    """Write the audit trail to ``out`` as JSON Lines or CSV; return the row count."""
    if run_id is not None:
        store.get_run(run_id)  # NotFound for an unknown run, before writing anything
    count = 0
    if fmt == "jsonl":
        for row in audit_rows(store, run_id):
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            out.write("\n")
            count += 1
        return count
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}: use jsonl or csv")
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="raise")
    writer.writeheader()
    for row in audit_rows(store, run_id):
        for key, value in row.items():  # payloads, arguments, lists: JSON in one cell
            if isinstance(value, dict | list) or (
                    key in JSON_CELLS and not isinstance(value, str | type(None))):
                row[key] = json.dumps(value, ensure_ascii=False)
        writer.writerow({key: neutralize(value) for key, value in row.items()})
        count += 1
    return count
