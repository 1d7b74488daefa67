"""Write transactions, shared by the sinks and the alert and incident stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


@contextmanager
def write_transaction(
    borrow: Callable[[], AbstractContextManager[Any]], dialect: str
) -> Iterator[Any]:
    """A connection ``borrow`` lends, in a write transaction: SQLite's
    ``BEGIN IMMEDIATE`` takes the file's write lock at once; PostgreSQL's
    rows are locked by the statements' own ``FOR UPDATE``."""
    with borrow() as connection:
        if dialect == "sqlite":
            with immediate(connection):
                yield connection
        else:
            with connection.transaction():
                yield connection
