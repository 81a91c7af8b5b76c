"""Budget alerts: the bot's own record of what it proposed, and settling a decision on one.

An alert row is written in the transaction of the usage that made it due
(:meth:`RunStore._record_alerts`), then posted as an approval of the reserved
kind ``budget.grant`` and linked to it. What a grant raises comes from the
row, never from the approval's payload, and the raise is computed when the
grant is approved, relative to the budgets the run has then, so approving an
old alert after a newer one can never lower a budget. Deciding one alert of a
run retires the run's other open alerts (their approvals are withdrawn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from storage.base import unit_of_work
from storage.models import ApprovalRow, BudgetAlertRow
from storage.records import Approval, BudgetAlert, Budgets, Run
from storage.runs import RunStore, run_record

GrantRule = Callable[[Run, list[str], datetime], Budgets]
"""``grant(run, fields, now)``: the run's budgets with ``fields`` raised."""

RETIRED = "retired: another budget alert of this run was decided"


def alert_record(row: BudgetAlertRow) -> BudgetAlert:
    return BudgetAlert(id=row.id, run_id=row.run_id, key=row.key, fields=row.fields or [],
                       what=row.what, approval_id=row.approval_id, settled_at=row.settled_at,
                       created_at=row.created_at)


@dataclass
class AlertSettlement:
    """What deciding an alert did: the run as it now stands (None if nothing applied)
    and the other alerts' approvals it withdrew."""

    alert: BudgetAlert | None
    run: Run | None = None
    granted: bool = False
    retired: list[Approval] = field(default_factory=list)


class AlertStore(RunStore):
    """Budget-alert operations of the Store."""

    @unit_of_work
    def undelivered_alerts(self, limit: int = 100) -> list[BudgetAlert]:
        """Alerts recorded but not yet posted (and not retired), oldest first."""
        query = (BudgetAlertRow.select()
                 .where(BudgetAlertRow.approval_id.is_null()
                        & BudgetAlertRow.settled_at.is_null())
                 .order_by(BudgetAlertRow.id).limit(limit))
        return [alert_record(r) for r in query]

    @unit_of_work
    def link_alert(self, alert_id: int, approval_id: str) -> None:
        """Record the approval an alert was posted as."""
        (BudgetAlertRow.update(approval_id=approval_id)
         .where(BudgetAlertRow.id == alert_id).execute())

    @unit_of_work
    def alert_for_approval(self, approval_id: str) -> BudgetAlert | None:
        row = BudgetAlertRow.get_or_none(BudgetAlertRow.approval_id == approval_id)
        return alert_record(row) if row else None

    @unit_of_work
    def settle_alert(self, approval_id: str, approved: bool, grant: GrantRule,
                     now: datetime | None = None) -> AlertSettlement:
        """Apply the decision on the alert posted as ``approval_id``, exactly once.

        Approved: the alert's budgets are raised by ``grant`` from the run's
        budgets now, and the run runs again (unless it was cancelled). Either
        way the run's other open alerts are retired in the same transaction.
        An approval that is no alert's (forged, or not the bot's) changes nothing.
        """
        now = now or self.clock()
        with self.write():
            row = BudgetAlertRow.get_or_none(BudgetAlertRow.approval_id == approval_id)
            if row is None:
                return AlertSettlement(None)
            won = (BudgetAlertRow.update(settled_at=now)
                   .where((BudgetAlertRow.id == row.id) & BudgetAlertRow.settled_at.is_null())
                   .execute())
            if not won:
                return AlertSettlement(alert_record(row))
            locked = self._locked_run(row.run_id)
            run = run_record(locked)
            result = AlertSettlement(alert_record(row), run)
            if approved and run.halt_reason != "cancelled":
                result.run = self._resume(run.id, grant(run, row.fields or [], now), now)
                result.granted = True
            result.retired = self._retire_alerts(run.id, row.id, now)
        return result

    def _retire_alerts(self, run_id: str, decided_id: int, now: datetime) -> list[Approval]:
        from storage.approvals import approval_record, mark_copies_owed

        settled = (BudgetAlertRow.update(settled_at=now)
                   .where((BudgetAlertRow.run == run_id) & (BudgetAlertRow.id != decided_id)
                          & BudgetAlertRow.settled_at.is_null())
                   .returning(BudgetAlertRow.approval_id).execute())
        ids = [r.approval_id for r in settled if r.approval_id]
        if not ids:
            return []
        rows = list(ApprovalRow.update(status="cancelled", decided_by="tapgate",
                                       decided_at=now, reason=RETIRED)
                    .where(ApprovalRow.id.in_(ids) & (ApprovalRow.status == "pending")
                           & (ApprovalRow.expires_at > now))
                    .returning(ApprovalRow).execute())
        retired = [r.id for r in rows]
        if retired:
            mark_copies_owed(retired)
            self.announce_final(retired)
        return [approval_record(r) for r in rows]
