"""Turning inbox items into stored records, in the flusher thread.

Everything the request path deferred happens here: request ids, wall-clock
timestamps, TTFB in milliseconds, method folding, the route cap, path
truncation, forwarded-address parsing and sampling; and, once for every sink,
the repairs that make each value storable (see :mod:`.storable`).
"""

from __future__ import annotations

import os
import random
from array import array
from types import ModuleType
from typing import Any

from . import histogram
from .client_address import ClientAddressResolver
from .clock import Clock
from .items import InboxItem, PendingSession, python_run_end
from .labels import STANDARD_METHODS, RouteCap
from .pending_sums import loops_fit, settle_or_drop, settled
from .record import OTHER_METHOD, UNMATCHED_ROUTE, RequestRecord, WebSocketSession
from .rollup import RollupDelta
from .storable import (
    CLIENT_IP_LIMIT,
    ROUTE_LIMIT,
    client_field,
    count,
    finite,
    int32,
    text_field,
    url_field,
)
from .trace_context import trace_ids

#: Statuses and byte counts below this take the fast path (small ints compare
#: fast); others are checked against the storable ranges in _repair_http.
SMALL = 2**30
#: How many clean client addresses are remembered before starting afresh.
CLEAN_CLIENTS = 4096
#: The standard methods, each to itself: a lookup folds the rest into _OTHER
#: and stores a plain str even for a str subclass equal to one of them.
_METHODS = {method: method for method in STANDARD_METHODS}
#: What the compiled loop needs of :mod:`.histogram` to place a duration, and
#: of the client checks to take a client address not seen before.
_COMPILED_CONSTANTS = (*histogram.PLACEMENT, CLIENT_IP_LIMIT, CLEAN_CLIENTS)
#: Sequence numbers and limits past this go through the Python loop (the
#: compiled one holds them in 64 bits).
_COMPILED_SEQUENCE_LIMIT = 2**62


def _repair_http(
    path: object,
    status: object,
    error: object,
    request_bytes: object,
    response_bytes: object,
    path_limit: int,
    error_limit: int,
) -> tuple[str, int, str, int, int]:
    """Path, status, error and byte counts as every sink can store them (see
    :mod:`.storable`); raises for an item that has no faithful repair. The
    method needs none: any text but the standard nine becomes ``_OTHER``.

    An item from a raw scope, an odd app or a third-party caller of
    Recorder.offer must not become a record that fails every write after it.
    """
    return (
        url_field(path, path_limit),
        int32(status),
        text_field(error, error_limit),
        count(request_bytes),
        count(response_bytes),
    )


def new_id_prefix() -> str:
    """64 random bits: ids stay unique across processes, restarts and forks."""
    return os.urandom(8).hex()


