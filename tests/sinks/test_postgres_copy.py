"""The compiled COPY rows of the PostgreSQL sink (``_hotpath_c/pg_copy.c``)
against psycopg's own binary COPY formatter, which stays the reference.

Two ways: the byte stream ``postgres_copy.write_rows`` sends for any rows
(clean ones, and every kind of value the compiled formatter must leave to
psycopg) equals the stream psycopg makes of the same rows alone, or both raise
the same error at the same row; and two sinks on the real server, one offered
the compiled module and one not, store the same rows and refuse the same
batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_mw import Batch, RecordRejected, RequestRecord, WebSocketSession
from aegis_mw.core.gil_slices import Slices
from tests.conftest import compiled_module
from tests.sinks.test_sqlite import make_request, make_session

psycopg = pytest.importorskip("psycopg")

from psycopg._copy_base import BinaryFormatter  # noqa: E402
from psycopg.adapt import Transformer  # noqa: E402
from psycopg.pq import Format  # noqa: E402

from aegis_mw.sinks import postgres_copy  # noqa: E402
from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402
from aegis_mw.sinks.postgres_schema import REQUEST_TYPES, SESSION_TYPES  # noqa: E402


class Text(str):
    """A str subclass: psycopg dumps it; the compiled formatter leaves it."""


class Number(int):
    pass


class Real(float):
    pass


#: Values by the column type they are put in (the first three of each are
#: clean: the rows ``row_lists`` starts from): what the compiled formatter
#: takes at its edges, what it must leave to psycopg (a subclass, another
#: type, NUL in text, an int out of the column's range, a lone surrogate), and
#: what psycopg or the server refuse.
VALUES: dict[str, list[Any]] = {
    "text": ["", "GET", "é" * 40, "/caf\udce9", "nul\x00inside", Text("x"), 12, 2.5, b"GET", True,
             "\U0001f600" * 3, "x" * 5000, None],
    "float8": [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1e308, 7, 2**70, True,
               Real(1.5), "1.5", None],
    "int4": [0, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, True, Number(200), 200.0, "200",
             None],
    "int8": [0, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, False, Number(3), 1.5, None],
    "bool": [True, False, None, 1, 0, "true"],
}  # fmt: skip
#: Fields of the records by their column type, for the batches the sinks get.
REQUEST_FIELDS = dict(zip(RequestRecord._fields, REQUEST_TYPES, strict=True))
SESSION_FIELDS = dict(zip(WebSocketSession._fields, SESSION_TYPES, strict=True))


class RecordingCopy:
    """What ``Copy`` hands its formatter, kept: ``write`` and ``write_row``
    go to psycopg's own binary formatter, as in a real COPY."""

    def __init__(self, types: tuple[str, ...]) -> None:
        self.formatter = BinaryFormatter(transformer(types))
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += self.formatter.write(data)

    def write_row(self, row: Any) -> None:
        self.sent += self.formatter.write_row(row)

    def end(self) -> bytes:
        self.sent += self.formatter.end()
        return bytes(self.sent)


def transformer(types: tuple[str, ...]) -> Transformer:
    tx = Transformer()
    tx.set_dumper_types([tx.adapters.types[name].oid for name in types], Format.BINARY)
    return tx


def psycopg_stream(types: tuple[str, ...], rows: list[Any]) -> tuple[bytes, Any]:
    """psycopg's stream for ``rows`` and the error it raised (type, message, row)."""
    copy = RecordingCopy(types)
    for index, row in enumerate(rows):
        try:
            copy.write_row(row)
        except Exception as exc:
            return b"", (type(exc), str(exc), index)
    return copy.end(), None


def our_stream(types: tuple[str, ...], rows: list[Any], compiled: Any) -> tuple[bytes, Any]:
    copy = RecordingCopy(types)
    kinds = postgres_copy.kinds_of(types)
    calls = []

    def write_row(row: Any) -> None:
        calls.append(row)
        copy.write_row(row)

    copy_like: Any = type("Copy", (), {"write": copy.write, "write_row": staticmethod(write_row)})
    try:
        postgres_copy.write_rows(copy_like, rows, kinds, compiled, Slices())
    except Exception as exc:
        # The row psycopg was given last is the one it refused.
        return b"", (type(exc), str(exc), rows.index(calls[-1]) if calls else -1)
    return copy.end(), None


@st.composite
def row_lists(draw: st.DrawFn) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    types = draw(st.sampled_from([tuple(REQUEST_TYPES), tuple(SESSION_TYPES), ("int4",),
                                  ("bool", "text", "float8", "int8")]))  # fmt: skip
    count = draw(st.sampled_from([0, 1, 2, 255, 256, 257, 600]))
    clean = [tuple(VALUES[name][i % 3] for name in types) for i in range(count)]
    for _ in range(draw(st.integers(0, 4)) if count else 0):
        index = draw(st.integers(0, count - 1))
        column = draw(st.integers(0, len(types) - 1))
        row = list(clean[index])
        row[column] = draw(st.sampled_from(VALUES[types[column]]))
        clean[index] = tuple(row)
    return types, clean


@settings(max_examples=300, deadline=None)
@given(case=row_lists())
def test_the_stream_is_psycopgs_byte_for_byte_or_fails_at_the_same_row(
    case: tuple[tuple[str, ...], list[tuple[Any, ...]]],
) -> None:
    types, rows = case
    expected = psycopg_stream(types, rows)
    found = our_stream(types, rows, compiled_module())
    if expected[1] is not None and found[1] is not None:
        # The same error from psycopg, at the same row (it formats that row either way).
        assert found[1][:2] == expected[1][:2]
        assert rows[found[1][2]] == rows[expected[1][2]]
    else:
        assert found == expected
    assert our_stream(types, rows, None) == found


