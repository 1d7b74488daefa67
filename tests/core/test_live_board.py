"""The board of every other sender's latest live frame: newest wins, a frame
delivered twice or late changes nothing, gaps are counted, a silent sender's
gauges leave the sums and its counts stay, another host's seconds are moved
onto this clock, and nothing malformed gets in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aegis_mw.core import histogram
from aegis_mw.core.aggregates import HIST_BASE, SECOND
from aegis_mw.core.live_board import (
    DEAD_AFTER,
    FORGET_AFTER,
    MAX_FRAME_BYTES,
    Board,
    encode_frame,
    shifted,
)
from aegis_mw.core.live_share import SUMMED


class Clocks:
    """A monotonic and a wall clock that the test moves."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.mono, self.real = monotonic, wall

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.real

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.real += seconds

    @property
    def offset(self) -> float:
        return self.real - self.mono


def slot_row(second: int, requests: int, bucket: int = 100) -> list[Any]:
    fields = [0.0] * HIST_BASE
    fields[SECOND] = second
    fields[1] = requests  # REQUESTS
    fields[3] = 0.01 * requests  # DURATION_SUM
    fields[4] = fields[5] = 0.01  # DURATION_MIN, DURATION_MAX
    return [*fields, [bucket, requests]]


def data(rows: list[list[Any]], total: int = 0, in_flight: int = 0) -> dict[str, Any]:
    return {
        "slots": rows, "totals": [total] + [0] * (SUMMED - 1), "sessions": 0,
        "in_flight": in_flight, "websockets_active": 0, "routes": [], "latency": [],
    }  # fmt: skip


def frame(sender: str, seq: int, clocks: Clocks, payload: dict[str, Any], **kw: Any) -> bytes:
    return encode_frame(sender, seq, clocks.offset, clocks.real, payload, **kw)


def requests_in(board: Board) -> float:
    peers = board.peers()
    return sum(slot[1] for slot in peers.slots.values()) + peers.totals[0]


def test_the_newest_frame_of_each_sender_counts_once() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    assert board.offer(frame("a", 1, clocks, data([slot_row(now, 5)])), fresh=True) == "taken"
    assert board.offer(frame("b", 1, clocks, data([slot_row(now, 7)])), fresh=True) == "taken"
    assert requests_in(board) == 12
    # Its next frame replaces it (the same second, more requests): not added.
    assert board.offer(frame("a", 2, clocks, data([slot_row(now, 9)])), fresh=True) == "taken"
    assert requests_in(board) == 16
    # Delivered again, or an older one late: nothing changes.
    assert board.offer(frame("a", 2, clocks, data([slot_row(now, 9)])), fresh=True) == "stale"
    assert board.offer(frame("a", 1, clocks, data([slot_row(now, 5)])), fresh=False) == "stale"
    assert requests_in(board) == 16
    # Its own frames, echoed by the transport, are not the others'.
    assert board.offer(frame("me", 1, clocks, data([slot_row(now, 100)])), fresh=True) == "own"
    assert requests_in(board) == 16
    assert board.peers().slots[now][HIST_BASE + 100] == 16  # histograms add bucket by bucket


def test_a_gap_in_a_senders_sequence_is_counted_and_the_frame_taken() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    board.offer(frame("a", 1, clocks, data([slot_row(now, 1)])), fresh=True)
    assert board.offer(frame("a", 4, clocks, data([slot_row(now, 4)])), fresh=True) == "gap"
    assert board.gaps == 1
    assert requests_in(board) == 4  # the whole state: nothing missing
    # A resync's stored frames skip freely: not a gap.
    assert board.offer(frame("a", 9, clocks, data([slot_row(now, 9)])), fresh=False) == "taken"
    assert board.gaps == 1
    # Nor do the rows of a table, which keeps only each sender's latest.
    skipped = frame("a", 12, clocks, data([slot_row(now, 12)]))
    assert board.offer(skipped, fresh=True, sequenced=False) == "taken"
    assert board.gaps == 1


