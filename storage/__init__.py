"""Tapgate's durable state: peewee models, database opening, migrations and the Store.

Import the Store from :mod:`storage.store`; :mod:`storage.records` (the typed
records) imports only pydantic, so the agents' client can use it without the
database drivers.
"""