class Finalizer:
    """Builds records from inbox items and decides which ones the log keeps."""

    def __init__(
        self,
        *,
        clock: Clock,
        resolver: ClientAddressResolver,
        routes: RouteCap,
        max_path_length: int,
        sample_rate: float,
        slow_threshold_ms: float,
        max_error_length: int = 1024,
        compiled: ModuleType | None = None,
        sample_later: bool = False,
    ) -> None:
        self.clock = clock
        self.resolver = resolver
        self.routes = routes
        self.max_path_length = max_path_length
        self.max_error_length = max_error_length
        self.sample_rate = sample_rate
        #: Whether :meth:`finalize` builds every request's record and
        #: :meth:`thin` samples them afterwards: for a sink that counts the
        #: records it is given (the OTLP sink's request metrics), which
        #: then counts every request while the log keeps its sample.
        self.sample_later = sample_later and sample_rate < 1.0
        self.slow_threshold_ms = slow_threshold_ms
        self.id_prefix = new_id_prefix()
        self.sequence = 0
        self.sampled_out = 0
        #: Items that could not be turned into records (skipped, neighbours kept).
        self.invalid = 0
        # Every finished HTTP request since the last take, sampled out or not
        # (read it as ``rollups``).
        self._rollups = RollupDelta()
        self._random = random.Random()
        # Routes known to be storable as they are and admitted by the route
        # cap as themselves: one set lookup per record instead of the checks.
        # At most max_routes of them (the cap's own bound).
        self._clean_routes: set[str] = set()
        # Client addresses seen storable as they are (emptied at CLEAN_CLIENTS).
        self._clean_clients: set[str] = set()
        #: The compiled loop (``_hotpath.finalize_items``), or None: it takes
        #: the clean compiled items and leaves the rest to the Python loop.
        if compiled is not None and not loops_fit(compiled):
            compiled = None  # a module built for other loops (an older build)
        self._compiled = None if compiled is None else compiled.finalize_items
        self._item_type: type | None = None if compiled is None else compiled.HttpItem
        #: The compiled loop's sums for existing rollup cells not yet in them
        #: (``_hotpath.FoldPending``): settled before the rollups are read or
        #: handed over and before the Python loop adds to them.
        self._pending: Any = None if compiled is None else compiled.FoldPending()
        if compiled is not None:
            # Records freed after the sink's write are kept for the loop to
            # reuse, so thousands waiting for the sink do not set off the
            # garbage collector (see _hotpath_c/free_lists.c).
            compiled.reuse_records(RequestRecord)
        # Its progress: index, sequence, sampled out, rolled up, invalid.
        self._progress = array("q", bytes(8 * 5))

    #: Items of the last ``finalize`` call that the Python loop took (all of
    #: them without the compiled loop): the flusher's steps stay short then.
    python_items = 0

    @property
    def compiled(self) -> bool:
        """Whether the compiled loop takes the clean compiled items."""
        return self._compiled is not None

    @property
    def rollups(self) -> RollupDelta:
        """The rollups folded since the last take, whole."""
        self._settle()
        return self._rollups

    @rollups.setter
    def rollups(self, delta: RollupDelta) -> None:
        self._settle()
        self._rollups = delta

    def _settle(self) -> None:
        if self._pending is not None:
            settle_or_drop(self, "rollups")

    def take_rollups(self) -> RollupDelta:
        """The rollups folded since the last call, handed over whole."""
        self._settle()
        delta, self._rollups = self._rollups, RollupDelta()
        return delta

    def reset_after_fork(self) -> None:
        # A new prefix: the child numbers its records from where the parent was.
        self.id_prefix = new_id_prefix()
        self._random = random.Random()
        # Counters describe the child only; the routes it already knows stay.
        self.sampled_out = self.invalid = self.routes.overflowed = 0
        self._rollups = RollupDelta()  # the parent stores what it folded
        if self._pending is not None:  # with its pending sums
            self._pending = type(self._pending)()

    def _route(self, route: object) -> str:
        """A route not seen clean before: repaired, then through the route cap."""
        text = url_field(UNMATCHED_ROUTE if route is None else route, ROUTE_LIMIT)
        admitted = self.routes.admit(text)
        if admitted is text and type(route) is str and route == text:
            self._clean_routes.add(text)
        return admitted

    def _client_text(self, client_ip: object) -> str | None:
        """A client address not seen clean recently: checked, bounded, repaired."""
        text = client_field(client_ip)
        if text is not None and text is client_ip:
            clean = self._clean_clients
            if len(clean) >= CLEAN_CLIENTS:
                clean.clear()
            clean.add(text)
        return text

    def _client_ip(self, client: tuple[str, int] | None, forwarded: str | None) -> str | None:
        peer = client[0] if client else None
        return peer if forwarded is None else self.resolver.resolve(peer, forwarded)

    def finalize(self, items: list[InboxItem]) -> list[RequestRecord | WebSocketSession]:
        """Records for the items the log keeps; errors and requests slower than
        ``slow_threshold_ms`` always stay, the rest at ``sample_rate`` (with
        ``sample_later``, records for every item: :meth:`thin` samples them).
        An item that cannot become a storable record is counted in ``invalid``.
        """
        # The request path stamps only the monotonic clock; one pair of
        # readings here turns those into wall time. Items are at most a few
        # seconds old, so clock drift in between is negligible.
        wall_offset = self.clock.wall() - self.clock.monotonic()
        compiled = self._compiled
        if compiled is None or not self._compiled_applies(items):
            self.python_items = len(items)
            if self._pending is not None and not settled(self, "rollups"):
                self.invalid += len(items)  # out of memory: as the Python loop counts it
                return []
            return self._finalize(items, wall_offset)
        out: list[RequestRecord | WebSocketSession] = []
        self.python_items = 0
        progress = self._progress
        progress[0] = 0
        progress[1] = self.sequence
        progress[2] = progress[3] = progress[4] = 0
        rate = 1.0 if self.sample_later else self.sample_rate
        total = len(items)
        cells = self._rollups.cells
        try:
            while True:
                compiled(
                    items, out, progress, wall_offset, self.id_prefix, self._rollups.cells,
                    RequestRecord, _METHODS, self._clean_routes, self._clean_clients,
                    self.max_path_length, self.max_error_length,
                    rate if rate < 1.0 else None, float(self.slow_threshold_ms),
                    self._random.random, _COMPILED_CONSTANTS, self._pending,
                )  # fmt: skip
                index = progress[0]
                if index >= total:
                    break
                # Items the compiled loop leaves to this one: one with odd
                # values, a route not seen clean yet, a client address to
                # repair or a forwarded header, and with it every following
                # item that is not a compiled one (a pure-Python path's list,
                # a session).
                end = python_run_end(items, index, self._item_type)
                self.python_items += end - index
                if not settled(self, "rollups"):
                    # Out of memory: the Python loop may not add to the cells
                    # before their pending sums are in; the run is counted
                    # invalid, as that loop counts an item it cannot finish.
                    progress[4] += end - index
                    progress[0] = end
                    continue
                self.sequence = progress[1]
                out.extend(self._finalize(items[index:end], wall_offset))
                progress[0] = end
                progress[1] = self.sequence
        finally:
            self.sequence = progress[1]
            self.sampled_out += progress[2]
            self._rollups.requests += progress[3]
            self.invalid += progress[4]
            if self._rollups.cells is not cells:
                # The rollups were taken or replaced during the call (by the
                # sampler: Python code): what the rest of it added went to
                # the cells it began with, as the Python loop's adds do, and
                # are written there now, not at some later read (out of
                # memory, at the next one).
                settled(self, "rollups")
        return out

    def thin(self, records: list[RequestRecord | WebSocketSession]) -> list[Any]:
        """The records the log keeps, of those :meth:`finalize` built for
        every request (``sample_later``): the same choice it makes otherwise
        (errors and requests slower than ``slow_threshold_ms`` always, the
        rest at ``sample_rate``; sessions always), counted in ``sampled_out``.
        """
        rate = self.sample_rate
        slow = self.slow_threshold_ms
        chance = self._random.random
        kept = [
            record
            for record in records
            if type(record) is not RequestRecord
            or record.status >= 500
            or record.error
            or record.duration_ms >= slow
            or chance() < rate
        ]
        self.sampled_out += len(records) - len(kept)
        return kept

    def _compiled_applies(self, items: list[InboxItem]) -> bool:
        """Whether the compiled loop may take these items: a list, numbers it
        holds in 64 bits, and a slow threshold it compares as Python does."""
        slow = self.slow_threshold_ms
        return (
            type(items) is list
            and self.sequence < _COMPILED_SEQUENCE_LIMIT
            and type(self.max_path_length) is int
            and 0 <= self.max_path_length < _COMPILED_SEQUENCE_LIMIT
            and type(self.max_error_length) is int
            and 0 <= self.max_error_length < _COMPILED_SEQUENCE_LIMIT
            and (type(slow) is float or (type(slow) is int and -(2**53) <= slow <= 2**53))
        )

    def _finalize(
        self, items: list[InboxItem], wall_offset: float
    ) -> list[RequestRecord | WebSocketSession]:
        """The reference loop: every item, whatever its values."""
        limit = self.max_path_length
        error_limit = self.max_error_length
        clean_routes = self._clean_routes
        methods = _METHODS.get
        small = SMALL
        clean_clients = self._clean_clients
        sample = self.sample_rate < 1.0 and not self.sample_later
        rate = self.sample_rate
        slow = self.slow_threshold_ms
        chance = self._random.random
        roll = self.rollups.add
        prefix = self.id_prefix
        sequence = self.sequence
        make = tuple.__new__  # skips the NamedTuple's Python-level __new__
        out: list[RequestRecord | WebSocketSession] = []
        append = out.append
        for item in items:
            try:
                if not isinstance(item, PendingSession):  # a list, or the compiled HttpItem
                    (method, route, path, status, start, ttfb, end, request_bytes, response_bytes,
                     client, forwarded, error, _disconnected, trace) = item  # fmt: skip
                    duration_ms = (end - start) * 1000.0
                    # One pass of cheap checks; the repairs run only for the
                    # rare value that fails one (see storable).
                    if not (
                        type(path) is str and type(status) is int and type(error) is str
                        and type(request_bytes) is int and type(response_bytes) is int
                        and path.isprintable() and len(path) <= limit
                        and (not error or (error.isprintable() and len(error) <= error_limit))
                        # Status and counts all in [0, SMALL) exactly when their
                        # OR is (a power of two): one comparison of small ints. The
                        # storable ranges are wider; _repair_http checks those.
                        and 0 <= status | request_bytes | response_bytes < small
                    ):  # fmt: skip
                        path, status, error, request_bytes, response_bytes = _repair_http(
                            path, status, error, request_bytes, response_bytes,
                            limit, error_limit,
                        )  # fmt: skip
                    if not (type(route) is str and route in clean_routes):
                        route = self._route(route)
                    ttfb_ms = None if ttfb is None else (ttfb - start) * 1000.0
                    # NaN and the infinities are the only floats x with x - x != 0;
                    # a finite duration means finite start and end times.
                    if duration_ms - duration_ms != 0.0 or (
                        ttfb_ms is not None and ttfb_ms - ttfb_ms != 0.0
                    ):
                        raise ValueError("a time is not finite")
                    folded = methods(method)  # the canonical str, or None
                    if folded is None:
                        if not isinstance(method, str):
                            raise TypeError("malformed inbox item")
                        folded = OTHER_METHOD
                    method = folded
                    # A server sends no body for HEAD, whatever the app passed it.
                    if method == "HEAD":
                        response_bytes = 0
                    client_ip = (
                        client[0] if client and forwarded is None
                        else self._client_ip(client, forwarded)
                    )  # fmt: skip
                    if client_ip is not None and client_ip not in clean_clients:
                        client_ip = self._client_text(client_ip)
                    # Rollups count every request: sampling thins the log only.
                    roll(start + wall_offset, route, method, status, duration_ms,
                         status >= 500 or bool(error), request_bytes, response_bytes)  # fmt: skip
                    if (
                        sample
                        and not (status >= 500 or error or duration_ms >= slow)
                        and chance() >= rate
                    ):
                        self.sampled_out += 1
                        continue
                    trace_id, span_id = (None, None) if trace is None else trace_ids(trace)
                    record: RequestRecord | WebSocketSession = make(RequestRecord, (
                        f"{prefix}{sequence + 1:016x}", start + wall_offset, method, route,
                        path, status, duration_ms, ttfb_ms, request_bytes, response_bytes,
                        client_ip, error, trace_id, span_id,
                    ))  # fmt: skip
                else:
                    record = self._session(item, f"{prefix}{sequence + 1:016x}", wall_offset)
            except Exception:
                self.invalid += 1
                continue
            sequence += 1
            append(record)
        self.sequence = sequence
        return out

    def _session(
        self, item: PendingSession, session_id: str, wall_offset: float
    ) -> WebSocketSession:
        """A session record, every field checked and repaired (sessions are rare)."""
        start = finite(item.start)
        trace_id, span_id = (None, None) if item.trace is None else trace_ids(item.trace)
        return WebSocketSession(
            session_id,
            start + wall_offset,
            self._route(item.route),
            url_field(item.path, self.max_path_length),
            finite((item.end - start) * 1000.0),
            count(item.messages_in),
            count(item.messages_out),
            None if item.close_code is None else int32(item.close_code),
            bool(item.accepted),
            client_field(self._client_ip(item.client, item.forwarded)),
            text_field(item.error, self.max_error_length),
            trace_id,
            span_id,
        )
