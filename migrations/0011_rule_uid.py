"""Rules bound to the uid whose requests they approve.

- ``approval_rule.submitter_uid`` (nullable): a rule made from a request (🔁 This
  session, ♾️ Always) approves only requests submitted over the socket by the same
  uid, so an agent running as another user cannot claim the agent's name and take its
  standing approvals. NULL (rules made with the CLI or the socket API, and rules made
  before this migration): any uid, as before.
"""

from peewee import BigIntegerField


def up(migrator, db):
    from playhouse.migrate import migrate

    migrate(migrator.add_column("approval_rule", "submitter_uid", BigIntegerField(null=True)))
