"""A user function as a sink: it receives each :class:`Batch`."""

from __future__ import annotations

from collections.abc import Callable

from ..core.record import Batch


class CallableSink:
    """Wraps ``function(batch)``. It runs on the sink's own thread and may be
    called again with a batch it already saw (after a failure or a timeout),
    so it should treat ``request_id`` as a key. To refuse a record it cannot
    take, it raises :class:`~aegis_mw.core.sink.RecordRejected`: that record is
    set aside (counted ``rejected``) and the others are passed on; any other
    exception is taken for the destination being unavailable, and the batch
    is retried with backoff.

    Example::

        def ship(batch: Batch) -> None:
            for record in batch.requests:
                queue.put(record.to_json())

        app.add_middleware(AegisMiddleware, sink=ship)
    """

    def __init__(self, function: Callable[[Batch], object]) -> None:
        self.function = function
        self.name = "callable:" + getattr(function, "__qualname__", type(function).__name__)

    def write(self, batch: Batch) -> None:
        self.function(batch)

    def close(self) -> None:
        close = getattr(self.function, "close", None)
        if callable(close):
            close()
