"""The PostgreSQL sink's COPY rows, formatted by the compiled module where it can.

psycopg's ``Copy.write_row`` calls one dumper per value: 0.95 µs per request
record in its formatter alone (0.16 µs here), holding the GIL in the sink's
thread, most of what a record costs the sink. ``_hotpath.pg_copy_rows``
(``aegis_mw/_hotpath_c/pg_copy.c``) formats a run of records at once into
PostgreSQL's binary COPY tuple format, handed to ``Copy.write`` as it is. It
takes only values whose bytes are beyond doubt (exact str without NUL,
float, int in range, bool, None, each in its column's type) and stops before
any other record; psycopg's ``write_row`` takes that one and every one after
it, so it is formatted, or refused, as without the compiled module. Before it
is used on a connection, :func:`compiled_copy` checks that its bytes equal
psycopg's own for probe rows of every column type, with that connection's
encoding and dumpers; where they differ psycopg formats every row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import psycopg
from psycopg.adapt import Transformer
from psycopg.pq import Format

from ..core.gil_slices import Slices

logger = logging.getLogger("aegis_mw")

#: How the compiled formatter names each PostgreSQL type the tables use.
KINDS = {"text": "t", "float8": "d", "int4": "i", "int8": "l", "bool": "b"}
#: The binary COPY stream's header and end marker (PostgreSQL's COPY docs).
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
#: Rows formatted per call, between two checks of the thread's GIL slice: about
#: 40 µs of work, and some 40 KB for psycopg to send (without the GIL).
COMPILED_STEP = 256
#: Rows formatted by psycopg between two checks (about 0.1 ms).
PSYCOPG_STEP = 64

#: A value of each type the compiled formatter takes, and the edges of it.
_PROBES: dict[str, tuple[Any, ...]] = {
    "text": ("", "GET", "/caf\u00e9/\u20ac/\U0001f600", None),
    "float8": (0.0, -0.0, 1.5e-300, float("inf"), -1e308, None),
    "int4": (0, -1, 2**31 - 1, -(2**31), None),
    "int8": (0, -1, 2**63 - 1, -(2**63), None),
    "bool": (True, False, None),
}


def kinds_of(types: Sequence[str]) -> bytes:
    """The compiled formatter's spelling of a table's column types."""
    return "".join(KINDS[name] for name in types).encode("ascii")


def _psycopg_bytes(
    connection: psycopg.Connection[Any], types: Sequence[str], rows: list[Any]
) -> bytes:
    """What psycopg's own binary COPY formatter makes of ``rows``."""
    from psycopg._copy_base import BinaryFormatter  # no public name for it

    transformer = Transformer(connection)
    transformer.set_dumper_types(
        [connection.adapters.types[name].oid for name in types], Format.BINARY
    )
    formatter = BinaryFormatter(transformer)
    out = bytearray()
    for row in rows:
        out += formatter.write_row(row)
    out += formatter.end()
    return bytes(out)


def probe_rows(types: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows that put every probe value of its type in every column."""
    columns = [_PROBES[name] for name in types]
    longest = max(len(values) for values in columns)
    return [tuple(values[i % len(values)] for values in columns) for i in range(longest)]


def compiled_copy(
    connection: psycopg.Connection[Any], compiled: ModuleType | None, types: Sequence[str]
) -> ModuleType | None:
    """``compiled`` if its rows are byte for byte psycopg's on ``connection``
    for a table of ``types``, else None."""
    if compiled is None or not hasattr(compiled, "pg_copy_rows"):
        return None
    try:
        rows = probe_rows(types)
        ours, end = compiled.pg_copy_rows(rows, kinds_of(types), 0, len(rows))
        theirs = _psycopg_bytes(connection, types, rows)
    except Exception:  # an odd adapter, an encoding psycopg cannot use
        logger.debug("aegis_mw: PostgreSQL COPY rows formatted by psycopg", exc_info=True)
        return None
    if end != len(rows) or SIGNATURE + ours + TRAILER != theirs:
        logger.info(
            "aegis_mw: PostgreSQL COPY rows are formatted by psycopg (its bytes differ from "
            "the compiled formatter's on this connection: encoding %r)",
            connection.info.encoding,
        )
        return None
    return compiled


def write_rows(
    copy: psycopg.Copy,
    rows: Sequence[tuple[Any, ...]],
    kinds: bytes,
    compiled: ModuleType | None,
    slices: Slices,
) -> None:
    """Every row of ``rows`` into ``copy`` (binary, its types set): formatted
    by ``compiled`` where given, up to the first row it leaves; that row and
    every one after it by psycopg. psycopg keeps the rows it formats in a
    buffer until it is full, while ``Copy.write`` sends at once, so rows
    formatted by both in turn would reach the server out of order (the
    stream's header too)."""
    index = 0
    if compiled is not None and type(rows) in (list, tuple):
        count = len(rows)
        while index < count:
            stop = min(count, index + COMPILED_STEP)
            data, end = compiled.pg_copy_rows(rows, kinds, index, stop)
            if data:
                # The stream's header with its first rows; psycopg sends none
                # once anything was written.
                copy.write(data if index else SIGNATURE + data)
            index = end
            slices.check()
            if index < stop:
                break  # a value left to psycopg
        else:
            if count:
                copy.write(TRAILER)  # psycopg adds it only after rows of its own
            return
    write_row = copy.write_row
    for first in range(index, len(rows), PSYCOPG_STEP):
        for row in rows[first : first + PSYCOPG_STEP]:
            write_row(row)
        slices.check()
