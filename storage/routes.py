"""Routes stored by ``tapgate policy apply``, and what a chat's ``/pending`` lists.

A policy file with a ``routes`` section replaces every stored route in one
transaction; :class:`bot.routing.Router` reads them (cached, see there) ahead of
``TAPGATE_ROUTES``. Which requests a chat sees is simply which have a copy there
(``approval_message``): where a request was routed, and where it escalated.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from storage.approvals import approval_record
from storage.base import StoreBase, unit_of_work
from storage.db import is_postgres
from storage.models import ApprovalMessageRow, ApprovalRow, RouteRow
from storage.records import Approval
from storage.rule_records import Route


class RoutingSnapshot(NamedTuple):
    """What a router refreshes from, read in one unit of work."""

    routes: list[Route]  # the stored routes, first match first
    owed_chat_ids: list[int]  # chats holding copies the notifier still owes


def _route_record(row: RouteRow) -> Route:
    return Route(agent=row.agent, kind=row.kind, chats=row.chat_ids,
                 approvers=row.approver_ids)


class RouteStore(StoreBase):
    """Route operations of the Store."""

    routes_version = 0
    """Bumped (per Store object) after every :meth:`replace_routes` commits: a router on
    this Store re-reads the routes at once instead of at its next periodic refresh."""

    @unit_of_work
    def replace_routes(self, routes: list[Route], now: datetime | None = None) -> list[Route]:
        """Replace every stored route by ``routes`` (in this order), in one transaction;
        returns them. An empty list removes them all."""
        now = now or self.clock()
        with self.write():
            if is_postgres(self.db):
                # Two applies at once: the second waits for the first and replaces its
                # routes, instead of failing on the unique position the first inserted.
                self.db.execute_sql('LOCK TABLE "route" IN SHARE ROW EXCLUSIVE MODE')
            RouteRow.delete().execute()
            if routes:
                RouteRow.insert_many([
                    {"position": n, "agent": r.agent, "kind": r.kind, "chat_ids": r.chats,
                     "approver_ids": r.approvers, "created_at": now}
                    for n, r in enumerate(routes, 1)]).execute()
        self.routes_version += 1
        return list(routes)

    @unit_of_work
    def list_routes(self) -> list[Route]:
        """The stored routes, first match first."""
        return [_route_record(r) for r in RouteRow.select().order_by(RouteRow.position)]

    @unit_of_work
    def routing_snapshot(self) -> RoutingSnapshot:
        """The stored routes and the chats with owed copies (read through the partial
        index ``approval_message_owed``: the cost is what is owed, not the history)."""
        routes = [_route_record(r) for r in RouteRow.select().order_by(RouteRow.position)]
        owed = self.db.execute_sql(self.statement("approval_message.owed_chats", lambda: (
            'SELECT DISTINCT "chat_id" FROM "approval_message" WHERE "owed"'))).fetchall()
        return RoutingSnapshot(routes, sorted(row[0] for row in owed))

    def _pending_in(self, chat_id: int):
        return (ApprovalRow.select()
                .join(ApprovalMessageRow, on=ApprovalMessageRow.approval == ApprovalRow.id)
                .where((ApprovalRow.status == "pending")
                       & (ApprovalMessageRow.chat_id == chat_id)))

    @unit_of_work
    def pending_in_chat(self, chat_id: int, limit: int | None = None) -> list[Approval]:
        """Pending requests with a copy in ``chat_id`` (routed or escalated there), oldest
        first (at most one row per request: a request has one copy per chat)."""
        query = self._pending_in(chat_id).order_by(ApprovalRow.created_at.asc(),
                                                   ApprovalRow.id.asc())
        if limit is not None:
            query = query.limit(limit)
        return [approval_record(r) for r in query]

    @unit_of_work
    def count_pending_in_chat(self, chat_id: int) -> int:
        """How many pending requests have a copy in ``chat_id``."""
        return self._pending_in(chat_id).count()
