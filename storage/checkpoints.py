"""Checkpoints: a run's usage at a step plus an opaque payload to restart from.

Append-only; the latest is the highest id. A checkpoint is where the agent
resumes its own work from after a crash; it never resets what was spent: a
run's usage is always the ledger's and the steps' truth.
"""

from __future__ import annotations

from datetime import datetime

from storage.base import unit_of_work
from storage.errors import NotFound
from storage.models import CheckpointRow
from storage.records import Checkpoint, NewCheckpoint, from_nano
from storage.runs import RunStore


def _checkpoint_record(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        run_id=row.run_id,
        step_index=row.step_index,
        name=row.name,
        usage_prompt_tokens=row.usage_prompt_tokens,
        usage_completion_tokens=row.usage_completion_tokens,
        usage_dollars=from_nano(row.usage_dollars_nano),
        usage_loops=row.usage_loops,
        payload=row.payload or {},
        created_at=row.created_at,
    )


class CheckpointStore(RunStore):
    """Checkpoint operations of the Store."""

    @unit_of_work
    def save_checkpoint(self, new: NewCheckpoint, now: datetime | None = None) -> Checkpoint:
        """Append a checkpoint holding the run's usage now plus the caller's payload."""
        now = now or self.clock()
        with self.write():
            run = self._locked_run(new.run_id)
            row = CheckpointRow.create(
                run=new.run_id,
                step_index=new.step_index,
                name=new.name,
                usage_prompt_tokens=run.usage_prompt_tokens,
                usage_completion_tokens=run.usage_completion_tokens,
                usage_dollars_nano=run.usage_dollars_nano,
                usage_loops=run.usage_loops,
                payload=new.payload,
                created_at=now,
            )
        return _checkpoint_record(row)

    @unit_of_work
    def latest_checkpoint(self, run_id: str) -> Checkpoint:
        row = (CheckpointRow.select().where(CheckpointRow.run == run_id)
               .order_by(CheckpointRow.id.desc()).first())
        if row is None:
            raise NotFound(f"run {run_id} has no checkpoint")
        return _checkpoint_record(row)

    @unit_of_work
    def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        self._must_exist(run_id)
        query = CheckpointRow.select().where(CheckpointRow.run == run_id).order_by(CheckpointRow.id)
        return [_checkpoint_record(r) for r in query]
