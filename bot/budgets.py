"""Budget rules: pure functions of runs and policies, no I/O.

Budgets are tokens, dollars, loops and seconds, 0 = unlimited, resolved field
by field as inline > policy > defaults (reference-notes.md, "Budgets"). Before
a step: time, then ``loops + 1 > budget``. After usage is recorded: time,
tokens, dollars, each with ``>=``. Alerts are due at 80 % of a budget and on a
halt; a grant raises the alert's budgets by 50 % of their value when approved.
Agents may tighten budgets, never widen them (:func:`agent_update`,
:func:`agent_tightens_only`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.errors import Forbidden
from storage.records import (
    MAX_BUDGET_DOLLARS,
    MAX_BUDGET_TOKENS,
    MAX_INT32,
    BudgetAlert,
    Budgets,
    Policy,
    Run,
)

BUDGET_FIELDS = ("budget_tokens", "budget_dollars", "budget_loops", "budget_seconds")
REASON_FIELD = {
    "token_budget_exceeded": "budget_tokens",
    "dollar_budget_exceeded": "budget_dollars",
    "loop_budget_exceeded": "budget_loops",
    "time_budget_exceeded": "budget_seconds",
}

WARN_AT = 0.8
GRANT_FACTOR = 1.5
BUDGET_CAPS = {"budget_tokens": MAX_BUDGET_TOKENS, "budget_dollars": MAX_BUDGET_DOLLARS,
               "budget_loops": MAX_INT32, "budget_seconds": MAX_INT32}


def effective_budgets(inline: dict[str, Any], policy: Policy | None,
                      defaults: Budgets) -> Budgets:
    """Each budget from the request if given (None = not given), else the policy's
    (when it sets one, i.e. > 0), else the default."""
    values = {}
    for name in BUDGET_FIELDS:
        value = inline.get(name)
        if value is None and policy is not None and getattr(policy, name):
            value = getattr(policy, name)
        if value is None:
            value = getattr(defaults, name)
        values[name] = value
    return Budgets(**values)


def elapsed(run: Run, now: datetime) -> float:
    return (now - run.created_at).total_seconds()


def before_step(run: Run, now: datetime) -> str | None:
    """Halt reason before a new step (time first, then loops + 1 > budget), or None."""
    if run.budget_seconds and elapsed(run, now) >= run.budget_seconds:
        return "time_budget_exceeded"
    if run.budget_loops and run.usage_loops + 1 > run.budget_loops:
        return "loop_budget_exceeded"
    return None


def after_usage(run: Run, now: datetime) -> str | None:
    """Halt reason after usage is recorded (time, tokens, dollars; each >=), or None."""
    if run.budget_seconds and elapsed(run, now) >= run.budget_seconds:
        return "time_budget_exceeded"
    if run.budget_tokens and run.usage_tokens >= run.budget_tokens:
        return "token_budget_exceeded"
    if run.budget_dollars and run.usage_dollars >= run.budget_dollars:
        return "dollar_budget_exceeded"
    return None


def usage_fractions(run: Run, now: datetime) -> dict[str, float]:
    """How much of each set budget is used (1.0 = all of it)."""
    used = {
        "budget_tokens": run.usage_tokens,
        "budget_dollars": run.usage_dollars,
        "budget_loops": run.usage_loops,
        "budget_seconds": elapsed(run, now),
    }
    return {name: used[name] / getattr(run, name) for name in BUDGET_FIELDS
            if getattr(run, name)}



def grant_budgets(run: Run, fields: list[str], now: datetime) -> Budgets:
    """The run's budgets with ``fields`` raised by 50 % (and past what is already used)."""
    values = {name: getattr(run, name) for name in BUDGET_FIELDS}
    used = {"budget_tokens": run.usage_tokens, "budget_dollars": run.usage_dollars,
            "budget_loops": run.usage_loops, "budget_seconds": elapsed(run, now)}
    for name in fields:
        current = values[name]
        if not current:
            continue
        raised = current * GRANT_FACTOR
        if raised <= used[name]:
            raised = used[name] + current * (GRANT_FACTOR - 1)
        raised = round(raised, 6) if name == "budget_dollars" else int(-(-raised // 1))
        values[name] = min(raised, BUDGET_CAPS[name])
    return Budgets(**values)


def due_alerts(run: Run, now: datetime) -> list[tuple[str, list[str], str]]:
    """The alerts due for ``run`` as it stands: a halt on a budget, or 80 % of budgets used.

    ``(key, budget fields a grant raises, what happened)``; the Store records each
    key once until a grant re-arms the run's alerts.
    """
    if run.status == "halted":
        reason = run.halt_reason
        if reason not in REASON_FIELD:
            return []
        return [(f"halted:{reason}", [REASON_FIELD[reason]],
                 f"was halted: {reason.replace('_', ' ')} ({_describe_usage(run, now)})")]
    near = [name for name, f in usage_fractions(run, now).items() if f >= WARN_AT]
    if not near:
        return []
    return [("warn80", near, f"passed 80% of its budget ({_describe_usage(run, now)})")]


def alert_summary(run: Run, alert: BudgetAlert) -> str:
    """The bot's own words for an alert (the run's label is the agent's: quoted, cut)."""
    label = run.name or run.id
    label = label if len(label) <= 60 else label[:59] + "…"
    return f"Run “{label}” {alert.what}. Grant +50% budget?"[:500]


def _describe_usage(run: Run, now: datetime) -> str:
    parts = []
    if run.budget_tokens:
        parts.append(f"tokens {run.usage_tokens:,}/{run.budget_tokens:,}")
    if run.budget_dollars:
        parts.append(f"dollars ${run.usage_dollars:,.4f}/${run.budget_dollars:,.2f}")
    if run.budget_loops:
        parts.append(f"loops {run.usage_loops}/{run.budget_loops}")
    if run.budget_seconds:
        parts.append(f"time {int(elapsed(run, now))}s/{run.budget_seconds}s")
    return ", ".join(parts)


def agent_update(existing: Run, fields: dict[str, Any]) -> Budgets:
    """An agent's update of an existing run: budgets it leaves out keep their values;
    changing one, or the policy, is :class:`Forbidden`."""
    ref = fields.get("policy_ref")
    if ref is not None and ref != existing.policy_ref:
        raise Forbidden(f"changing the policy of run {existing.id} needs an admin uid "
                        "(TAPGATE_SOCKET_ADMIN_UIDS)")
    values = {}
    for name in BUDGET_FIELDS:
        value, current = fields.get(name), getattr(existing, name)
        if value is not None and value != current:
            raise Forbidden(f"changing {name} of run {existing.id} ({current} → {value}) "
                            "needs an admin uid (TAPGATE_SOCKET_ADMIN_UIDS)")
        values[name] = current
    return Budgets(**values)


def agent_tightens_only(fields: dict[str, Any], limits: Budgets) -> None:
    """A run an agent creates may set budgets stricter than its policy's or the defaults,
    never looser (0 = unlimited is the loosest)."""
    for name in BUDGET_FIELDS:
        value, limit = fields.get(name), getattr(limits, name)
        if value is not None and limit and (value == 0 or value > limit):
            shown = "unlimited" if value == 0 else value
            raise Forbidden(f"{name} {shown} is looser than the policy's or the default "
                            f"({limit}): only an admin uid may widen a budget")
