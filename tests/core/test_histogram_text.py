"""The rollups' histogram text, compiled (``_hotpath_c/histogram_text.c``),
against the Python functions of ``aegis_mw.core.rollup``, which stay the
reference: for every input, the compiled function either gives the very text
the Python one gives, or None, and then ``histogram_functions`` runs the
Python one (same text, same error). Inputs are drawn from what the sinks store
(dense arrays of counts), from the edges of 64 bits, and from text the
compiled functions must leave to Python (spaces, leading zeros, ``-0``, the
version 2 dict form, non-ASCII, garbage)."""

from __future__ import annotations

import json
import sqlite3
from collections import UserDict
from contextlib import closing
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw import Batch
from aegis_mw.core.histogram import COUNT
from aegis_mw.core.rollup import (
    RollupDelta,
    encode_histogram,
    encode_histogram_array,
    histogram_functions,
    merge_histogram_text,
)
from aegis_mw.sinks import SQLiteSink
from tests.conftest import compiled_module

INT64 = 2**63
EDGES = [0, 1, 9, 10, 99, INT64 - 1, -INT64, -1, INT64, -INT64 - 1, 2**64]


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    return compiled_module()


#: Slots past which the Python functions are not called: asked for a list of
#: 10**17 slots (two stored indexes far apart), Python's allocator gives a
#: MemoryError, and the sanitizer build aborts the process instead. The
#: compiled functions leave anything past 65,536 slots to Python.
HUGE = 10**6


def decoded(text: object) -> list[int] | None:
    """What Python's merge reads from a stored text: a list of ints in the
    dense layout, or None when it raises before making a list."""
    if not text:
        return []
    try:
        data = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict):
        try:
            indexes = [int(index) for index in data]
        except (TypeError, ValueError):
            return None
        return [min(indexes), *[0] * (max(indexes) - min(indexes) + 1)] if indexes else []
    if isinstance(data, list) and all(type(value) is int for value in data):
        return data
    return None


def merge_span(left: object, right: object) -> int:
    """Slots Python's merge would allocate for these texts (0: it raises first)."""
    parts = [decoded(text) for text in (left, right)]
    if any(part is None for part in parts):
        return 0
    lists = [part for part in parts if part]
    if len(lists) < 2:
        return max((len(part) for part in lists), default=0)
    return max(p[0] + len(p) for p in lists) - min(p[0] for p in lists)  # type: ignore[index]


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("value", function(*args))
    except Exception as exc:  # the reference's error, compared by type
        return ("error", type(exc))


