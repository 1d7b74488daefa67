"""``jsonl:///path``: one JSON object per line, appended.

Each batch goes out in ``os.write`` calls on an ``O_APPEND`` descriptor, so
several processes can append to one file without interleaving inside a line.
An append-only file cannot look records up, so the sink remembers the ids it
wrote recently and skips them when a batch is retried: delivery is
at-least-once across restarts, exactly-once within a process.

A write that fails part-way (a full disk, say) keeps the lines it completed;
the cut line is ended with a newline before the next write, so only that one
line is unreadable and every record still arrives whole on the retry.
"""

from __future__ import annotations

import json
import os
from collections import deque

from ..core.record import Batch
from ..core.sink import RecordRejected
from .files import FILE_MODE, prepare_path

_REMEMBERED_IDS = 200_000


class JsonlSink:
    """Appends ``{"type": "request" | "websocket" | "event", ...record fields}``
    lines (an event's own type as ``event_type``)."""

    stores_events = True

    def __init__(self, path: str, url: str = "") -> None:
        # Resolved now: a later chdir must not move the file.
        self.path = prepare_path(path, url or f"jsonl:///{path}")
        self.name = f"jsonl:{path}"
        self._fd: int | None = None
        self._pid = 0
        self._torn = False  # the last write stopped inside a line
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child opens its own descriptor; it never closes the parent's.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            self._pid = os.getpid()
        return self._fd

    def _remember(self, record_ids: list[str]) -> None:
        for record_id in record_ids:
            self._recent.add(record_id)
            self._recent_order.append(record_id)
        while len(self._recent_order) > _REMEMBERED_IDS:
            self._recent.discard(self._recent_order.popleft())

    def write(self, batch: Batch) -> None:
        """Append the batch's new records; raises
        :class:`~aegis_mw.core.sink.RecordRejected`, having written nothing,
        when a record cannot be encoded as a JSON line."""
        recent = self._recent
        lines: list[bytes] = []
        ids: list[str] = []
        try:
            for record in batch.requests:
                if record.request_id not in recent:
                    lines.append(_line({"type": "request", **record.to_json()}))
                    ids.append(record.request_id)
            for session in batch.sessions:
                if session.session_id not in recent:
                    lines.append(_line({"type": "websocket", **session.to_json()}))
                    ids.append(session.session_id)
            for event in batch.events:
                # Its own type is "event_type": "type" tells the lines apart.
                key = f"event:{event.event_id}"
                if key not in recent:
                    fields = event.to_json()
                    fields["event_type"] = fields.pop("type")
                    lines.append(_line({"type": "event", **fields}))
                    ids.append(key)
        except (TypeError, ValueError, OverflowError) as exc:
            # Every line is encoded before the first byte is written.
            raise RecordRejected(f"not encodable as JSON ({type(exc).__name__}: {exc})") from exc
        if not lines:
            return
        prefix = b"\n" if self._torn else b""
        data = memoryview(prefix + b"".join(lines))
        fd = self._descriptor()
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException:
            self._account_partial(written - len(prefix), lines, ids, prefix_done=written > 0)
            raise
        self._torn = False
        self._remember(ids)

    def _account_partial(
        self, written: int, lines: list[bytes], ids: list[str], *, prefix_done: bool
    ) -> None:
        """After a failed write: remember the whole lines, note a cut one."""
        if not prefix_done:
            return  # nothing reached the file; the state is as before
        complete = 0
        offset = 0
        for line in lines:
            if offset + len(line) > written:
                break
            offset += len(line)
            complete += 1
        self._torn = written != offset
        self._remember(ids[:complete])

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def _line(data: dict[str, object]) -> bytes:
    return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
