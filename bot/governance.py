"""Budgets, policies and alerts: what stops runaway runs and gates risky tool calls.

The budget rules are pure functions in :mod:`bot.budgets`; the Store applies
them inside its transactions (the first halt reason wins and the run halts).

Alerts are the bot's own approvals: when a run passes 80 % of a budget, or
halts, the alert is recorded in the same transaction as the usage that made it
due (:meth:`Store._record_alerts`), then posted as a request of the reserved
kind ``budget.grant`` whose Approve button grants +50 %. The grant is computed
from the bot's record when it is approved, relative to the budgets then, so it
never lowers one; approving or denying one alert retires the run's others.
A failure to post an alert never fails the usage that triggered it: the alert
stays owed and is posted by the next delivery (after every append, on the
expiry job's schedule, and at start-up).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import Any

from bot.approvals import ApprovalManager
from bot.budgets import (  # noqa: F401  (re-exported: the rules live in bot.budgets)
    BUDGET_FIELDS,
    after_usage,
    agent_tightens_only,
    agent_update,
    alert_summary,
    before_step,
    due_alerts,
    effective_budgets,
    grant_budgets,
)
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

GRANT_KIND = "budget.grant"
TOOL_KIND = "tool_call"
RESERVED_KINDS = frozenset({GRANT_KIND, TOOL_KIND})
"""Kinds only the bot itself posts: refused from agents on the socket."""
BOT_AGENT = "tapgate"


# --- pure rules -------------------------------------------------------------------------


def rule_matches(rule, tool: str, side_effect: str) -> bool:
    """An approval rule matches on the exact tool name or on its side-effect glob."""
    if rule.tool and rule.tool == tool:
        return True
    return bool(rule.side_effect and side_effect and fnmatch.fnmatchcase(side_effect,
                                                                          rule.side_effect))


def default_safe_applies(policy: Policy, side_effect: str) -> bool:
    """A ``default_safe`` policy gates every call with a side effect."""
    return policy.default_safe and bool(side_effect) and side_effect != "none"


def needs_approval(policy: Policy | None, tool: str, side_effect: str) -> bool:
    if policy is None:
        return False
    if default_safe_applies(policy, side_effect):
        return True
    return any(rule_matches(rule, tool, side_effect) for rule in policy.approval_rules)


def approvals_required(policy: Policy, tool: str, side_effect: str, default: int) -> int:
    """Distinct approvers a call that :func:`needs_approval` needs: the largest
    ``required_approvals`` of the rules it matches (a rule without one, and a
    ``default_safe`` match, count as ``default``)."""
    counts = [rule.required_approvals or default for rule in policy.approval_rules
              if rule_matches(rule, tool, side_effect)]
    if default_safe_applies(policy, side_effect):
        counts.append(default)
    return max(counts, default=default)


def check_allowlist(policy: Policy | None, tool: str) -> None:
    """Forbidden when the policy has an allowlist and the tool is not on it."""
    if policy is not None and policy.tool_allowlist and tool not in policy.tool_allowlist:
        raise Forbidden(f"tool {tool!r} is not in the allowlist of policy {policy.name!r}")


# --- the service ----------------------------------------------------------------------------


class Governance:
    """Applies budgets and policies around the Store and raises budget alerts."""

    def __init__(self, store: Store, manager: ApprovalManager, defaults: Budgets | None = None):
        self.store = store
        self.manager = manager
        self.defaults = defaults or Budgets()
        self._tasks: set[asyncio.Task] = set()
        self._delivering: asyncio.Task | None = None
        self._deliver_again = False
        manager.subscribe(self.on_approval)

    async def _policy(self, name: str | None) -> Policy | None:
        if not name:
            return None
        try:
            return await self.store.run(self.store.get_policy, name)
        except NotFound:
            log.warning("run refers to unknown policy %r; using defaults", name)
            return None

    async def upsert_run(self, run_id: str, fields: dict[str, Any], admin: bool = True,
                         uid: int | None = None) -> Run:
        """Create or update a run, resolving budgets inline > policy > defaults.

        An agent (``admin=False``) may create runs with budgets at most as loose
        as the policy's or the defaults, and may rename an existing run or change
        its metadata, but never change its budgets or policy: a budget it leaves
        out keeps its value, one it changes is :class:`Forbidden`.
        """
        try:
            existing: Run | None = await self.store.run(self.store.get_run, run_id)
        except NotFound:
            existing = None
        if existing is not None and not admin:
            budgets = agent_update(existing, fields)
        else:
            policy_ref = existing.policy_ref if existing else fields.get("policy_ref")
            policy = await self._policy(policy_ref)
            budgets = effective_budgets(fields, policy, self.defaults)
            if existing is None and not admin:
                agent_tightens_only(fields, effective_budgets({}, policy, self.defaults))
        spec = RunUpsert(id=run_id, name=fields.get("name") or "",
                         policy_ref=fields.get("policy_ref"),
                         metadata=fields.get("metadata") or {}, owner_uid=uid,
                         **budgets.model_dump())
        return await self.store.run(self.store.upsert_run, spec)

    async def upsert_step(self, step: StepUpsert) -> Step:
        """Record a step; a new one may halt the run (402 after the halt is committed)."""
        seen = self.store.alerts_recorded
        try:
            return await self.store.run(self.store.upsert_step, step, before_step, None,
                                        due_alerts)
        finally:
            if self.store.alerts_recorded != seen:  # else nothing new to post: no look-up
                self.deliver_soon()

    async def append_ledger(self, entries: list[NewLedgerEntry]) -> LedgerAppend:
        """Record usage; runs that cross a budget halt after it is recorded.

        Alerts are recorded with the usage and posted afterwards: a failure to
        post one never turns this committed append into an error.
        """
        seen = self.store.alerts_recorded
        result = await self.store.run(self.store.append_ledger, entries, after_usage, None,
                                      due_alerts)
        if self.store.alerts_recorded != seen:  # else nothing new to post: no look-up
            self.deliver_soon()
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
            run_id=run.id, tool_call_id=tool_call.id,
            required_approvals=approvals_required(policy, call.tool, call.side_effect,
                                                  self.manager.required_approvals),
            escalate_after=policy.escalate_after or None)
        # Only the link: the approval may already be decided and settled, and its
        # status must not be set back to pending.
        tool_call = await self.store.run(self.store.set_tool_call_status, tool_call.id,
                                         None, approval.id)
        return tool_call, approval

    async def submit_terms(self, run_id: str | None, kind: str,
                           asked: int | None) -> tuple[int, float | None]:
        """The approvers a request submitted over the socket needs, and its escalation
        delay (None: the settings' delay).

        The agent is the governed party: it may ask for more approvers, never fewer
        than the operator's count — that of the approval rules of its run's policy
        whose ``tool`` is the request's kind and that set one (the largest; it stands
        even below the default, as for tool calls), else
        ``TAPGATE_DEFAULT_REQUIRED_APPROVALS``. Without a ``run_id`` this reads nothing
        (the submit hot path stays one database hop).
        """
        floor, escalate_after = self.manager.required_approvals, None
        if run_id is not None:
            escalate_after, rules = await self.store.run(self.store.run_policy_terms, run_id)
            counts = [rule.required_approvals for rule in rules
                      if rule.tool == kind and rule.required_approvals]
            floor = max(counts, default=floor)
        return max(asked or 1, floor), escalate_after

    async def cancel_run(self, run_id: str, decided_by: str = "api", admin: bool = True,
                         uid: int | None = None) -> Run:
        """Halt a run as cancelled and withdraw its pending approvals.

        An agent may cancel only a run it created (:class:`Forbidden` otherwise).
        """
        if not admin:
            run = await self.store.run(self.store.get_run, run_id)
            if run.owner_uid is None or run.owner_uid != uid:
                raise Forbidden(f"cancelling run {run_id}, which uid {uid} did not create, "
                                "needs an admin uid (TAPGATE_SOCKET_ADMIN_UIDS)")
        run, cancelled = await self.store.run(self.store.cancel_run, run_id, decided_by)
        self.manager.announce(cancelled)
        return run

    # --- alerts and grants ------------------------------------------------------------

    def deliver_soon(self) -> None:
        """Post the alerts that are owed, in a task (one delivery at a time)."""
        if self._delivering is not None and not self._delivering.done():
            self._deliver_again = True
            return
        self._delivering = self._spawn(self._deliver_loop())

    async def _deliver_loop(self) -> None:
        while True:
            self._deliver_again = False
            await self.deliver_alerts()
            if not self._deliver_again:
                return

    async def deliver_alerts(self) -> int:
        """Post every recorded alert not yet posted; return how many. Errors are logged
        and leave the alert owed for the next delivery (never raised)."""
        posted = 0
        try:
            for alert in await self.store.run(self.store.undelivered_alerts):
                run = await self.store.run(self.store.get_run, alert.run_id)
                approval, _ = await self.manager.submit(
                    agent=BOT_AGENT, kind=GRANT_KIND, summary=alert_summary(run, alert),
                    payload={"run_id": run.id, "raise": alert.fields, "alert": alert.key},
                    run_id=run.id, idempotency_key=f"tapgate:budget-alert:{alert.id}")
                await self.store.run(self.store.link_alert, alert.id, approval.id)
                log.info("budget alert for run %s: %s (approval %s)", run.id, alert.what,
                         approval.id)
                posted += 1
        except Exception:
            log.exception("could not post a budget alert; it stays owed and is retried")
        return posted

    def on_approval(self, approval: Approval, created: bool) -> None:
        """Approval listener: settle tool calls and decided grants (in tasks)."""
        if approval.is_final and (approval.tool_call_id or approval.kind == GRANT_KIND):
            self._spawn(self.settle(approval))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait until every settle and delivery started so far is done (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settle(self, approval: Approval) -> None:
        """Apply what a final approval means for tool calls and budget alerts (idempotent)."""
        try:
            if approval.tool_call_id:
                await self.store.run(self.store.set_tool_call_status, approval.tool_call_id,
                                     approval.status)
            if approval.kind == GRANT_KIND and approval.status in ("approved", "denied"):
                done = await self.store.run(self.store.settle_alert, approval.id,
                                            approval.status == "approved", grant_budgets)
                if done.alert is None:
                    log.warning("approval %s of kind %s is no alert of the bot's: ignored",
                                approval.id, GRANT_KIND)
                elif done.granted:
                    log.info("budget grant %s applied: run %s is running again", approval.id,
                             done.run.id)
                self.manager.announce(done.retired)
        except Exception:
            log.exception("could not settle approval %s", approval.id)

    async def recover(self) -> None:
        """At start-up: settle what a crash left unsettled, post the owed alerts.

        Usage is never rolled back: it is the ledger's and the steps' truth, so a
        restart forgets neither money spent nor steps taken.
        """
        for status in ("approved", "denied", "expired", "cancelled"):
            for approval in await self.store.run(self.store.list_approvals, status, 500):
                if approval.kind == GRANT_KIND or approval.tool_call_id:
                    await self.settle(approval)
        await self.deliver_alerts()
