"""The latest live figures of every process of the app, as a transport
between hosts brings them (:mod:`.live_link`), and their sum.

Every process of the app sends a *frame* about once a second: its whole
live publication (:func:`.live_share.publication`: the slots of the last
minute, its totals since start, its figures by route, its gauges), a
sequence number that rises with each frame, and its clock offset (wall
clock minus monotonic clock). A frame replaces its sender's previous one,
so a frame delivered twice, late or out of order changes nothing (the
sequence number keeps the newest), and a frame that never arrived is made
good by the next one, which holds the same seconds. A gap in the sequence
is counted, and the link asks the transport for every sender's stored
frame at once (a resync) rather than wait for the next.

Seconds: a process's slots are keyed by its monotonic clock, which another
host counts from its own boot. A sender's second ``s`` is the reader's
second ``s + round(offset_sender - offset_reader)``: the same wall-clock
second, to within the hosts' clock agreement (NTP keeps it far below one).

A sender is *live* while frames keep coming (:data:`DEAD_AFTER`): its
in-flight requests and open WebSockets count only then. Its counts keep
counting after it stopped (its last minute in the window, the rest in the
totals) until it has been silent :data:`FORGET_AFTER`, when the link
removes it from the transport too, so every reader shows the same.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .aggregates import REQUESTS, SECOND
from .live_share import SUMMED, Peers, _number, parse_row

#: Frame layout version; a frame of another is left out (and counted).
FRAME_VERSION = 1
#: Seconds without a frame after which a sender's gauges leave the sums:
#: a few missed frames (one is sent every second).
DEAD_AFTER = 5.0
#: Seconds of silence after which a sender is forgotten (its figures leave
#: the totals; its stored frame is removed from the transport).
FORGET_AFTER = 3600.0
#: The longest sender name taken (``host:pid:random``).
MAX_SENDER = 300
#: The largest frame taken: a thousand routes make 67 KiB; anything near
#: this is damage, or someone else writing to the transport.
MAX_FRAME_BYTES = 8 * 1024 * 1024
#: The most senders held at once, and the most bytes of their frames: far
#: more than an app's processes send, a bound for memory whatever reaches the
#: transport. A new sender beyond them takes the place of the one silent (or
#: closed) longest; while every one held is live, it is refused.
MAX_SENDERS = 10_000
MAX_HELD_BYTES = 64 * 1024 * 1024


def encode_frame(sender: str, seq: int, offset: float, sent: float, data: dict[str, Any], *,
                 closed: bool = False) -> bytes:  # fmt: skip
    """One frame, as the transports carry it: a line of header, then the
    publication (a reader parses the header of every frame as it comes, and
    a publication only when a live view asks: most seconds, nobody does)."""
    header = {
        "v": FRAME_VERSION, "sender": sender, "seq": seq, "offset": offset, "sent": sent,
        "closed": closed,
    }  # fmt: skip
    return b"%s\n%s" % (_dumps(header), _dumps(data))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


@dataclass
class Held:
    """A sender's latest frame."""

    seq: int
    #: When it was heard, by the reader's monotonic clock.
    heard: float
    offset: float
    closed: bool
    #: The publication as it came, parsed when first needed (then ``data``,
    #: or ``damaged``).
    raw: bytes
    data: dict[str, Any] | None = None
    damaged: bool = False

    def publication(self) -> dict[str, Any] | None:
        """The publication, parsed once; None for one that is not one (JSON
        nested past the parser's depth too: never an error in a live read)."""
        if self.data is None and not self.damaged:
            try:
                data = json.loads(self.raw)
            except Exception:  # hostile input: RecursionError, MemoryError
                return None
            if _publication(data):
                self.data = data
        return self.data