counts_dicts = st.dictionaries(
    st.one_of(st.integers(0, COUNT), st.integers(-5, 5), st.sampled_from(EDGES[:8])),
    st.one_of(st.integers(0, 10_000), st.sampled_from(EDGES)),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(counts=counts_dicts, array=st.booleans())
def test_encoding_a_histogram_gives_the_python_text(
    compiled: ModuleType, counts: dict[int, int], array: bool
) -> None:
    reference = encode_histogram_array if array else encode_histogram
    got = compiled.histogram_text(counts, array)
    if counts and max(counts) - min(counts) > HUGE:
        assert got is None  # and Python's dense() would ask for a list that large
        return
    if got is not None:
        assert got == reference(counts)
    # Whatever the compiled function left, the function the sinks use agrees.
    encode = histogram_functions(compiled)[1 if array else 0]
    assert outcome(encode, counts) == outcome(reference, counts)


def test_encoding_leaves_what_is_not_a_plain_int_to_python(compiled: ModuleType) -> None:
    for counts in (
        {True: 1}, {1: True}, {1: 2.0}, {"1": 2}, {1: INT64}, {0: 1, 70_000: 1}, {-INT64: 3},
    ):  # fmt: skip
        assert compiled.histogram_text(counts, False) is None, counts
    assert compiled.histogram_text({}, False) == "[]"
    assert compiled.histogram_text({}, True) == "{}"
    assert (
        compiled.histogram_text({3: -INT64, 5: INT64 - 1}, False) == f"[3,{-INT64},0,{INT64 - 1}]"
    )

    # Not an exact dict (a subclass may read its items otherwise): Python's,
    # and the function the sinks use gives what Python gives.
    class Tenfold(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            return [(key, value * 10) for key, value in dict.items(self)]

    encode = histogram_functions(compiled)[0]
    for counts in ([], Tenfold({1: 2, 3: 4}), UserDict({1: 2}), MappingProxyType({1: 2})):
        assert compiled.histogram_text(counts, False) is None, counts
        assert outcome(encode, counts) == outcome(encode_histogram, counts)
    assert encode(Tenfold({1: 2, 3: 4})) == "[1,20,0,40]"
    with pytest.raises(TypeError):
        compiled.histogram_text({1: 2})


def dense_texts() -> st.SearchStrategy[str | None]:
    """Stored histograms: canonical dense text mostly, and everything else."""
    canonical = st.lists(
        st.one_of(st.integers(0, 10_000), st.integers(-3, 3), st.sampled_from(EDGES)),
        max_size=30,
    ).map(lambda values: json.dumps(values, separators=(",", ":")))
    odd = st.sampled_from(
        [
            "", "[]", "[ 1,2]", "[1, 2]", "[01,2]", "[-0,1]", "[1,]", "[,1]", "[1", "1]",
            "[1,2]]", '{"9": 1}', "{}", "[1.0,2]", "[1e2]", "[\u0661]", "null", "[true]",
            "[" + "9" * 25 + "]", "[-" + "9" * 19 + "]", "[--1]", "[-]", "[5]",
        ]
    )  # fmt: skip
    garbage = st.text(alphabet='[]{},-0123456789 .e"', max_size=20)
    return st.one_of(st.none(), canonical, canonical, odd, garbage)


@settings(max_examples=600, deadline=None)
@given(left=dense_texts(), right=dense_texts())
def test_merging_stored_histograms_gives_the_python_text(
    compiled: ModuleType, left: str | None, right: str | None
) -> None:
    got = compiled.histogram_merge_text(left, right)
    if merge_span(left, right) > HUGE:
        assert got is None  # and Python's merge would ask for a list that large
        return
    if got is not None:
        assert ("value", got) == outcome(merge_histogram_text, left, right)
    merge = histogram_functions(compiled)[2]
    assert outcome(merge, left, right) == outcome(merge_histogram_text, left, right)


def test_merging_takes_the_canonical_form_only(compiled: ModuleType) -> None:
    merge = compiled.histogram_merge_text
    assert merge("[7,3]", "[9,1]") == "[7,3,0,1]"
    assert merge("[5]", "[3,1]") == "[3,1,0]"
    assert merge(None, "[3,1]") == "[3,1]"
    assert merge("", None) == "[]"
    assert merge("[]", "[]") == "[]"
    assert merge(f"[0,{INT64 - 1}]", "[0,0]") == f"[0,{INT64 - 1}]"
    # A sum past 64 bits, the dict form, spaces, leading zeros, -0, non-ASCII,
    # something that is not text: Python's.
    for left, right in [
        (f"[0,{INT64 - 1}]", "[0,1]"), ('{"9": 1}', "[7,3]"), ("[1, 2]", "[1]"),
        ("[01]", "[1]"), ("[-0,1]", "[1]"), ("[\u0661]", "[1]"), (b"[1]", "[1]"), (1, None),
        # First indexes a whole range apart: their distance is past 64 bits.
        (f"[{-(2**62)},1]", f"[{2**62 - 1},1]"),
    ]:  # fmt: skip
        assert merge(left, right) is None, (left, right)


def stored_rollups(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT * FROM aegis_rollups ORDER BY 1, 2, 3, 4, 5").fetchall()
        rows += connection.execute("SELECT * FROM aegis_rollup_totals ORDER BY 1, 2, 3").fetchall()
    return rows


def test_a_sink_with_the_compiled_text_stores_the_same_rollups(
    compiled: ModuleType, tmp_path: Path
) -> None:
    """Two SQLite sinks, one offered the compiled module, given the same
    rollups in several writes (so the coarser rows are merged on conflict):
    every stored row is the same."""
    python, fast = SQLiteSink(str(tmp_path / "python.db")), SQLiteSink(str(tmp_path / "fast.db"))
    fast.use_compiled(compiled)
    for write in range(6):
        delta = RollupDelta()
        for index in range(300):
            status = (200, 404, 500)[index % 3]
            delta.add(
                1_767_225_600.0 + write * 5 + index / 100, f"/r{index % 7}", "GET", status,
                0.05 * (1 + index % 97) * (1 + write), status >= 500, 10, 200 + index,
            )  # fmt: skip
        delta.delta_id = f"delta-{write}"
        for sink in (python, fast):
            sink.write(Batch(rollups=delta))
    for sink in (python, fast):
        sink.close()
    assert stored_rollups(tmp_path / "fast.db") == stored_rollups(tmp_path / "python.db")
    assert len(stored_rollups(tmp_path / "fast.db")) > 40