def test_clean_rows_are_all_formatted_by_the_compiled_module() -> None:
    module = compiled_module()
    rows = postgres_copy.probe_rows(REQUEST_TYPES) * 100
    data, end = module.pg_copy_rows(rows, postgres_copy.kinds_of(REQUEST_TYPES), 0, len(rows))
    assert end == len(rows)
    assert (
        postgres_copy.SIGNATURE + data + postgres_copy.TRAILER
        == psycopg_stream(tuple(REQUEST_TYPES), rows)[0]
    )
    # From the middle, up to a stop past the end.
    part, end = module.pg_copy_rows(rows, postgres_copy.kinds_of(REQUEST_TYPES), 7, 10**6)
    assert end == len(rows) and data.endswith(part) and len(part) < len(data)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (([], b"", 0, 0), ValueError),
        (([], b"tq", 0, 0), ValueError),
        (([], b"t\x00", 0, 0), ValueError),
        (([], b"t" * 33, 0, 0), ValueError),
        (([("a",)], b"t", 2, 1), ValueError),
        (([("a",)], b"t", -1, 1), ValueError),
        ((iter([]), b"t", 0, 0), TypeError),
        (([], "t", 0, 0), TypeError),
        (([], b"t", 0.0, 1), TypeError),
    ],
)
def test_bad_arguments_are_errors_never_a_crash(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        compiled_module().pg_copy_rows(*args)


# -- against the real server --------------------------------------------------------


@pytest.fixture
def pair(postgres_url: str) -> Iterator[tuple[PostgresSink, PostgresSink]]:
    compiled = PostgresSink(postgres_url)
    compiled.use_compiled(compiled_module())
    reference = PostgresSink(postgres_url.replace("search_path%3D", "search_path%3Dref_"))
    reference.use_compiled(None)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        schema = postgres_url.rsplit("search_path%3D", 1)[1]
        admin.execute(f'CREATE SCHEMA "ref_{schema}"')
    try:
        yield compiled, reference
    finally:
        compiled.close()
        reference.close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "ref_{schema}" CASCADE')


def stored(sink: PostgresSink) -> list[tuple[Any, ...]]:
    connection = sink._connect()
    rows = []
    for table, key in (
        ("aegis_requests", "request_id"),
        ("aegis_websocket_sessions", "session_id"),
    ):
        cursor = connection.execute(f"SELECT * FROM {table} ORDER BY {key}")
        # Floats compared by their bits (-0.0 and 0.0 differ).
        rows += [tuple(v.hex() if isinstance(v, float) else v for v in row) for row in cursor]
    return rows


def outcome(sink: PostgresSink, batch: Batch) -> tuple[str, str] | None:
    try:
        sink.write(batch)
    except RecordRejected as exc:
        return type(exc.__cause__).__name__, str(exc.__cause__)
    return None


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    count = draw(st.sampled_from([1, 3, 256, 300]))
    requests = [make_request(n) for n in range(count)]
    sessions = [make_session(n) for n in range(draw(st.sampled_from([0, 2, 257])))]
    for records, fields in ((requests, REQUEST_FIELDS), (sessions, SESSION_FIELDS)):
        for _ in range(draw(st.integers(0, 2)) if records else 0):
            index = draw(st.integers(0, len(records) - 1))
            field = draw(st.sampled_from(sorted(fields)[1:]))  # never the id: stored once
            value = draw(st.sampled_from(VALUES[fields[field]]))
            records[index] = records[index]._replace(**{field: value})
    return Batch(requests=requests, sessions=sessions)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=batches())
def test_the_server_stores_or_refuses_what_psycopg_alone_would(
    pair: tuple[PostgresSink, PostgresSink], batch: Batch
) -> None:
    compiled, reference = pair
    assert outcome(compiled, batch) == outcome(reference, batch)
    assert compiled._copier is compiled_module() and reference._copier is None
    # The same batch again (built by hand, without an id: its requests are
    # stored again, its sessions through the staging table): the same again.
    assert outcome(compiled, batch) == outcome(reference, batch)
    assert stored(compiled) == stored(reference)
    for sink in pair:  # the next batch starts clean
        connection = sink._connect()
        connection.execute("TRUNCATE aegis_requests, aegis_websocket_sessions")


@pytest.mark.parametrize("encoding", ["LATIN1", "GB18030"])
def test_an_encoding_other_than_utf8_is_left_to_psycopg(
    postgres_url: str, pair: tuple[PostgresSink, PostgresSink], encoding: str
) -> None:
    """psycopg cannot encode a probe value (LATIN1 has no emoji), or encodes
    every one in other bytes (GB18030): either way psycopg formats every row
    on that connection, and stores them as it always did."""
    sink = PostgresSink(postgres_url + f"%20-cclient_encoding%3D{encoding}")
    sink.use_compiled(compiled_module())
    try:
        sink.write(Batch(requests=[make_request(1, path="/café")]))
        assert sink._copier is None
        assert [row[4] for row in stored(sink)] == ["/café"]
    finally:
        sink.close()


def test_the_check_is_made_once_per_connection(
    pair: tuple[PostgresSink, PostgresSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled, _ = pair
    checks = []
    check = postgres_copy.compiled_copy

    def counted(connection: Any, module: Any, types: Any) -> Any:
        checks.append(connection)
        return check(connection, module, types)

    monkeypatch.setattr(postgres_copy, "compiled_copy", counted)
    compiled.write(Batch(requests=[make_request(1)]))
    compiled.write(Batch(requests=[make_request(2)]))
    first = compiled._connect()
    assert checks == [first] and compiled._copier is compiled_module()
    first.close()  # the next write opens another
    compiled.write(Batch(requests=[make_request(3)]))
    assert len(checks) == 2 and checks[1] is compiled._connect() is not first
