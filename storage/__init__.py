"""Tapgate's durable state: peewee models, database opening, migrations and the Store."""

from storage.store import Store

__all__ = ["Store"]
