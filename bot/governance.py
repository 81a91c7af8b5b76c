"""Budgets, policies and alerts: what stops runaway runs and gates risky tool calls.

Rules (reference-notes.md, "Budgets"): budgets are tokens, dollars, loops and
seconds, 0 = unlimited, resolved field by field as inline > policy > defaults.
Before a step: time, then ``loops + 1 > budget``. After usage is recorded:
time, tokens, dollars, each with ``>=``. The first reason wins and the run
halts; the Store applies these guards inside its transactions.

Alerts are approvals: when a run passes 80 % of a budget, or halts, the
approvers get a ``budget.grant`` request whose Approve button grants +50 %;
approving it resumes the run (exactly once per grant).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from datetime import datetime
from typing import Any

from bot.approvals import ApprovalManager
from storage.errors import BudgetExceeded, Forbidden, NotFound
from storage.ledger import LedgerAppend
from storage.records import (
    Approval,
    Budgets,
    NewLedgerEntry,
    NewToolCall,
    Policy,
    Run,
    RunUpsert,
    Step,
    StepUpsert,
    ToolCall,
)
from storage.store import Store

log = logging.getLogger(__name__)

BUDGET_FIELDS = ("budget_tokens", "budget_dollars", "budget_loops", "budget_seconds")
REASON_FIELD = {
    "token_budget_exceeded": "budget_tokens",
    "dollar_budget_exceeded": "budget_dollars",
    "loop_budget_exceeded": "budget_loops",
    "time_budget_exceeded": "budget_seconds",
}
GRANT_KIND = "budget.grant"
TOOL_KIND = "tool_call"
WARN_AT = 0.8
GRANT_FACTOR = 1.5


# --- pure rules -------------------------------------------------------------------------


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


def rule_matches(rule, tool: str, side_effect: str) -> bool:
    """An approval rule matches on the exact tool name or on its side-effect glob."""
    if rule.tool and rule.tool == tool:
        return True
    return bool(rule.side_effect and side_effect and fnmatch.fnmatchcase(side_effect,
                                                                          rule.side_effect))


def needs_approval(policy: Policy | None, tool: str, side_effect: str) -> bool:
    if policy is None:
        return False
    if policy.default_safe and side_effect and side_effect != "none":
        return True
    return any(rule_matches(rule, tool, side_effect) for rule in policy.approval_rules)


def check_allowlist(policy: Policy | None, tool: str) -> None:
    """Forbidden when the policy has an allowlist and the tool is not on it."""
    if policy is not None and policy.tool_allowlist and tool not in policy.tool_allowlist:
        raise Forbidden(f"tool {tool!r} is not in the allowlist of policy {policy.name!r}")


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
        values[name] = round(raised, 6) if name == "budget_dollars" else int(-(-raised // 1))
    return Budgets(**values)


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


def budget_details(run: Run, reason: str | None) -> dict[str, Any]:
    """The numbers a 402 answer carries."""
    return {"run_id": run.id, "halt_reason": reason or run.halt_reason,
            **{name: getattr(run, name) for name in BUDGET_FIELDS},
            "usage_prompt_tokens": run.usage_prompt_tokens,
            "usage_completion_tokens": run.usage_completion_tokens,
            "usage_dollars": run.usage_dollars, "usage_loops": run.usage_loops}


# --- the service ----------------------------------------------------------------------------


class Governance:
    """Applies budgets and policies around the Store and raises budget alerts."""

    def __init__(self, store: Store, manager: ApprovalManager, defaults: Budgets | None = None):
        self.store = store
        self.manager = manager
        self.defaults = defaults or Budgets()
        self._tasks: set[asyncio.Task] = set()
        manager.subscribe(self.on_approval)

    async def _policy(self, name: str | None) -> Policy | None:
        if not name:
            return None
        try:
            return await self.store.run(self.store.get_policy, name)
        except NotFound:
            log.warning("run refers to unknown policy %r; using defaults", name)
            return None

    async def upsert_run(self, run_id: str, fields: dict[str, Any]) -> Run:
        """Create or update a run, resolving budgets inline > policy > defaults."""
        try:
            existing = await self.store.run(self.store.get_run, run_id)
            policy_ref = existing.policy_ref
        except NotFound:
            policy_ref = fields.get("policy_ref")
        policy = await self._policy(policy_ref)
        budgets = effective_budgets(fields, policy, self.defaults)
        spec = RunUpsert(id=run_id, name=fields.get("name") or "",
                         policy_ref=fields.get("policy_ref"),
                         metadata=fields.get("metadata") or {}, **budgets.model_dump())
        return await self.store.run(self.store.upsert_run, spec)

    async def upsert_step(self, step: StepUpsert) -> Step:
        """Record a step; a new one may halt the run (402 after the halt is committed)."""
        try:
            saved = await self.store.run(self.store.upsert_step, step, before_step)
        except BudgetExceeded as exc:
            await self._alert_halted(exc.run)
            raise
        await self._check_warning(saved.run_id)
        return saved

    async def append_ledger(self, entries: list[NewLedgerEntry]) -> LedgerAppend:
        """Record usage; runs that cross a budget halt after it is recorded."""
        result = await self.store.run(self.store.append_ledger, entries, after_usage)
        for run in result.halted:
            await self._alert_halted(run)
        for run in result.runs.values():
            if run.status == "running":
                await self._warn_if_near(run)
        return result

    async def append_tool_call(self, call: NewToolCall) -> tuple[ToolCall, Approval | None]:
        """Check the run's policy; record the call; create an approval when a rule asks."""
        run = await self.store.run(self.store.get_run, call.run_id)
        if run.status == "halted":
            raise BudgetExceeded(run)
        policy = await self._policy(run.policy_ref)
        try:
            check_allowlist(policy, call.tool)
        except Forbidden:
            refused = call.model_copy(update={"status": "forbidden"})
            await self.store.run(self.store.append_tool_call, refused)
            raise
        if not needs_approval(policy, call.tool, call.side_effect):
            recorded = call.model_copy(update={"status": "allowed"})
            return await self.store.run(self.store.append_tool_call, recorded), None
        pending = call.model_copy(update={"status": "pending_approval"})
        tool_call = await self.store.run(self.store.append_tool_call, pending)
        summary = f"{call.tool}" + (f" ({call.side_effect})" if call.side_effect else "")
        approval, _ = await self.manager.submit(
            agent=run.name or run.id, kind=TOOL_KIND, summary=summary[:500],
            payload={"tool": call.tool, "side_effect": call.side_effect,
                     "arguments": call.arguments},
            run_id=run.id, tool_call_id=tool_call.id)
        # Only the link: the approval may already be decided and settled, and its
        # status must not be set back to pending.
        tool_call = await self.store.run(self.store.set_tool_call_status, tool_call.id,
                                         None, approval.id)
        return tool_call, approval

    async def cancel_run(self, run_id: str, decided_by: str = "api") -> Run:
        """Halt a run as cancelled and withdraw its pending approvals."""
        run, cancelled = await self.store.run(self.store.cancel_run, run_id, decided_by)
        self.manager.announce(cancelled)
        return run

    # --- alerts and grants ------------------------------------------------------------

    async def _check_warning(self, run_id: str) -> None:
        run = await self.store.run(self.store.get_run, run_id)
        if run.status == "running":
            await self._warn_if_near(run)

    async def _warn_if_near(self, run: Run) -> None:
        now = self.store.clock()
        near = [name for name, f in usage_fractions(run, now).items() if f >= WARN_AT]
        if not near or not await self.store.run(self.store.mark_alerted, run.id, "warn80"):
            return
        proposal = grant_budgets(run, near, now)
        await self._ask_grant(run, f"passed 80% of its budget ({_describe_usage(run, now)})",
                              proposal, "warn80")

    async def _alert_halted(self, run: Run) -> None:
        reason = run.halt_reason
        if reason not in REASON_FIELD:
            return
        if not await self.store.run(self.store.mark_alerted, run.id, f"halted:{reason}"):
            return
        now = self.store.clock()
        proposal = grant_budgets(run, [REASON_FIELD[reason]], now)
        await self._ask_grant(run, f"was halted: {reason.replace('_', ' ')} "
                                   f"({_describe_usage(run, now)})", proposal, "halted")

    async def _ask_grant(self, run: Run, what: str, proposal: Budgets, key: str) -> None:
        label = run.name or run.id
        approval, _ = await self.manager.submit(
            agent="tapgate", kind=GRANT_KIND,
            summary=f"Run {label} {what}. Grant +50% budget?"[:500],
            payload={"run_id": run.id, "grant": proposal.model_dump()},
            run_id=run.id, idempotency_key=f"grant:{run.id}:{key}:{len(run.alerted)}")
        log.info("budget alert for run %s: %s (approval %s)", run.id, what, approval.id)

    def on_approval(self, approval: Approval, created: bool) -> None:
        """Approval listener: settle tool calls and apply approved grants (in tasks)."""
        if approval.is_final and (approval.tool_call_id or approval.kind == GRANT_KIND):
            task = asyncio.get_running_loop().create_task(self.settle(approval))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every settle started so far is done (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settle(self, approval: Approval) -> None:
        """Apply what a final approval means for tool calls and budget grants (idempotent)."""
        try:
            if approval.tool_call_id:
                await self.store.run(self.store.set_tool_call_status, approval.tool_call_id,
                                     approval.status)
            if approval.kind == GRANT_KIND and approval.status == "approved" and approval.run_id:
                grant = Budgets(**(approval.payload or {}).get("grant", {}))
                run = await self.store.run(self.store.apply_grant, approval.run_id,
                                           f"grant:{approval.id}", grant)
                if run is not None:
                    log.info("budget grant %s applied: run %s is running again", approval.id,
                             run.id)
        except Exception:
            log.exception("could not settle approval %s", approval.id)

    async def recover(self) -> None:
        """At start-up: roll running runs back to their checkpoints; settle what a crash left."""
        for run in await self.store.run(self.store.list_runs, "running"):
            rolled = await self.store.run(self.store.rollback_to_checkpoint, run.id)
            if rolled is not None:
                log.info("run %s rolled back to its latest checkpoint", run.id)
        for status in ("approved", "denied", "expired", "cancelled"):
            for approval in await self.store.run(self.store.list_approvals, status, 500):
                if approval.kind == GRANT_KIND or approval.tool_call_id:
                    await self.settle(approval)