def test_a_silent_sender_keeps_its_counts_and_loses_its_gauges() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    board.offer(frame("a", 1, clocks, data([slot_row(now, 3)], in_flight=4)), fresh=True)
    board.offer(frame("b", 1, clocks, data([], in_flight=1)), fresh=True)
    assert board.peers().in_flight == 5
    assert board.live_senders() == 2
    clocks.advance(DEAD_AFTER / 2)
    board.offer(frame("b", 2, clocks, data([], in_flight=1)), fresh=True)
    clocks.advance(DEAD_AFTER / 2 + 0.5)
    assert board.peers().in_flight == 1  # a's frames stopped coming
    assert requests_in(board) == 3  # its requests stay
    assert board.live_senders() == 1
    # A closing frame takes the gauges out at once.
    board.offer(frame("b", 3, clocks, data([], in_flight=1), closed=True), fresh=True)
    assert board.peers().in_flight == 0
    clocks.advance(FORGET_AFTER + 1)
    assert board.forgotten() == ["a", "b"]
    assert requests_in(board) == 0


def test_a_stored_frame_counts_as_heard_when_it_was_sent() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    old = Clocks(clocks.mono - 60, clocks.real - 60)  # sent a minute ago
    board.offer(frame("gone", 7, old, data([], in_flight=2)), fresh=False)
    assert board.peers().in_flight == 0
    assert board.live_senders() == 0


def test_another_hosts_seconds_land_on_the_same_wall_clock_second() -> None:
    clocks = Clocks(monotonic=500.0)
    board = Board("me", clocks.monotonic, clocks.wall)
    # Booted 20 000 s earlier than this host: its monotonic clock is ahead.
    other = Clocks(monotonic=20_500.4, wall=clocks.real)
    board.offer(
        frame("far", 1, other, data([slot_row(20_498, 2), slot_row(20_500, 3)])), fresh=True
    )
    peers = board.peers()
    assert {second: slot[1] for second, slot in peers.slots.items()} == {498: 2, 500: 3}
    # A second of it from before this host booted goes to the totals.
    rows = [slot_row(19_990, 1), slot_row(20_500, 6)]
    board.offer(frame("far", 2, other, data(rows)), fresh=True)
    peers = board.peers()
    assert {second: slot[1] for second, slot in peers.slots.items()} == {500: 6}
    assert peers.totals[0] == 1
    moved = shifted(data([slot_row(3, 2), slot_row(10, 5)]), -5)
    assert moved["slots"] == [slot_row(5, 5)] and moved["totals"][0] == 2


def changed(**fields: Any) -> bytes:
    """A well-formed frame but for ``fields`` of its header."""
    header = {"v": 1, "sender": "a", "seq": 1, "offset": 0, "sent": 0, "closed": False}
    return json.dumps({**header, **fields}).encode() + b"\n" + json.dumps(data([])).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe\n{}",
        b"[]\n{}",
        changed()[: changed().index(b"\n")],  # no publication at all
        changed(v=2),
        changed(sender=""),
        changed(sender="x" * 301),
        changed(seq=-1),
        changed(seq=True),
        changed(seq=1.5),
        changed(offset=float("nan")),
        changed(sent=float("inf")),
        changed(closed="no"),
    ],
)
def test_what_is_not_a_frame_is_refused(raw: bytes) -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    assert board.offer(raw, fresh=True) == "refused"
    assert board.refused == 1
    assert board.known_senders() == 0


@pytest.mark.parametrize(
    "publication",
    [b"", b"[]", b"not json", b'{"slots": [], "totals": [0]}', b'{"slots": {}, "totals": []}'],
)
def test_a_publication_that_is_not_one_is_left_out_when_read(publication: bytes) -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    board.offer(frame("good", 1, clocks, data([slot_row(now, 2)])), fresh=True)
    raw = changed(sender="bad")
    assert board.offer(raw[: raw.index(b"\n") + 1] + publication, fresh=True) == "taken"
    assert board.refused == 0  # a header is all a frame's arrival reads
    assert requests_in(board) == 2
    # Another frame: the sum is made again, the damaged one read again.
    board.offer(frame("good", 2, clocks, data([slot_row(now, 3)])), fresh=True)
    assert requests_in(board) == 3
    assert board.refused == 1  # counted once, however often it is read


