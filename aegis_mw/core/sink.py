"""The write side of a sink: the only thing the flusher knows about storage."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .record import Batch


@runtime_checkable
class RecordSink(Protocol):
    """Stores batches of records.

    ``write`` and ``close`` are called from one thread the sink owns alone, so
    a sink may keep a connection that is not thread-safe. ``write`` either
    stores the whole batch or raises; it may see the same batch again (after a
    failure or a timeout) and must store each ``request_id``/``session_id``
    once. A sink holding connections re-opens them when ``os.getpid()``
    changes, since a forked child must not reuse its parent's.

    Example::

        class PrintSink:
            name = "print"

            def write(self, batch: Batch) -> None:
                for record in batch.requests:
                    print(record.method, record.route, record.status)

            def close(self) -> None:
                pass
    """

    name: str

    def write(self, batch: Batch) -> None: ...

    def close(self) -> None: ...
