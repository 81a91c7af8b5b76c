"""The decision core: submit, resolve, cancel, expire, wait.

Knows nothing of Telegram or HTTP. Every transition is the Store's
compare-and-set, committed before anyone is told; then the manager wakes the
agents waiting on that request (in this process, at once) and tells its
listeners (the Telegram notifier), which must not block.

Waiters also re-read the database every ``poll_interval`` seconds, so a
decision taken by another process (a second bot instance, the CLI) reaches
them too, only later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.routing import Target
from storage.approvals import parse_callback_data
from storage.errors import AlreadyFinal, InvalidArgument
from storage.records import Approval, NewApproval
from storage.rule_records import NewRule, Rule
from storage.store import Store

if TYPE_CHECKING:
    from bot.routing import Router

log = logging.getLogger(__name__)

Listener = Callable[[Approval, bool], Any]
"""``listener(approval, created)``: called after every commit (created=True on submit)."""

MAX_WAIT = 300.0


class ApprovalManager:
    """Submit and decide approval requests; wake the agents that wait on them."""

    def __init__(self, store: Store, chat_ids: list[int], default_ttl: float = 86400.0,
                 poll_interval: float = 1.0, required_approvals: int = 1,
                 escalate_after: float | None = None,
                 escalation_chat_ids: list[int] | None = None, router: Router | None = None):
        self.store = store
        self.chat_ids = list(chat_ids)
        # Which chats each request goes to (bot.routing); None: every one of chat_ids.
        self.router = router
        self.default_ttl = default_ttl
        self.poll_interval = poll_interval
        self.required_approvals = required_approvals  # unless a request says otherwise
        self.escalate_after = escalate_after or None  # None: requests never escalate
        self.escalation_chat_ids = list(escalation_chat_ids or [])
        self._waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(approval, created)`` after every committed change."""
        self._listeners.append(listener)

    # --- transitions ------------------------------------------------------------------

    async def submit(self, *, agent: str, kind: str, summary: str, payload: Any = None,
                     ttl_seconds: float | None = None, run_id: str | None = None,
                     tool_call_id: str | None = None, idempotency_key: str | None = None,
                     submitter_uid: int | None = None, accepts_edits: bool = False,
                     required_approvals: int | None = None, requested_by: int | None = None,
                     escalate_after: float | None = None) -> tuple[Approval, bool]:
        """Persist a request (and its owed Telegram messages), then announce it.

        Returns ``(approval, created)``; ``created`` is False for a repeated
        idempotency key (nothing is posted twice). A request a live rule covers
        comes back already ``approved`` (by ``rule:<id> (...)``), with no message.
        ``required_approvals`` distinct approvers must approve (``requested_by``'s
        approval never counts); still pending after ``escalate_after`` seconds, the
        request is posted to the escalation chats too (:meth:`escalate_due`). The chats
        it is posted to first, and who may decide it until it escalates, are the router's
        for its agent and kind. InvalidArgument when its route has fewer approvers (the
        requester aside) than it needs: nobody could ever approve it.
        """
        target = Target(self.chat_ids) if self.router is None else \
            await self.router.target_for(agent, kind)
        required = required_approvals or self.required_approvals
        if target.approvers is not None:
            eligible = len(set(target.approvers) - {requested_by})
            if eligible < required:
                raise InvalidArgument(
                    f"this request needs {required} approvers, but its route lets only "
                    f"{eligible} decide it (the route's approvers"
                    + (", not counting requested_by" if requested_by in target.approvers
                       else "") + "): ask for fewer, or add approvers to the route")
        new = NewApproval(agent=agent, kind=kind, summary=summary, payload=payload,
                          ttl_seconds=ttl_seconds or self.default_ttl, run_id=run_id,
                          tool_call_id=tool_call_id, idempotency_key=idempotency_key,
                          chat_ids=target.chats, submitter_uid=submitter_uid,
                          accepts_edits=accepts_edits, required_approvals=required,
                          requested_by=requested_by, approvers=target.approvers,
                          escalate_after=escalate_after or self.escalate_after)
        approval, created = await self.store.run(self.store.create_approval, new)
        if created:
            self._publish(approval, created=True)
        return approval, created

    async def resolve(self, approval_id: str, status: str, decided_by: str,
                      reason: str | None = None, edited_payload: Any = None) -> Approval:
        """Approve or deny (an approval may carry the approver's ``edited_payload``).
        Raises NotFound, or AlreadyFinal with the current state."""
        return await self._transition(self.store.resolve_approval, approval_id, status,
                                      decided_by, reason, None, edited_payload)

    async def decide_with_rule(self, approval_id: str, decided_by: str, rule: NewRule
                               ) -> tuple[Approval, Rule]:
        """Approve and create ``rule`` in one transaction (no rule if the request was
        decided otherwise first: NotFound or AlreadyFinal, as for :meth:`resolve`)."""
        try:
            approval, made = await self.store.run(self.store.decide_with_rule, approval_id,
                                                  decided_by, rule)
        except AlreadyFinal as exc:
            if exc.expired_now:
                self._publish(exc.approval)
            raise
        self._publish(approval)
        return approval, made

    async def resolve_by_callback(self, data: str, decided_by: str) -> Approval:
        """Resolve from button data ``appr:<id>:approve|deny`` (InvalidArgument if malformed)."""
        approval_id, status = parse_callback_data(data)
        return await self.resolve(approval_id, status, decided_by)

    async def cancel(self, approval_id: str, decided_by: str = "api",
                     reason: str | None = None) -> Approval:
        """Withdraw a pending request. Raises NotFound, or AlreadyFinal."""
        return await self._transition(self.store.cancel_approval, approval_id, decided_by,
                                      reason)

    async def _transition(self, method, approval_id: str, *args) -> Approval:
        try:
            approval = await self.store.run(method, approval_id, *args)
        except AlreadyFinal as exc:
            if exc.expired_now:
                self._publish(exc.approval)
            raise
        self._publish(approval)
        return approval

    async def expire_due(self, now: datetime | None = None) -> list[Approval]:
        """Expire every due request (one compare-and-set) and announce each."""
        expired = await self.store.run(self.store.expire_due, now)
        for approval in expired:
            self._publish(approval)
        return expired

    async def escalate_due(self, chat_ids: list[int], now: datetime | None = None
                           ) -> list[Approval]:
        """Post every request pending past its escalation delay to ``chat_ids`` too
        (once, whichever instance sweeps first) and announce each."""
        escalated = await self.store.run(self.store.escalate_due, chat_ids, now)
        for approval in escalated:
            self._publish(approval)
        return escalated

    def announce(self, approvals: list[Approval]) -> None:
        """Announce transitions committed elsewhere (e.g. a run cancel withdrew these)."""
        for approval in approvals:
            self._publish(approval)

    # --- waiting ----------------------------------------------------------------------

    async def get(self, approval_id: str) -> Approval:
        return await self.store.run(self.store.get_approval, approval_id)

    async def wait(self, approval_id: str, timeout: float) -> Approval:
        """The request once final, or as it stands after ``timeout`` seconds (0..300).

        Returns the moment the decision commits in this process. A request
        whose ``expires_at`` passes while waiting is expired then and there.
        """
        if not 0 <= timeout <= MAX_WAIT:
            raise InvalidArgument(f"wait must be between 0 and {MAX_WAIT:g} seconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Registered before reading, so a decision committed in between still wakes us.
            future: asyncio.Future = loop.create_future()
            self._waiters[approval_id].add(future)
            try:
                approval = await self.get(approval_id)
                if approval.is_final:
                    return approval
                now = self.store.clock()
                if approval.expires_at <= now:
                    await self.expire_due(now)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return approval
                until_expiry = (approval.expires_at - now).total_seconds()
                slice_ = min(remaining, self.poll_interval, until_expiry + 0.001)
                timer = loop.call_later(slice_, _settle, future, None)
                try:
                    decided = await future  # one hop from _publish: no wait_for/shield chain
                finally:
                    timer.cancel()
                if decided is not None:
                    return decided
            finally:
                self._forget(approval_id, future)

    def _forget(self, approval_id: str, future: asyncio.Future) -> None:
        waiters = self._waiters.get(approval_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[approval_id]
        if not future.done():
            future.cancel()

    async def wake(self, approval_id: str) -> None:
        """Another process made ``approval_id`` final: wake the waits on it here."""
        if not self._waiters.get(approval_id):
            return
        approval = await self.get(approval_id)
        if approval.is_final:
            for future in list(self._waiters.get(approval_id, ())):
                _settle(future, approval)

    async def wake_all(self) -> None:
        """Wake the waits whose request became final unheard (e.g. while the LISTEN
        connection was down): re-read every request that has waiters here."""
        for approval_id in list(self._waiters):
            await self.wake(approval_id)

    @property
    def waiting(self) -> int:
        """How many waits are in progress (for tests and health)."""
        return sum(len(w) for w in self._waiters.values())

    # --- telling ----------------------------------------------------------------------

    def _publish(self, approval: Approval, created: bool = False) -> None:
        if approval.is_final:
            for future in self._waiters.get(approval.id, ()):
                _settle(future, approval)
        for listener in self._listeners:
            try:
                listener(approval, created)
            except Exception:  # a broken listener must not undo a committed decision
                log.exception("approval listener failed for %s", approval.id)


def _settle(future: asyncio.Future, value: Approval | None) -> None:
    if not future.done():
        future.set_result(value)
