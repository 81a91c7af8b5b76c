"""Approvers per route: who may decide the requests a route posts.

- ``route.approver_ids`` (JSON list of Telegram user ids, nullable): a stored route's
  approvers; NULL: every allowed user (``TAPGATE_APPROVER_USER_IDS``), as before.
- ``approval.approvers`` (text ``,1001,1002,``, nullable): the approvers of the route
  that matched the request when it was submitted, copied so that a later change of
  the routes never changes who may decide a request already asked. The separators on
  both ends let the compare-and-set test membership with one ``LIKE '%,<id>,%'``
  (no JSON functions, which SQLite and PostgreSQL spell differently).
"""

from peewee import TextField


def up(migrator, db):
    from playhouse.migrate import migrate

    migrate(
        migrator.add_column("route", "approver_ids", TextField(null=True)),
        migrator.add_column("approval", "approvers", TextField(null=True)),
    )
