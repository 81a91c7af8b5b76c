"""PostgreSQL LISTEN/NOTIFY: a decision taken by another process wakes waiters at once."""

from __future__ import annotations

import asyncio
import sys

from bot.approvals import ApprovalManager
from bot.pgnotify import DecisionListener
from storage.store import Store
from tests.conftest import _empty_postgres

DECIDE = """
import sys
from storage.store import Store
store = Store.from_url(sys.argv[1])
if sys.argv[3] == "cancel":
    store.cancel_approval(sys.argv[2], "cli")
else:
    store.resolve_approval(sys.argv[2], "approved", "cli")
store.close()
"""


async def other_process(url: str, approval_id: str, action: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DECIDE, url, approval_id,
                                                action)
    assert await proc.wait() == 0


async def test_decision_in_another_process_wakes_the_waiter(pg_url):
    _empty_postgres(pg_url)
    store = Store.from_url(pg_url)
    # Waiters re-read only once a minute: only the notification can wake them in time.
    manager = ApprovalManager(store, chat_ids=[], poll_interval=60)
    listener = DecisionListener(pg_url, manager)
    await listener.start()
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        for action, status in (("approve", "approved"), ("cancel", "cancelled")):
            approval, _ = await manager.submit(agent="a", kind="k", summary=action)
            waiting = asyncio.create_task(manager.wait(approval.id, 120))
            while manager.waiting == 0:
                await asyncio.sleep(0)
            await other_process(pg_url, approval.id, action)
            decided = await asyncio.wait_for(waiting, 10)
            assert decided.status == status
        assert manager.waiting == 0
    finally:
        await listener.stop()
        store.close()
