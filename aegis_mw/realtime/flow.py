"""Flow control of one ``/ws/metrics`` connection, by acknowledgement.

A blocking ``send`` cannot tell a slow reader: the server's WebSocket library
and the kernel accept megabytes of frames before it blocks, so a client that
stopped reading would get frames minutes old. What the client has *received*
is what counts, and only the client (or its WebSocket layer) can say so.

Every server message carries a sequence number (``seq``, from 1). A client
acknowledges the last one it has processed (``{"type": "ack", "data": seq}``,
cumulative); a server that owns its WebSocket connection may acknowledge for
it when a ping's pong comes back (everything before the ping was read). Once
acknowledgements flow, at most ``window`` messages are left unacknowledged:
frames beyond them are held and the newest replaces an unsent one, and a
connection whose acknowledgement has not moved for ``stall_timeout`` seconds
while messages are outstanding has stopped reading.

A client that never acknowledges is not held or timed here (it might be a
plain tool reading frames): only a send that blocks for ``stall_timeout``
ends it. Pure state, no clock of its own, standard library only. Example::

    flow = Flow(window=4, stall_timeout=10.0)
    seq = flow.assign(now)            # before sending a message
    flow.ack(2, now)                  # the client processed up to 2
    if not flow.window_open(): ...    # hold the frame
    if flow.stalled(now): ...         # close 1008
"""

from __future__ import annotations

from dataclasses import dataclass

#: Messages a client may leave unacknowledged before frames are held: room
#: for a round trip of a few update intervals, and a slow client at most
#: this many frames behind the newest.
ACK_WINDOW = 4


class AckError(ValueError):
    """An acknowledgement of a message that was never sent."""


@dataclass
class Flow:
    """Sent and acknowledged sequence numbers of one connection."""

    window: int = ACK_WINDOW
    stall_timeout: float = 10.0
    #: Acknowledgements flow (the client's, or the transport's pongs).
    acking: bool = False
    #: The client acknowledges by itself: the transport's pongs no longer
    #: count (a browser's pong says received, its ack says processed).
    client_acks: bool = False
    sent: int = 0
    acked: int = 0
    #: When the acknowledgement last moved, or messages began to wait for one.
    since: float = 0.0

    def assign(self, now: float) -> int:
        """The sequence number of the next message sent."""
        if self.sent == self.acked:
            self.since = now  # nothing was outstanding: the wait starts now
        self.sent += 1
        return self.sent

    def ack(self, seq: int, now: float, *, by_client: bool = True) -> bool:
        """Everything up to ``seq`` was processed. True when this counts as
        progress (the acknowledgement moved, or the client's first one);
        raises :class:`AckError` for a ``seq`` not sent yet."""
        if seq > self.sent:
            raise AckError(f"ack 'data' is {seq}, past the last message sent ({self.sent})")
        if not by_client and self.client_acks:
            return False
        first = by_client and not self.client_acks
        self.client_acks = self.client_acks or by_client
        self.acking = True
        if seq > self.acked:
            self.acked = seq
            self.since = now
            return True
        if first:
            self.since = now
        return first

    def outstanding(self) -> int:
        return self.sent - self.acked

    def window_open(self) -> bool:
        """May another frame be sent now?"""
        return not self.acking or self.sent - self.acked < self.window

    def deadline(self) -> float | None:
        """When the connection counts as stalled, if nothing moves first."""
        if not self.acking or self.sent == self.acked:
            return None
        return self.since + self.stall_timeout

    def stalled(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline
