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
        after: tuple[str, str] | None = None
        while True:
            rows = self._approval_page(run_id, after, page)
            if not rows:
                return
            yield from rows
            after = (rows[-1].created_at, rows[-1].id)

    @unit_of_work
    def _approval_page(self, run_id, after, page) -> list[Approval]:
        query = ApprovalRow.select()
        if run_id is not None:
            query = query.where(ApprovalRow.run == run_id)
        if after is not None:
            at, last_id = after
            query = query.where((ApprovalRow.created_at > at)
                                | ((ApprovalRow.created_at == at) & (ApprovalRow.id > last_id)))
        query = query.order_by(ApprovalRow.created_at, ApprovalRow.id).limit(page)
        return [approval_record(r) for r in query]

    def iter_tool_calls(self, run_id: str | None = None, page: int = PAGE
                        ) -> Iterator[ToolCall]:
        """Tool calls in (created_at, id) order, optionally of one run."""
        after = None
        while True:
            rows = self._tool_call_page(run_id, after, page)
            if not rows:
                return
            yield from rows
            after = (rows[-1].created_at, rows[-1].id)

    @unit_of_work
    def _tool_call_page(self, run_id, after, page) -> list[ToolCall]:
        query = ToolCallRow.select()
        if run_id is not None:
            query = query.where(ToolCallRow.run == run_id)
        if after is not None:
            at, last_id = after
            query = query.where((ToolCallRow.created_at > at)
                                | ((ToolCallRow.created_at == at) & (ToolCallRow.id > last_id)))
        query = query.order_by(ToolCallRow.created_at, ToolCallRow.id).limit(page)
        return [tool_call_record(r) for r in query]
