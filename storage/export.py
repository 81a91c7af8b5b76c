"""Paged iteration over approvals and tool calls, for exports that must not hold everything."""

from __future__ import annotations

from collections.abc import Iterator

from storage.approvals import approval_record
from storage.base import StoreBase, unit_of_work
from storage.models import ApprovalRow, ToolCallRow
from storage.records import Approval, ToolCall
from storage.runs import tool_call_record

PAGE = 2000


class ExportStore(StoreBase):
    """Streams of records in a stable order, read a page at a time."""

    def iter_approvals(self, run_id: str | None = None, page: int = PAGE) -> Iterator[Approval]:
        """Approvals in (created_at, id) order, optionally of one run."""
        return self._paged(ApprovalRow, approval_record, run_id, page)

    def iter_tool_calls(self, run_id: str | None = None, page: int = PAGE
                        ) -> Iterator[ToolCall]:
        """Tool calls in (created_at, id) order, optionally of one run."""
        return self._paged(ToolCallRow, tool_call_record, run_id, page)

    def _paged(self, model, record, run_id: str | None, page: int) -> Iterator:
        after = None
        while True:
            rows = self._page(model, record, run_id, after, page)
            if not rows:
                return
            yield from rows
            after = (rows[-1].created_at, rows[-1].id)

    @unit_of_work
    def _page(self, model, record, run_id, after, page) -> list:
        # Keyset pagination on (created_at, id): each page is an index range, not an OFFSET.
        query = model.select()
        if run_id is not None:
            query = query.where(model.run == run_id)
        if after is not None:
            at, last_id = after
            query = query.where((model.created_at > at)
                                | ((model.created_at == at) & (model.id > last_id)))
        return [record(r) for r in query.order_by(model.created_at, model.id).limit(page)]
