"""The request rows of the SQLite sink, bound by the compiled module where it can.

Binding through the sqlite3 module is most of an insert's cost: every text
value is copied into a new allocation and every parameter is bound under the
GIL. ``_hotpath.sqlite_insert_rows`` (``aegis_mw/_hotpath_c/sqlite_rows.c``)
reads the records' values under the GIL and binds and steps them with it
released, on the same connection and in the same transaction, through the
SQLite library the sqlite3 module itself loaded. It takes only exact str, int
(64-bit), float and None values; before a record holding anything else it
stops, at the start of that record's statement, and :func:`insert` binds
the rest through the sqlite3 module in the statements it would have used
from the start, so a value is stored, or refused with the same error, as
without the compiled module. Where the compiled module is not used, or the connection's handle
cannot be confirmed (:func:`compiled_rows`), every row goes through the
sqlite3 module as before. The two statements are prepared once per
connection and kept (:func:`statement_cache`): preparing the one of 64 rows
costs about as much as writing a quiet second's rows.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from types import ModuleType
from typing import Any

from ..core.gil_slices import PAUSE_SECONDS, SLICE_SECONDS

logger = logging.getLogger("aegis_mw")

# SQLite's primary result codes, as the sqlite3 module turns them into
# exceptions (CPython's Modules/_sqlite/util.c), so an error met by the
# compiled inserts is the one the sqlite3 module would have raised.
_ERRORS: dict[int, type[Exception]] = {
    2: sqlite3.InternalError,  # SQLITE_INTERNAL
    12: sqlite3.InternalError,  # SQLITE_NOTFOUND
    11: sqlite3.DatabaseError,  # SQLITE_CORRUPT
    18: sqlite3.DataError,  # SQLITE_TOOBIG
    19: sqlite3.IntegrityError,  # SQLITE_CONSTRAINT
    20: sqlite3.IntegrityError,  # SQLITE_MISMATCH
    21: sqlite3.InterfaceError,  # SQLITE_MISUSE
    25: sqlite3.InterfaceError,  # SQLITE_RANGE
}
_OPERATIONAL = frozenset({1, 3, 4, 5, 6, 8, 9, 10, 13, 14, 15, 16, 17})


def error_for(code: int, message: str) -> Exception:
    """The exception the sqlite3 module raises for SQLite's ``code``."""
    primary = code & 0xFF
    if primary == 7:  # SQLITE_NOMEM: the sqlite3 module raises a bare MemoryError
        return MemoryError()
    kind = sqlite3.OperationalError if primary in _OPERATIONAL else _ERRORS.get(primary)
    error = (kind or sqlite3.DatabaseError)(message)
    if sys.version_info >= (3, 11):  # the extended code, as the sqlite3 module sets it
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def compiled_rows(connection: sqlite3.Connection, compiled: ModuleType | None) -> ModuleType | None:
    """``compiled`` if its inserts may drive ``connection``, else None.

    They may when SQLite's functions were found in the library the sqlite3
    module loaded, and the handle read from the connection names the very
    file the connection itself reports (``PRAGMA database_list``): the layout
    that handle is read from holds on every CPython the compiled module is
    used on, and this check refuses it anywhere it would not.
    """
    if compiled is None or not hasattr(compiled, "sqlite_insert_rows"):
        return None
    try:
        import _sqlite3

        if not compiled.sqlite_rows_init(_sqlite3.__file__, sqlite3.Connection):
            return None
        through_handle = compiled.sqlite_filename(connection)
        files = {name: path for _, name, path in connection.execute("PRAGMA database_list")}
    except Exception:  # no _sqlite3 file (a static build), or an odd connection
        logger.debug("aegis_mw: SQLite rows bound by the sqlite3 module", exc_info=True)
        return None
    if not through_handle or through_handle != files.get("main"):
        logger.info(
            "aegis_mw: SQLite rows are bound by the sqlite3 module (the connection's handle "
            "reports %r, the connection %r)", through_handle, files.get("main"),
        )  # fmt: skip
        return None
    return compiled


def statement_cache(compiled: ModuleType) -> object:
    """An empty cache of the compiled inserts' prepared statements, for one
    connection (the statements are finalized when it is dropped); None from a
    build without one, whose inserts :func:`insert` then calls as before
    (they prepare the statements at every call)."""
    make = getattr(compiled, "sqlite_rows_cache", None)
    return None if make is None else make()


def adapted() -> bool:
    """Whether an adapter is registered for a type the compiled inserts bind
    themselves (the sqlite3 module would call it on every such value)."""
    return any(kind in _BOUND_IN_C for kind, _ in sqlite3.adapters)


_BOUND_IN_C = frozenset({str, int, float, type(None)})


def insert(
    compiled: ModuleType,
    connection: sqlite3.Connection,
    many_sql: str,
    one_sql: str,
    rows_per_statement: int,
    width: int,
    records: list[Any],
    pause: float = PAUSE_SECONDS,
    statements: object = None,
) -> int:
    """Insert as many of ``records`` as the compiled inserts take, pausing
    ``pause`` seconds after each slice of SQLite's work; returns where they
    stopped (``len(records)`` when they took all). Raises what the sqlite3
    module would raise when SQLite refuses a statement. ``statements``: a
    :func:`statement_cache` kept with ``connection``, so its statements are
    prepared once, not at every call (preparing the 64-row one costs about
    170 µs, a quiet flush's whole insert several times over)."""
    arguments = (
        connection, many_sql, one_sql, rows_per_statement, width, records, 0,
        SLICE_SECONDS, float(pause),
    )  # fmt: skip
    # No cache: the nine arguments a build without one takes too.
    call = compiled.sqlite_insert_rows
    done, code, message = call(*arguments) if statements is None else call(*arguments, statements)
    if code:
        raise error_for(code, message)
    return int(done)
