"""The dense histogram layout of stored rollups: encoding, merging and adding
agree with plain ``{index: count}`` arithmetic for any input."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from aegis_mw.core import histogram
from aegis_mw.core.gil_slices import Slices
from aegis_mw.core.rollup import (
    RollupDelta,
    add_dense,
    decode_histogram,
    dense,
    encode_histogram,
    encode_histogram_array,
    expand,
    merge_dense,
    merge_histogram_text,
    parameter_rows,
)

counts = st.dictionaries(st.integers(0, histogram.COUNT - 1), st.integers(1, 10**12), max_size=40)


def as_dict(stored: list[int]) -> dict[int, int]:
    """The ``{index: count}`` a dense list stands for (zero counts left out)."""
    if not stored:
        return {}
    return {stored[0] + k: c for k, c in enumerate(stored[1:]) if c}


def added(*parts: dict[int, int]) -> dict[int, int]:
    total: dict[int, int] = {}
    for part in parts:
        for index, count in part.items():
            total[index] = total.get(index, 0) + count
    return total


def test_dense_layout_examples() -> None:
    assert dense({}) == []
    assert dense({7: 3}) == [7, 3]
    assert dense({9: 1, 7: 3}) == [7, 3, 0, 1]
    assert encode_histogram({9: 1, 7: 3}) == "[7,3,0,1]"
    assert decode_histogram("[7,3,0,1]") == [7, 3, 0, 1]
    assert decode_histogram([7, 3]) == [7, 3]
    assert decode_histogram(None) == decode_histogram("") == decode_histogram("[]") == []
    # Version 2's form, which a process not yet upgraded may still write.
    assert decode_histogram('{"9": 1, "7": 3}') == [7, 3, 0, 1]
    assert decode_histogram({"9": 1}) == [9, 1]
    assert decode_histogram("{}") == []
    assert json.loads(merge_histogram_text('{"9": 1}', "[7,3]")) == [7, 3, 0, 1]


@given(counts)
def test_dense_round_trips_through_text(value: dict[int, int]) -> None:
    stored = dense(value)
    assert as_dict(stored) == value
    if stored:  # no zeros at either end: nothing stored beyond what is held
        assert stored[1] and stored[-1]
    assert decode_histogram(encode_histogram(value)) == stored
    # The text is what json.dumps writes, byte for byte (rows stored before
    # it was written by hand compare equal).
    assert encode_histogram(value) == json.dumps(stored, separators=(",", ":"))


@given(counts, counts)
def test_merge_dense_adds_like_dicts(left: dict[int, int], right: dict[int, int]) -> None:
    merged = merge_dense(dense(left), dense(right))
    assert merged == dense(added(left, right))
    text = merge_histogram_text(encode_histogram(left), encode_histogram(right))
    assert json.loads(text) == merged


@given(st.lists(counts, max_size=6))
def test_add_dense_into_a_full_histogram(parts: list[dict[int, int]]) -> None:
    total = [0] * histogram.COUNT
    for part in parts:
        add_dense(total, dense(part))
    assert len(total) == histogram.COUNT
    assert {i: c for i, c in enumerate(total) if c} == added(*parts)


def test_add_dense_ignores_indexes_outside_the_histogram() -> None:
    """A row from another version holding unknown buckets adds what fits and
    never grows or breaks the running total."""
    total = [0] * 10
    add_dense(total, [8, 1, 2, 3, 4])  # buckets 8..11; 10 and 11 do not exist here
    add_dense(total, [-2, 5, 6, 7])  # buckets -2..0
    assert total == [7, 0, 0, 0, 0, 0, 0, 0, 1, 2]


def test_array_text_for_postgresql() -> None:
    assert encode_histogram_array({}) == "{}"
    assert encode_histogram_array({9: 1, 7: 3}) == "{7,3,0,1}"


def test_rows_made_in_slices_are_the_rows_made_at_once() -> None:
    """A writer pauses between cells and between rows when its slice is spent
    (here after every one); what it writes is the same."""
    delta = RollupDelta()
    for index in range(300):
        delta.add(1.7e9 + index, f"/r{index % 7}", "GET", 200 + index % 3 * 100, 1.0 + index,
                  index % 5 == 0, index, 2 * index)  # fmt: skip
    at_once = [list(parameter_rows(cells)) for cells in expand(delta)]
    slices = Slices(budget=0.0)
    sliced = [list(parameter_rows(cells, slices=slices)) for cells in expand(delta, slices)]
    assert sliced == at_once
    assert slices.pauses == len(delta.cells) + sum(map(len, at_once))
