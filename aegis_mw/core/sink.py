"""The write side of a sink: the only thing the flusher knows about storage."""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

from .record import Batch


class RecordRejected(Exception):
    """A sink refuses a batch for what it holds, not because storage is away.

    Raised by ``write`` when a value in the batch cannot be stored (PostgreSQL
    refusing a character or a number out of range, say). Retrying the same
    records would fail the same way, so the flusher splits the batch until it
    has found the records refused, sets those aside (counted per sink as
    dropped, reason ``rejected``) and stores the rest, in order. The built-in
    sinks translate their drivers' data errors into it. ``write`` must have
    stored nothing of a batch it refuses, or store it idempotently (a record
    of a refused batch is offered again in a smaller one).

    Example::

        def write(self, batch: Batch) -> None:
            for record in batch.requests:
                if len(record.path) > 255:
                    raise RecordRejected(f"path longer than 255: {record.request_id}")
            ...
    """


#: What the flusher takes for a refusal of the content: :class:`RecordRejected`,
#: and the two errors Python itself raises for a value that cannot be encoded
#: or represented (a str that is no UTF-8, an int too large for the column),
#: which a sink that never heard of ``RecordRejected`` lets through. Every other
#: exception means the storage could not take the batch now (a lost connection,
#: a full disk, a timeout): the batch is kept and retried with backoff.
REFUSALS: tuple[type[BaseException], ...] = (RecordRejected, UnicodeEncodeError, OverflowError)


#: The retries' jitter, from the system's generator: the app's own ``random``
#: (seeded by its tests, say) is not drawn from, and no state is shared with
#: a forked worker, whose retries would then fall in step with its parent's.
JITTER = random.SystemRandom()


def retry_delay(initial: float, maximum: float, failures: int) -> float:
    """Seconds before trying a failing store again after ``failures`` failures
    in a row: doubling from ``initial`` up to ``maximum``, with +-10% jitter
    so that processes sharing one database do not retry in lockstep."""
    delay = min(maximum, initial * 2.0 ** min(failures, 30))
    return min(delay * JITTER.uniform(0.9, 1.1), maximum)


def is_refusal(error: BaseException) -> bool:
    """Whether ``error``, raised by a sink's ``write``, refuses the batch's content."""
    return isinstance(error, REFUSALS)


@runtime_checkable
class RecordSink(Protocol):
    """Stores batches of records.

    ``write`` and ``close`` are called from one thread the sink owns alone, so
    a sink may keep a connection that is not thread-safe. ``write`` either
    stores the whole batch or raises; it may see the same batch again (after a
    failure or a timeout) and must store each ``request_id``/``session_id``
    once. A sink holding connections re-opens them when ``os.getpid()``
    changes, since a forked child must not reuse its parent's.

    What ``write`` raises decides what happens next: :class:`RecordRejected`
    (or a ``UnicodeEncodeError`` or ``OverflowError``) says the content was
    refused, and the flusher isolates the records refused and stores the
    others at once; anything else says the storage is unavailable, and the
    batch is kept and retried with backoff, never split.

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
