"""The expiry sweep, run by APScheduler through PTB's JobQueue.

One compare-and-set UPDATE expires every due request; the manager then tells
the notifier (messages edited to "Expired") and wakes the waiters. It is safe
on every instance at once: a request can only be expired once.
"""

from __future__ import annotations

import logging

from telegram.ext import Application, ContextTypes

from bot.approvals import ApprovalManager

log = logging.getLogger(__name__)


def schedule_expiry(app: Application, manager: ApprovalManager, interval: float) -> None:
    """Run :func:`sweep` every ``interval`` seconds (no overlapping runs)."""

    async def job(context: ContextTypes.DEFAULT_TYPE) -> None:
        await sweep(manager)

    app.job_queue.run_repeating(job, interval=interval, first=interval, name="tapgate-expiry",
                                job_kwargs={"max_instances": 1, "coalesce": True})


async def sweep(manager: ApprovalManager) -> int:
    """Expire what is due now, and escalate what waited long enough; return how many
    expired. Errors are logged, never raised."""
    try:
        expired = await manager.expire_due()
        if manager.escalation_chat_ids:
            escalated = await manager.escalate_due(manager.escalation_chat_ids)
            if escalated:
                log.info("escalated %d request(s): %s", len(escalated),
                         ", ".join(a.id for a in escalated))
    except Exception:
        log.exception("expiry sweep failed; it will run again")
        return 0
    if expired:
        log.info("expired %d request(s): %s", len(expired), ", ".join(a.id for a in expired))
    return len(expired)
