"""What one ``/ws/metrics`` connection, and all of them together, may use.

Both are plain counters the connection handler consults; they hold no locks
because a server's connections share one event loop (the handler calls
them from its coroutines, never from threads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Close codes (RFC 6455) the handler uses with these limits.
CLOSE_POLICY = 1008  # a client that floods messages, or one over a limit
CLOSE_TOO_BIG = 1009  # a message over the size limit
CLOSE_TRY_AGAIN = 1013  # the server is at its connection limit


@dataclass
class MessageRate:
    """A token bucket: ``burst`` messages at once, then ``per_second``.

    Example::

        rate = MessageRate(per_second=10, burst=20)
        if not rate.allow(time.monotonic()):
            close(1008, "too many messages")
    """

    per_second: float
    burst: float
    _tokens: float = field(init=False)
    _last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("per_second must be above 0 and burst at least 1")
        self._tokens = self.burst

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class ConnectionLimits:
    """Open connections, per client address and in total.

    Example::

        refusal = limits.admit(address)
        if refusal:
            close(1013, refusal)   # or 1008 for the per-address limit
        try: ...
        finally: limits.release(address)
    """

    per_address: int = 10
    total: int = 1000
    by_address: dict[str, int] = field(default_factory=dict)
    open: int = 0

    def admit(self, address: str) -> tuple[int, str] | None:
        """Count the connection in, or the (close code, reason) refusing it."""
        if self.open >= self.total:
            return CLOSE_TRY_AGAIN, f"server is at its limit of {self.total} connections"
        held = self.by_address.get(address, 0)
        if held >= self.per_address:
            return CLOSE_POLICY, f"at most {self.per_address} connections per client address"
        self.by_address[address] = held + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        """Count an admitted connection out."""
        held = self.by_address.get(address, 0)
        if held <= 1:
            self.by_address.pop(address, None)
        else:
            self.by_address[address] = held - 1
        self.open = max(0, self.open - 1)
