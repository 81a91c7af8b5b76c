"""Teams per policy: how long a run's requests wait before they escalate.

- ``policy.escalate_after`` (seconds, default 0): a request created for a run with
  this policy escalates after that long; 0 means the settings' ``TAPGATE_ESCALATE_AFTER``.

The approvers a policy's rule needs (``required_approvals``) live in the
``approval_rules`` JSON already: no column.
"""

from peewee import SQL, DoubleField


def up(migrator, db):
    from playhouse.migrate import migrate

    migrate(
        migrator.add_column("policy", "escalate_after",
                            DoubleField(default=0, constraints=[SQL("DEFAULT 0")])),
    )
