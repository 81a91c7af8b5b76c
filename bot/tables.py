"""Plain-text tables and figures for the ``tapgate`` command line.

Rendering only: every function takes records and returns text, so the CLI
decides and these format (and both can be tested alone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from storage.records import Approval, Checkpoint, Run, UsageSummary

SUMMARY_WIDTH = 50


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Sequence[int] = ()) -> str:
    """An aligned table: two spaces between columns, ``right`` columns right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 05m``, ``2d 4h``."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def truncate(text: str, width: int = SUMMARY_WIDTH) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= width else text[:width - 1] + "…"


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- approvals -------------------------------------------------------------------------------


def pending_table(approvals: list[Approval], now: datetime) -> str:
    if not approvals:
        return "no pending requests"
    rows = [(a.id, duration((now - a.created_at).total_seconds()),
             duration((a.expires_at - now).total_seconds()) if a.expires_at > now else "due",
             a.agent, a.kind, truncate(a.summary)) for a in approvals]
    return table(("ID", "AGE", "EXPIRES IN", "AGENT", "KIND", "SUMMARY"), rows, right=(1, 2))


# --- runs ------------------------------------------------------------------------------------


def elapsed(run: Run, now: datetime) -> float:
    """Seconds the run has been going (until it stopped, for a halted or completed run)."""
    end = now if run.status == "running" else run.updated_at
    return max((end - run.created_at).total_seconds(), 0.0)


def usage(used: float, budget: float, money: bool = False) -> str:
    """``1,234 / 10,000 (12%)``; ``1,234 / unlimited`` when the budget is 0."""
    fmt = (lambda v: f"${v:,.4f}") if money else (lambda v: f"{v:,.0f}")
    if not budget:
        return f"{fmt(used)} / unlimited"
    return f"{fmt(used)} / {fmt(budget)} ({used / budget:.0%})"


def runs_table(runs: list[Run], now: datetime) -> str:
    if not runs:
        return "no runs"
    rows = [(r.id, truncate(r.name, 30), r.status + (f" ({r.halt_reason})" if r.halt_reason
                                                      else ""),
             usage(r.usage_tokens, r.budget_tokens), usage(r.usage_dollars, r.budget_dollars,
                                                            money=True),
             usage(r.usage_loops, r.budget_loops), duration((now - r.created_at).total_seconds()))
            for r in runs]
    return table(("ID", "NAME", "STATUS", "TOKENS", "DOLLARS", "LOOPS", "AGE"), rows)


def run_detail(run: Run, checkpoint: Checkpoint | None, now: datetime) -> str:
    status = run.status + (f" ({run.halt_reason})" if run.halt_reason else "")
    meta = ", ".join(f"{k}={v}" for k, v in sorted(run.metadata.items())) or "-"
    lines = [
        ("run", run.id + (f"  ({run.name})" if run.name else "")),
        ("status", status),
        ("policy", run.policy_ref or "-"),
        ("created", f"{when(run.created_at)} ({duration((now - run.created_at).total_seconds())}"
                    " ago)"),
        ("updated", when(run.updated_at)),
        ("metadata", meta),
        ("tokens", usage(run.usage_tokens, run.budget_tokens)
         + f"  [prompt {run.usage_prompt_tokens:,}, completion {run.usage_completion_tokens:,}]"),
        ("dollars", usage(run.usage_dollars, run.budget_dollars, money=True)),
        ("loops", usage(run.usage_loops, run.budget_loops)),
        ("seconds", usage(elapsed(run, now), run.budget_seconds)),
    ]
    text = _pairs(lines)
    if checkpoint is None:
        return text + "\nlatest checkpoint: none"
    head = (f"latest checkpoint: #{checkpoint.id}"
            + (f" {checkpoint.name!r}" if checkpoint.name else "")
            + f" at step {checkpoint.step_index}, {when(checkpoint.created_at)}")
    return f"{text}\n{head}\n{json.dumps(checkpoint.payload, indent=2, ensure_ascii=False)}"


def _pairs(lines: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


# --- spend -------------------------------------------------------------------------------------


def spend_table(summary: UsageSummary) -> str:
    """The dimension, then CALLS PROMPT COMPLETION DOLLARS, a TOTAL row, unpriced calls."""
    dimension = summary.by.upper()
    rows = [(g.key or "(empty)", f"{g.calls:,}", f"{g.prompt_tokens:,}",
             f"{g.completion_tokens:,}", f"{g.dollars:,.4f}") for g in summary.groups]
    t = summary.total
    rows.append(("TOTAL", f"{t.calls:,}", f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}",
                 f"{t.dollars:,.4f}"))
    text = table((dimension, "CALLS", "PROMPT", "COMPLETION", "DOLLARS"), rows,
                 right=(1, 2, 3, 4))
    if summary.unpriced_calls:
        text += f"\nunpriced calls: {summary.unpriced_calls:,}"
    return text


# --- migrations ------------------------------------------------------------------------------


def migrations_table(statuses: list[Any]) -> str:
    rows = []
    for s in statuses:
        if not s.known:
            state = "UNKNOWN (newer than this tapgate)"
        elif s.applied is None:
            state = "pending"
        else:
            state = s.applied.strftime("%Y-%m-%d %H:%M:%S")
        rows.append((f"{s.index:04d}", s.name, state))
    return table(("INDEX", "NAME", "APPLIED"), rows)