def test_hostile_frames_never_fail_a_read() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    board.offer(frame("good", 1, clocks, data([slot_row(now, 2)])), fresh=True)
    deep = b"[" * 100_000 + b"]" * 100_000  # past the JSON parser's depth
    assert board.offer(deep + b"\n{}", fresh=True) == "refused"
    raw = changed(sender="deep")
    assert board.offer(raw[: raw.index(b"\n") + 1] + deep, fresh=True) == "taken"
    # Totals that are not numbers, from a host whose clock needs its seconds moved.
    other = Clocks(monotonic=clocks.mono + 5000, wall=clocks.real)  # its slot lands before 0
    strange = data([slot_row(now + 50, 1)])
    strange["totals"] = ["x"] * SUMMED
    board.offer(frame("strange", 1, other, strange), fresh=True)
    assert requests_in(board) == 2
    assert board.refused == 3
    # Too large, and too many senders: refused, memory bounded.
    huge = frame("huge", 1, clocks, data([])) + b" " * MAX_FRAME_BYTES
    assert board.offer(huge, fresh=True) == "refused"


def test_the_senders_held_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aegis_mw.core import live_board

    monkeypatch.setattr(live_board, "MAX_SENDERS", 3)
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    results = [board.offer(frame(f"s{n}", 1, clocks, data([])), fresh=True) for n in range(4)]
    assert results == ["taken", "taken", "taken", "refused"]  # all three live: none gives way
    clocks.advance(1)
    assert board.offer(frame("s0", 2, clocks, data([])), fresh=True) == "taken"  # known: kept
    clocks.advance(DEAD_AFTER + 1)  # all silent now
    board.offer(frame("s1", 2, clocks, data([])), fresh=True)  # s1 speaks again
    # A new sender takes the place of the one silent longest (s2), not a live one.
    assert board.offer(frame("s9", 1, clocks, data([])), fresh=True) == "taken"
    assert sorted(board._held) == ["s0", "s1", "s9"]


def test_the_bytes_held_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aegis_mw.core import live_board

    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    one = frame("a", 1, clocks, data([slot_row(int(clocks.mono), 1)]))
    size = len(one) - one.index(b"\n") - 1
    monkeypatch.setattr(live_board, "MAX_HELD_BYTES", 2 * size)
    assert board.offer(one, fresh=True) == "taken"
    assert (
        board.offer(frame("b", 1, clocks, data([slot_row(int(clocks.mono), 1)])), fresh=True)
        == "taken"
    )
    assert (
        board.offer(frame("c", 1, clocks, data([slot_row(int(clocks.mono), 1)])), fresh=True)
        == "refused"
    )
    clocks.advance(DEAD_AFTER + 1)
    assert (
        board.offer(frame("c", 1, clocks, data([slot_row(int(clocks.mono), 1)])), fresh=True)
        == "taken"
    )
    assert board.known_senders() == 2 and board._bytes <= 2 * size


def test_a_frame_whose_figures_are_damaged_is_left_out_of_the_sum() -> None:
    clocks = Clocks()
    board = Board("me", clocks.monotonic, clocks.wall)
    now = int(clocks.mono)
    board.offer(frame("good", 1, clocks, data([slot_row(now, 2)])), fresh=True)
    damaged = data([slot_row(now, 5)])
    damaged["slots"][0][HIST_BASE] = [0, 2**60]  # beyond any count
    board.offer(frame("bad", 1, clocks, damaged), fresh=True)
    assert requests_in(board) == 2
    assert board.refused == 1
    assert histogram.COUNT > 100
