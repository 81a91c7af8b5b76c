"""Numbered forward-only migration scripts, applied by :mod:`storage.migrate`.

Each script is frozen: it declares the tables it touches inline and never
imports the application's models, so it keeps meaning what it meant the day
it shipped, whatever the models become.
"""
