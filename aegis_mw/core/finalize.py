"""Turning inbox items into stored records, in the flusher thread.

Everything the request path deferred happens here: request ids, wall-clock
timestamps, TTFB in milliseconds, method folding, the route cap, path
truncation, forwarded-address parsing and sampling.
"""

from __future__ import annotations

import os
import random

from .client_address import ClientAddressResolver
from .clock import Clock
from .items import InboxItem, PendingSession
from .labels import STANDARD_METHODS, RouteCap
from .record import OTHER_METHOD, UNMATCHED_ROUTE, RequestRecord, WebSocketSession
from .rollup import RollupDelta


def _coerce(
    method: object,
    route: object,
    path: object,
    status: object,
    error: object,
    request_bytes: object,
    response_bytes: object,
) -> tuple[str, int]:
    """Route and status as plain ``str``/``int`` (an ``HTTPStatus`` is an int, a
    reader may give a str subclass or None); anything else is malformed.

    A bad item from a third-party caller of Recorder.offer must not become a
    record that fails every write after it.
    """  # fmt: skip
    if route is None:
        route = UNMATCHED_ROUTE
    if not (
        type(method) is str and type(path) is str and type(error) is str
        and isinstance(route, str) and type(request_bytes) is int
        and type(response_bytes) is int
        and isinstance(status, int) and not isinstance(status, bool)
    ):  # fmt: skip
        raise TypeError("malformed inbox item")
    return str(route), int(status)


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
    ) -> None:
        self.clock = clock
        self.resolver = resolver
        self.routes = routes
        self.max_path_length = max_path_length
        self.sample_rate = sample_rate
        self.slow_threshold_ms = slow_threshold_ms
        self.id_prefix = new_id_prefix()
        self.sequence = 0
        self.sampled_out = 0
        #: Items that could not be turned into records (skipped, neighbours kept).
        self.invalid = 0
        #: Every finished HTTP request since the last take, sampled out or not.
        self.rollups = RollupDelta()
        self._random = random.Random()

    def take_rollups(self) -> RollupDelta:
        """The rollups folded since the last call, handed over whole."""
        delta, self.rollups = self.rollups, RollupDelta()
        return delta

    def reset_after_fork(self) -> None:
        # A new prefix: the child numbers its records from where the parent was.
        self.id_prefix = new_id_prefix()
        self._random = random.Random()
        # Counters describe the child only; the routes it already knows stay.
        self.sampled_out = self.invalid = self.routes.overflowed = 0
        self.rollups = RollupDelta()  # the parent stores what it folded

    def _client_ip(self, client: tuple[str, int] | None, forwarded: str | None) -> str | None:
        peer = client[0] if client else None
        return peer if forwarded is None else self.resolver.resolve(peer, forwarded)

    def finalize(self, items: list[InboxItem]) -> list[RequestRecord | WebSocketSession]:
        """Records for the items the log keeps; errors and requests slower than
        ``slow_threshold_ms`` always stay, the rest at ``sample_rate``.
        """
        # The request path stamps only the monotonic clock; one pair of
        # readings here turns those into wall time. Items are at most a few
        # seconds old, so clock drift in between is negligible.
        wall_offset = self.clock.wall() - self.clock.monotonic()
        limit = self.max_path_length
        known_routes = self.routes.known
        admit = self.routes.admit
        sample = self.sample_rate < 1.0
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
                    (method, route, path, status, start, ttfb, end, request_bytes,
                     response_bytes, client, forwarded, error, _disconnected) = item  # fmt: skip
                    if not (
                        type(method) is str and type(route) is str and type(path) is str
                        and type(status) is int and type(error) is str
                        and type(request_bytes) is int and type(response_bytes) is int
                    ):  # fmt: skip
                        route, status = _coerce(method, route, path, status, error,
                                                request_bytes, response_bytes)  # fmt: skip
                    if route not in known_routes:
                        route = admit(route)
                    duration_ms = (end - start) * 1000.0
                    if method not in STANDARD_METHODS:
                        method = OTHER_METHOD
                    # A server sends no body for HEAD, whatever the app passed it.
                    if method == "HEAD":
                        response_bytes = 0
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
                    record: RequestRecord | WebSocketSession = make(RequestRecord, (
                        f"{prefix}{sequence + 1:016x}", start + wall_offset, method, route,
                        path if len(path) <= limit else path[:limit], status, duration_ms,
                        None if ttfb is None else (ttfb - start) * 1000.0,
                        request_bytes, response_bytes,
                        client[0] if client and forwarded is None
                        else self._client_ip(client, forwarded),
                        error,
                    ))  # fmt: skip
                else:
                    session = item
                    record = WebSocketSession(
                        f"{prefix}{sequence + 1:016x}", session.start + wall_offset,
                        admit(session.route), session.path[:limit],
                        (session.end - session.start) * 1000.0, session.messages_in,
                        session.messages_out, session.close_code, session.accepted,
                        self._client_ip(session.client, session.forwarded), session.error,
                    )  # fmt: skip
            except Exception:
                self.invalid += 1
                continue
            sequence += 1
            append(record)
        self.sequence = sequence
        return out
