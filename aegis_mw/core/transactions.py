"""SQLite write transactions, shared by the sink and the alert store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def immediate(connection: Any) -> Iterator[None]:
    """A write transaction on a ``sqlite3`` connection in autocommit mode
    (``isolation_level=None``) that takes the file's write lock at once, so
    it never fails halfway on a lock another writer took first. Rolled back
    when the body or the COMMIT raises: a connection left inside a
    transaction would refuse every later ``BEGIN``."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite may have rolled back already
            connection.execute("ROLLBACK")
        raise
