"""Runs, steps, tool calls and checkpoints.

Budget rules live in ``bot/governance.py``; the Store applies them inside its
transactions through *guards*: ``guard(run, now) -> halt_reason | None``. A
guard that returns a reason halts the run in the same transaction, the halt
is committed, and :class:`BudgetExceeded` is raised after the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from storage.base import StoreBase, columns, decoder, unit_of_work
from storage.db import is_postgres
from storage.errors import BudgetExceeded, NotFound, RunNotRunning
from storage.models import (
    ApprovalRow,
    BudgetAlertRow,
    RunRow,
    StepRow,
    ToolCallRow,
)
from storage.records import (
    Approval,
    Budgets,
    NewToolCall,
    Run,
    RunUpsert,
    Step,
    StepUpsert,
    ToolCall,
    from_nano,
    to_nano,
)

Guard = Callable[[Run, datetime], str | None]
AlertDue = tuple[str, list[str], str]
"""``(key, budget fields a grant would raise, what happened)`` of an alert that is due."""
AlertRule = Callable[[Run, datetime], list[AlertDue]]
"""``rule(run, now)``: the alerts due for the run as it now stands (recorded once per key)."""
decode_run = decoder(RunRow)


def run_record(row: RunRow) -> Run:
    return Run(
        id=row.id,
        name=row.name,
        status=row.status,
        halt_reason=row.halt_reason,
        policy_ref=row.policy_ref,
        budget_tokens=row.budget_tokens,
        budget_dollars=row.budget_dollars,
        budget_loops=row.budget_loops,
        budget_seconds=row.budget_seconds,
        usage_prompt_tokens=row.usage_prompt_tokens,
        usage_completion_tokens=row.usage_completion_tokens,
        usage_dollars=from_nano(row.usage_dollars_nano),
        usage_loops=row.usage_loops,
        metadata=row.metadata or {},
        alerted=row.alerted or [],
        owner_uid=row.owner_uid,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _step_record(row: StepRow) -> Step:
    return Step(
        run_id=row.run_id,
        index=row.index,
        status=row.status,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        dollars=from_nano(row.dollars_nano),
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def tool_call_record(row: ToolCallRow) -> ToolCall:
    return ToolCall(
        id=row.id,
        run_id=row.run_id,
        step_index=row.step_index,
        tool=row.tool,
        side_effect=row.side_effect,
        arguments=row.arguments or {},
        status=row.status,
        approval_id=row.approval_id,
        created_at=row.created_at,
    )


class RunStore(StoreBase):
    """Run, step, tool-call and checkpoint operations of the Store."""

    alerts_recorded = 0
    """How many budget alerts this Store has recorded (grows only): a caller that sees
    it change knows there may be alerts to post, and skips the look-up otherwise."""

    # --- helpers used inside transactions ---------------------------------------

    def _locked_run(self, run_id: str) -> RunRow:
        """The run row, locked for this transaction (SQLite's IMMEDIATE lock covers it).

        Read with hand-written SQL (every step, tool call and ledger append starts
        here); the result reads like a peewee row.
        """
        row = self.db.execute_sql(self.statement("run.locked", self._locked_run_sql),
                                  (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return decode_run(row)

    def _locked_run_sql(self) -> str:
        sql = f'SELECT {columns(RunRow)} FROM "run" WHERE "id" = {self.db.param}'
        return sql + " FOR UPDATE" if is_postgres(self.db) else sql

    def _halt(self, run_id: str, reason: str, now: datetime) -> Run:
        rows = list(RunRow.update(status="halted", halt_reason=reason, updated_at=now)
                    .where(RunRow.id == run_id).returning(RunRow).execute())
        return run_record(rows[0])

    def _record_alerts(self, run: Run, rule: AlertRule | None, now: datetime) -> Run:
        """Inside a write transaction: record the alerts ``rule`` says are due (each key
        once per arming), so the alert is committed with the usage that triggered it
        and a crash afterwards cannot lose it. Returns the run as it now stands."""
        if rule is None:
            return run
        due = [(key, fields, what) for key, fields, what in rule(run, now)
               if key not in run.alerted]
        if not due:
            return run
        alerted = [*run.alerted, *(key for key, _, _ in due)]
        RunRow.update(alerted=alerted).where(RunRow.id == run.id).execute()
        for key, fields, what in due:
            BudgetAlertRow.insert(run=run.id, key=key, fields=fields, what=what,
                                  created_at=now).execute()
        self.alerts_recorded += len(due)
        return run.model_copy(update={"alerted": alerted})

    @staticmethod
    def _require_running(row: RunRow) -> None:
        if row.status == "halted":
            raise BudgetExceeded(run_record(row))
        if row.status != "running":
            raise RunNotRunning(f"run {row.id} is {row.status}")

    # --- runs ------------------------------------------------------------------------

    @unit_of_work
    def upsert_run(self, spec: RunUpsert, now: datetime | None = None) -> Run:
        """Insert or update a run by id.

        An update writes name, budgets and metadata; ``created_at``,
        ``policy_ref``, status and usage are kept (a halted run stays halted
        even when its id is reused).
        """
        now = now or self.clock()
        budgets = spec.model_dump(include=set(Budgets.model_fields))
        with self.write():
            (RunRow.insert(id=spec.id, name=spec.name, policy_ref=spec.policy_ref,
                           metadata=spec.metadata, owner_uid=spec.owner_uid, created_at=now,
                           updated_at=now, **budgets)
             .on_conflict(conflict_target=[RunRow.id],
                          update={RunRow.name: spec.name,
                                  RunRow.metadata: spec.metadata,
                                  RunRow.updated_at: now,
                                  **{getattr(RunRow, k): v for k, v in budgets.items()}})
             .execute())
            return run_record(RunRow.get_by_id(spec.id))

    @unit_of_work
    def get_run(self, run_id: str) -> Run:
        row = RunRow.get_or_none(RunRow.id == run_id)
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return run_record(row)

    @unit_of_work
    def list_runs(self, status: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs (with ``status``, None = all), newest first."""
        query = RunRow.select()
        if status:
            query = query.where(RunRow.status == status)
        query = query.order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return [run_record(r) for r in query]

    def list_runs_by_status(self, status: str) -> list[Run]:
        return self.list_runs(status)

    @unit_of_work
    def cancel_run(self, run_id: str, decided_by: str = "api", now: datetime | None = None
                   ) -> tuple[Run, list[Approval]]:
        """Halt a running run with reason ``cancelled`` and withdraw its pending approvals.

        Returns the run and the approvals this changed (so their messages can
        be edited and their waiters woken): those already past ``expires_at``
        become ``expired`` (by "expiry", at ``expires_at``), as in every other
        transition; the rest ``cancelled``. :class:`RunNotRunning` if the run
        is not running.
        """
        from storage.approvals import approval_record, mark_copies_owed
        from storage.rules import retire_rules_of

        now = now or self.clock()
        pending = (ApprovalRow.run == run_id) & (ApprovalRow.status == "pending")
        with self.write():
            row = self._locked_run(run_id)
            if row.status != "running":
                raise RunNotRunning(f"run {run_id} is already {row.status}"
                                    + (f" ({row.halt_reason})" if row.halt_reason else ""))
            run = self._halt(run_id, "cancelled", now)
            changed = list(
                ApprovalRow.update(status="expired", decided_by="expiry",
                                   decided_at=ApprovalRow.expires_at)
                .where(pending & (ApprovalRow.expires_at <= now))
                .returning(ApprovalRow).execute()
            ) + list(
                ApprovalRow.update(status="cancelled", decided_by=decided_by, decided_at=now,
                                   reason="run cancelled")
                .where(pending).returning(ApprovalRow).execute()
            )
            mark_copies_owed([r.id for r in changed])
            self.announce_final([r.id for r in changed])
            retire_rules_of(run_id, f"run {run_id} cancelled", now)
        return run, [approval_record(r) for r in changed]

    @unit_of_work
    def complete_run(self, run_id: str, now: datetime | None = None) -> Run:
        """Mark a running run completed; its session rules end with it. A halted run
        keeps its status (what halted it stays visible) but its session rules end too.
        :class:`RunNotRunning` if it already completed."""
        from storage.rules import retire_rules_of

        now = now or self.clock()
        with self.write():
            row = self._locked_run(run_id)
            if row.status == "completed":
                raise RunNotRunning(f"run {run_id} is already completed")
            if row.status == "running":
                (RunRow.update(status="completed", updated_at=now)
                 .where(RunRow.id == run_id).execute())
            retire_rules_of(run_id, f"run {run_id} completed", now)
            return run_record(RunRow.get_by_id(run_id))

    @unit_of_work
    def resume_run(self, run_id: str, budgets: Budgets, now: datetime | None = None) -> Run:
        """Set new budgets on a run and make it running again; alerts are re-armed.

        A run halted because it was cancelled is not resumed (:class:`RunNotRunning`).
        """
        now = now or self.clock()
        with self.write():
            row = self._locked_run(run_id)
            if row.status == "halted" and row.halt_reason == "cancelled":
                raise RunNotRunning(f"run {run_id} was cancelled")
            return self._resume(run_id, budgets, now)

    def _resume(self, run_id: str, budgets: Budgets, now: datetime) -> Run:
        rows = list(RunRow.update(status="running", halt_reason=None, updated_at=now,
                                  alerted=[], **budgets.model_dump())
                    .where(RunRow.id == run_id).returning(RunRow).execute())
        return run_record(rows[0])

    # --- steps -----------------------------------------------------------------------

    @unit_of_work
    def upsert_step(self, step: StepUpsert, before_step: Guard | None = None,
                    now: datetime | None = None, alerts: AlertRule | None = None) -> Step:
        """Insert or update the step (run_id, index).

        A new index is a new loop: ``before_step`` is consulted first (time,
        then loops + 1) and the run's ``usage_loops`` grows by one. Steps of a
        halted run are refused with :class:`BudgetExceeded`. Alerts ``alerts``
        says are due (a halt, a loop budget nearly used) are recorded in the
        same transaction.
        """
        now = now or self.clock()
        halted: Run | None = None
        with self.write():
            row = self._locked_run(step.run_id)
            self._require_running(row)
            existing = StepRow.get_or_none((StepRow.run == step.run_id)
                                           & (StepRow.index == step.index))
            if existing is None and before_step is not None:
                reason = before_step(run_record(row), now)
                if reason:
                    halted = self._record_alerts(self._halt(step.run_id, reason, now),
                                                 alerts, now)
            if halted is None:
                values = {
                    "status": step.status,
                    "prompt_tokens": step.prompt_tokens,
                    "completion_tokens": step.completion_tokens,
                    "dollars_nano": to_nano(step.dollars),
                    "ended_at": step.ended_at,
                }
                if existing is None:
                    StepRow.insert(run=step.run_id, index=step.index,
                                   started_at=step.started_at or now, **values).execute()
                    counted = list(RunRow.update(usage_loops=RunRow.usage_loops + 1,
                                                 updated_at=now)
                                   .where(RunRow.id == step.run_id).returning(RunRow).execute())
                    self._record_alerts(run_record(counted[0]), alerts, now)
                else:
                    if step.started_at is not None:
                        values["started_at"] = step.started_at
                    StepRow.update(values).where(StepRow.id == existing.id).execute()
                saved = StepRow.get((StepRow.run == step.run_id) & (StepRow.index == step.index))
        if halted is not None:
            raise BudgetExceeded(halted)
        return _step_record(saved)

    @unit_of_work
    def list_steps(self, run_id: str) -> list[Step]:
        """A run's steps in index order."""
        self._must_exist(run_id)
        return [_step_record(r) for r in
                StepRow.select().where(StepRow.run == run_id).order_by(StepRow.index)]

    def _must_exist(self, run_id: str) -> None:
        if not RunRow.select().where(RunRow.id == run_id).exists():
            raise NotFound(f"run {run_id} not found")

    # --- tool calls ------------------------------------------------------------------

    @unit_of_work
    def append_tool_call(self, call: NewToolCall, now: datetime | None = None) -> ToolCall:
        """Record a tool invocation of a running run (402 for a halted one)."""
        from storage.approvals import new_approval_id

        now = now or self.clock()
        with self.write():
            row = self._locked_run(call.run_id)
            self._require_running(row)
            created = ToolCallRow.create(
                id=call.id or f"tc_{new_approval_id()}",
                run=call.run_id,
                step_index=call.step_index,
                tool=call.tool,
                side_effect=call.side_effect,
                arguments=call.arguments,
                status=call.status,
                created_at=now,
            )
        return tool_call_record(created)

    @unit_of_work
    def set_tool_call_status(self, call_id: str, status: str | None = None,
                             approval_id: str | None = None) -> ToolCall:
        """Set a tool call's status and/or its approval; a None leaves that field as is
        (linking the approval must not overwrite a decision settled meanwhile)."""
        values = {}
        if status is not None:
            values["status"] = status
        if approval_id is not None:
            values["approval_id"] = approval_id
        rows = list(ToolCallRow.update(values).where(ToolCallRow.id == call_id)
                    .returning(ToolCallRow).execute())
        if not rows:
            raise NotFound(f"tool call {call_id} not found")
        return tool_call_record(rows[0])

    @unit_of_work
    def get_tool_call(self, call_id: str) -> ToolCall:
        row = ToolCallRow.get_or_none(ToolCallRow.id == call_id)
        if row is None:
            raise NotFound(f"tool call {call_id} not found")
        return tool_call_record(row)

    @unit_of_work
    def list_tool_calls(self, run_id: str) -> list[ToolCall]:
        """A run's tool calls in audit order: (step index, time, id)."""
        self._must_exist(run_id)
        query = (ToolCallRow.select().where(ToolCallRow.run == run_id)
                 .order_by(ToolCallRow.step_index, ToolCallRow.created_at, ToolCallRow.id))
        return [tool_call_record(r) for r in query]
