"""Facts (episodic memory, keyed by namespace and key) and named policy bundles."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.base import StoreBase, unit_of_work
from storage.errors import NotFound
from storage.models import FactRow, PolicyRow
from storage.records import ApprovalRule, Fact, Policy, PolicyUpsert


def _fact_record(row: FactRow) -> Fact:
    return Fact(namespace=row.namespace, key=row.key, value=row.value,
                created_at=row.created_at, updated_at=row.updated_at)


def policy_record(row: PolicyRow) -> Policy:
    return Policy(
        name=row.name,
        budget_tokens=row.budget_tokens,
        budget_dollars=row.budget_dollars,
        budget_loops=row.budget_loops,
        budget_seconds=row.budget_seconds,
        tool_allowlist=row.tool_allowlist or [],
        approval_rules=row.approval_rules or [],
        default_safe=row.default_safe,
        escalate_after=row.escalate_after or 0.0,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class FactStore(StoreBase):
    """Fact and policy operations of the Store."""

    @unit_of_work
    def put_fact(self, namespace: str, key: str, value: Any,
                 now: datetime | None = None) -> Fact:
        """Insert or update a fact by (namespace, key); ``created_at`` is kept."""
        now = now or self.clock()
        with self.write():
            (FactRow.insert(namespace=namespace, key=key, value=value, created_at=now,
                            updated_at=now)
             .on_conflict(conflict_target=[FactRow.namespace, FactRow.key],
                          update={FactRow.value: value,
                                  FactRow.updated_at: now})
             .execute())
            return _fact_record(FactRow.get((FactRow.namespace == namespace)
                                            & (FactRow.key == key)))

    @unit_of_work
    def get_fact(self, namespace: str, key: str) -> Fact:
        row = FactRow.get_or_none((FactRow.namespace == namespace) & (FactRow.key == key))
        if row is None:
            raise NotFound(f"fact {namespace}/{key} not found")
        return _fact_record(row)

    @unit_of_work
    def list_facts(self, namespace: str) -> list[Fact]:
        """All facts of a namespace, ordered by key."""
        query = FactRow.select().where(FactRow.namespace == namespace).order_by(FactRow.key)
        return [_fact_record(r) for r in query]

    @unit_of_work
    def upsert_policy(self, policy: PolicyUpsert, now: datetime | None = None) -> Policy:
        """Insert or replace a policy bundle by name; the original ``created_at`` is kept."""
        now = now or self.clock()
        values = policy.model_dump(exclude={"name"})
        values["approval_rules"] = [r.model_dump(exclude_none=True)
                                    for r in policy.approval_rules]
        with self.write():
            (PolicyRow.insert(name=policy.name, created_at=now, updated_at=now, **values)
             .on_conflict(conflict_target=[PolicyRow.name],
                          update={**{getattr(PolicyRow, k): v
                                     for k, v in values.items()},
                                  PolicyRow.updated_at: now})
             .execute())
            return policy_record(PolicyRow.get_by_id(policy.name))

    @unit_of_work
    def get_policy(self, name: str) -> Policy:
        row = PolicyRow.get_or_none(PolicyRow.name == name)
        if row is None:
            raise NotFound(f"policy {name} not found")
        return policy_record(row)

    @unit_of_work
    def run_policy_terms(self, run_id: str) -> tuple[float | None, list[ApprovalRule]]:
        """What the policy of run ``run_id`` says of a request submitted in that run: its
        escalation delay (None when it sets none) and its approval rules; ``(None, [])``
        when the run is unknown or has no policy. One query, rendered once: it is on the
        submit path of every request with a ``run_id``."""
        p = self.db.param
        row = self.db.execute_sql(self.statement("policy.terms_of_run", lambda: (
            'SELECT "policy"."escalate_after", "policy"."approval_rules" FROM "run" '
            'JOIN "policy" ON "policy"."name" = "run"."policy_ref" '
            f'WHERE "run"."id" = {p}')), (run_id,)).fetchone()
        if row is None:
            return None, []
        rules = PolicyRow.approval_rules.python_value(row[1]) or []
        return row[0] or None, [ApprovalRule.model_validate(rule) for rule in rules]

    @unit_of_work
    def list_policies(self) -> list[Policy]:
        """All policy bundles, newest first."""
        query = PolicyRow.select().order_by(PolicyRow.created_at.desc(), PolicyRow.name)
        return [policy_record(r) for r in query]
