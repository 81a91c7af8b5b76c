"""``tapgate audit export``: every approval, tool call and ledger row, streamed.

One naming scheme throughout (the snake_case record fields of DESIGN.md),
one ``type`` column saying which record a row is. Rows are read and written
page by page, so a million ledger rows need a page of memory, not a million.
CSV cells that a spreadsheet would run as formulas are neutralized.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from storage.store import Store

CSV_COLUMNS = [
    "type", "id", "run_id", "step_index", "created_at",
    # approvals
    "agent", "kind", "summary", "payload", "status", "reason", "decided_by", "decided_at",
    "expires_at", "tool_call_id", "submitter_uid",
    # tool calls
    "tool", "side_effect", "arguments", "approval_id",
    # ledger
    "provider", "model", "prompt_tokens", "completion_tokens", "cached_tokens", "dollars",
    "priced", "price_version", "response_id",
]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, made inert (OWASP, "CSV
    Injection"): a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a
    single quote in front. Numbers and other cells are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def audit_rows(store: Store, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Approvals, then tool calls, then ledger entries, each in id/time order."""
    for approval in store.iter_approvals(run_id):
        yield {"type": "approval", **approval.model_dump(mode="json")}
    for call in store.iter_tool_calls(run_id):
        yield {"type": "tool_call", **call.model_dump(mode="json")}
    for entry in store.iter_ledger(run_id):
        yield {"type": "ledger", **entry.model_dump(mode="json")}


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
        for key in ("payload", "arguments"):
            if key in row and not isinstance(row[key], str | type(None)):
                row[key] = json.dumps(row[key], ensure_ascii=False)
        writer.writerow({key: neutralize(value) for key, value in row.items()})
        count += 1
    return count
