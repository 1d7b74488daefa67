"""``jsonl:///path``: one JSON object per line, appended.

Each batch goes out in ``os.write`` calls on an ``O_APPEND`` descriptor, so
several processes can append to one file without interleaving inside a line.
An append-only file cannot look records up, so the sink remembers the ids it
wrote recently and skips them when a batch is retried.
"""

from __future__ import annotations

import json
import os
from collections import deque

from ..core.record import Batch

_REMEMBERED_IDS = 200_000


class JsonlSink:
    """Appends ``{"type": "request" | "websocket", ...record fields}`` lines."""

    def __init__(self, path: str) -> None:
        # Resolved now: a later chdir must not move the file.
        self.path = os.path.abspath(path)
        self.name = f"jsonl:{path}"
        self._fd: int | None = None
        self._pid = 0
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child opens its own descriptor; it never closes the parent's.
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._fd

    def write(self, batch: Batch) -> None:
        recent = self._recent
        lines: list[str] = []
        fresh: list[str] = []
        for record in batch.requests:
            if record.request_id not in recent:
                lines.append(json.dumps({"type": "request", **record.to_json()}))
                fresh.append(record.request_id)
        for session in batch.sessions:
            if session.session_id not in recent:
                lines.append(json.dumps({"type": "websocket", **session.to_json()}))
                fresh.append(session.session_id)
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        fd = self._descriptor()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        for record_id in fresh:
            recent.add(record_id)
            self._recent_order.append(record_id)
        while len(self._recent_order) > _REMEMBERED_IDS:
            recent.discard(self._recent_order.popleft())

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
