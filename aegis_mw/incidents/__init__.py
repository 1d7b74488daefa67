"""Incidents: what went wrong, its lifecycle, and its timeline.

:mod:`.model` holds an incident's fields and their checks, :mod:`.store` where
incidents live (the app's SQLite file or PostgreSQL database, or memory),
:mod:`.service` the operations the API, the CLI and the app call, with
what happened around one (its timeline), rebuilt from what was recorded.
"""