class Board:
    """Every other sender's latest frame (thread-safe: the link offers, live
    reads take :meth:`peers`)."""

    def __init__(self, own: str, monotonic: Callable[[], float], wall: Callable[[], float]) -> None:
        #: This process's sender name: its own frames, echoed back, are skipped.
        self.own = own
        self.monotonic = monotonic
        self.wall = wall
        self._held: dict[str, Held] = {}
        self._bytes = 0  # of the publications held
        self._lock = threading.Lock()
        self._changes = 0
        self._cached: tuple[Any, Peers | None] = (None, None)
        #: Frames taken, newer than their sender's last.
        self.taken = 0
        #: Frames left out: damaged, of another version, or unreadable.
        self.refused = 0
        #: Frames whose sequence number skipped one or more.
        self.gaps = 0

    def offer(self, raw: bytes | str, *, fresh: bool, sequenced: bool = True) -> str:
        """Take a frame: ``fresh`` when it was pushed as it was sent (a
        stored one, read at a resync, counts as heard when it was sent);
        ``sequenced`` when the transport pushes every frame (a skipped
        sequence number is then a frame lost).
        Returns "taken", "gap" (taken, after a missing one), "stale" (not
        newer than the one held), "own" or "refused"."""
        frame, raw_data = _parse(raw)
        if frame is None:
            with self._lock:
                self.refused += 1
            return "refused"
        sender, seq = frame["sender"], frame["seq"]
        if sender == self.own:
            return "own"
        now = self.monotonic()
        heard = now if fresh else now - max(0.0, self.wall() - frame["sent"])
        with self._lock:
            held = self._held.get(sender)
            if held is not None and seq <= held.seq:
                if seq == held.seq and heard > held.heard:
                    held.heard = heard  # the same frame again: still heard from
                return "stale"
            # A transport that keeps only each sender's latest frame (a table
            # row) skips frames by design: a gap only where every frame is pushed.
            gap = held is not None and seq > held.seq + 1 and fresh and sequenced
            if not self._room(sender, len(raw_data) - (len(held.raw) if held else 0), now):
                self.refused += 1
                return "refused"
            self._held[sender] = Held(seq, heard, frame["offset"], frame["closed"], raw_data)
            self._bytes += len(raw_data) - (len(held.raw) if held else 0)
            self._changes += 1
            self.taken += 1
            if gap:
                self.gaps += 1
        return "gap" if gap else "taken"

    def _room(self, sender: str, more: int, now: float) -> bool:
        """Under the lock: room for ``sender``'s ``more`` bytes (and for it,
        when new), made by forgetting the other senders silent longest that
        no longer count as live."""
        new = sender not in self._held
        while (new and len(self._held) >= MAX_SENDERS) or self._bytes + more > MAX_HELD_BYTES:
            gone = [
                (held.heard, name)
                for name, held in self._held.items()
                if name != sender and not _live(held, now)
            ]
            if not gone:
                return False
            name = min(gone)[1]
            self._bytes -= len(self._held.pop(name).raw)
            self._changes += 1
        return True

    def live_senders(self) -> int:
        """Senders heard from lately that have not closed."""
        now = self.monotonic()
        with self._lock:
            return sum(1 for held in self._held.values() if _live(held, now))

    def known_senders(self) -> int:
        with self._lock:
            return len(self._held)

    def forgotten(self) -> list[str]:
        """Remove the senders silent for :data:`FORGET_AFTER`, and name them."""
        now = self.monotonic()
        with self._lock:
            gone = [name for name, held in self._held.items() if now - held.heard > FORGET_AFTER]
            for name in gone:
                self._bytes -= len(self._held.pop(name).raw)
            if gone:
                self._changes += 1
        return gone

    def reset_own(self, own: str) -> None:
        """A forked child's name: the parent, from now on, is another sender.
        A new lock: the parent's link thread may have held the old one at the
        fork, and nobody in the child would ever release it."""
        self._lock = threading.Lock()
        self.own = own
        self._cached = (None, None)

    def peers(self) -> Peers:
        """Every other sender's figures added up, its seconds moved onto this
        process's clock; computed again only when a frame came or a sender's
        liveness changed (several sections of one stream frame ask)."""
        now = self.monotonic()
        mine = self.wall() - now
        with self._lock:
            held = list(self._held.values())
            live = tuple(_live(one, now) for one in held)
            key = (self._changes, live, round(mine))
            cached_key, cached = self._cached
            if cached is not None and cached_key == key:
                return cached
        peers = Peers()
        for one, is_live in zip(held, live, strict=True):
            if not _added(peers, one, round(one.offset - mine), is_live):
                with self._lock:
                    if not one.damaged:  # counted once, whoever reads it first
                        one.damaged = True
                        self.refused += 1
        with self._lock:
            if self._changes == key[0]:  # not replaced meanwhile by a newer sum
                self._cached = (key, peers)
        return peers


def _added(peers: Peers, held: Held, shift: int, live: bool) -> bool:
    """Add a sender's publication; False for one that is not well-formed
    (checked whole before anything is added, see ``Peers.add``)."""
    if held.damaged:
        return True  # counted already; left out
    publication = held.publication()
    if publication is None:
        return False
    try:
        return peers.add(shifted(publication, shift), live=live)
    except Exception:  # whatever another process wrote, never a failed read
        return False


def shifted(data: dict[str, Any], shift: int) -> dict[str, Any]:
    """A publication with its slots' seconds moved by ``shift``; a slot that
    would land before this clock's start counts in the totals instead."""
    if not shift or not all(map(_number, data["totals"])):
        return data  # a publication with damaged totals is Peers.add's to refuse
    slots, totals = [], list(data["totals"])
    for row in data["slots"]:
        parsed = parse_row(row)
        if parsed is None:
            return data  # left for Peers.add to refuse whole
        second = parsed[0][SECOND] + shift
        if second < 0:
            for index in range(SUMMED):
                totals[index] += parsed[0][REQUESTS + index]
        else:
            slots.append([second, *row[1:]])
    return {**data, "slots": slots, "totals": totals}


def _live(held: Held, now: float) -> bool:
    return not held.closed and now - held.heard <= DEAD_AFTER


def _clock_value(value: Any) -> bool:
    """A finite clock reading (JSON may say NaN or Infinity)."""
    return type(value) in (int, float) and math.isfinite(value) and abs(value) < 1e12


def _parse(raw: bytes | str) -> tuple[dict[str, Any] | None, bytes]:
    """A frame's header, checked, and its publication's bytes; (None, b"")
    for anything that is not a frame (the publication is checked when it is
    first read)."""
    try:
        if isinstance(raw, str):
            raw = raw.encode()
        if len(raw) > MAX_FRAME_BYTES:
            return None, b""
        head, newline, data = raw.partition(b"\n")
        frame = json.loads(head) if newline else None
    except Exception:  # hostile input: RecursionError as well as ValueError
        return None, b""
    if not (
        isinstance(frame, dict)
        and frame.get("v") == FRAME_VERSION
        and isinstance(frame.get("sender"), str)
        and 0 < len(frame["sender"]) <= MAX_SENDER
        and type(frame.get("seq")) is int
        and frame["seq"] >= 0
        and _clock_value(frame.get("offset"))
        and _clock_value(frame.get("sent"))
        and isinstance(frame.get("closed"), bool)
    ):
        return None, b""
    return frame, data


def _publication(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("slots"), list)
        and isinstance(data.get("totals"), list)
        and len(data["totals"]) == SUMMED
    )
