"""The JSONL sink: one complete JSON object per line, once per id, from several processes."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, Batch, RequestRecord, WebSocketSession
from aegis_mw.sinks import JsonlSink
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item
from tests.spawned import run_together

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
APPENDERS = 2
BATCHES_PER_APPENDER = 60
RECORDS_PER_BATCH = 25


def make_request(number: int, prefix: str = "a" * 16, **changes: Any) -> RequestRecord:
    """A well-formed record with a distinct id."""
    record = RequestRecord(
        request_id=f"{prefix}{number:016x}",
        timestamp=1_700_000_000.123,
        method="GET",
        route="/items/{item_id}",
        path=f"/items/{number}",
        status=200,
        duration_ms=12.5,
        ttfb_ms=3.25,
        request_bytes=7,
        response_bytes=1234,
        client_ip="127.0.0.1",
        error="",
    )
    return record._replace(**changes)


def make_session(number: int, prefix: str = "b" * 16, **changes: Any) -> WebSocketSession:
    """A well-formed WebSocket session with a distinct id."""
    session = WebSocketSession(
        session_id=f"{prefix}{number:016x}",
        timestamp=1_700_000_060.5,
        route="/ws/{room}",
        path=f"/ws/{number}",
        duration_ms=1500.0,
        messages_in=3,
        messages_out=4,
        close_code=None,
        accepted=True,
        client_ip=None,
        error="",
    )
    return session._replace(**changes)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line parsed; fails on an incomplete or blank line."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def jsonl_sink(tmp_path: Path) -> Iterator[JsonlSink]:
    """A sink on ``tmp_path/records.jsonl``, closed after the test."""
    sink = JsonlSink(str(tmp_path / "records.jsonl"))
    yield sink
    sink.close()


def test_one_object_per_line_with_every_field(tmp_path: Path, jsonl_sink: JsonlSink) -> None:
    """Requests and sessions become typed JSON objects holding every field, one per line."""
    request = make_request(
        1, path="/café/🚀", error='ValueError: "x"\nnext line', ttfb_ms=None, client_ip=None
    )
    session = make_session(2)
    jsonl_sink.write(Batch(requests=[request, make_request(3)], sessions=[session]))

    assert jsonl_sink.name == f"jsonl:{tmp_path / 'records.jsonl'}"
    text = (tmp_path / "records.jsonl").read_text(encoding="utf-8")
    assert text.count("\n") == 3
    assert read_lines(tmp_path / "records.jsonl") == [
        {
            "type": "request",
            "request_id": request.request_id,
            "timestamp": "2023-11-14T22:13:20.123Z",
            "method": "GET",
            "route": "/items/{item_id}",
            "path": "/café/🚀",
            "status": 200,
            "duration_ms": 12.5,
            "ttfb_ms": None,
            "request_bytes": 7,
            "response_bytes": 1234,
            "client_ip": None,
            "error": 'ValueError: "x"\nnext line',
            "trace_id": None,
            "span_id": None,
        },
        {"type": "request", **make_request(3).to_json()},
        {
            "type": "websocket",
            "session_id": session.session_id,
            "timestamp": "2023-11-14T22:14:20.500Z",
            "route": "/ws/{room}",
            "path": "/ws/2",
            "duration_ms": 1500.0,
            "messages_in": 3,
            "messages_out": 4,
            "close_code": None,
            "accepted": True,
            "client_ip": None,
            "error": "",
            "trace_id": None,
            "span_id": None,
        },
    ]


def test_timestamps_are_iso8601_utc_with_z(tmp_path: Path, jsonl_sink: JsonlSink) -> None:
    """Timestamps are ISO 8601 in UTC, millisecond precision, ending in Z, and parse back."""
    stamps = [0.0, 1_700_000_000.0, 1_700_000_000.9996, 4_102_444_799.5]
    jsonl_sink.write(
        Batch(
            requests=[make_request(n, timestamp=t) for n, t in enumerate(stamps)],
            sessions=[make_session(9, timestamp=86_400.25)],
        )
    )

    written = [line["timestamp"] for line in read_lines(tmp_path / "records.jsonl")]
    assert written == [
        "1970-01-01T00:00:00.000Z",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.999Z",
        "2099-12-31T23:59:59.500Z",
        "1970-01-02T00:00:00.250Z",
    ]
    for text, stamp in zip(written, [*stamps, 86_400.25], strict=True):
        assert ISO_UTC.match(text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert abs(parsed.timestamp() - stamp) < 0.001


def test_retried_batch_is_not_appended_twice(tmp_path: Path, jsonl_sink: JsonlSink) -> None:
    """A batch seen before adds nothing; an overlapping one adds only its new records."""
    batch = Batch(requests=[make_request(n) for n in range(3)], sessions=[make_session(0)])
    jsonl_sink.write(batch)
    jsonl_sink.write(batch)
    jsonl_sink.write(Batch(requests=[make_request(2), make_request(3)], sessions=[make_session(0)]))

    ids = [
        line.get("request_id", line.get("session_id"))
        for line in read_lines(tmp_path / "records.jsonl")
    ]
    assert ids == [
        make_request(0).request_id,
        make_request(1).request_id,
        make_request(2).request_id,
        make_session(0).session_id,
        make_request(3).request_id,
    ]


class FailsAfterWriting:
    """Delegates to a real sink, then reports a failure once: the write did happen."""

    def __init__(self, inner: JsonlSink) -> None:
        self.inner = inner
        self.name = "flaky-jsonl"
        self.calls = 0

    def write(self, batch: Batch) -> None:
        self.inner.write(batch)
        self.calls += 1
        if self.calls == 1:
            raise ConnectionResetError("acknowledgement lost")

    def close(self) -> None:
        self.inner.close()


def test_pipeline_retry_after_a_completed_write_appends_once(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """When a write that completed is reported failed, the flusher's retry appends nothing."""
    path = tmp_path / "records.jsonl"
    sink = FailsAfterWriting(JsonlSink(str(path)))
    aegis = make_aegis(sink=sink, flush_interval=3600, clock=FakeClock())
    for number in range(4):
        aegis.recorder.offer(inbox_item(f"/r/{number}", response_bytes=1))

    assert aegis.force_flush(timeout=10) is False
    assert aegis.force_flush(timeout=10) is True

    lines = read_lines(path)
    assert [line["path"] for line in lines] == ["/r/0", "/r/1", "/r/2", "/r/3"]
    assert len({line["request_id"] for line in lines}) == 4
    assert sink.calls == 2
    [stats] = aegis.stats().sinks
    assert (stats.written, stats.errors, stats.backlog) == (4, 1, 0)
    assert stats.last_error == "ConnectionResetError: acknowledgement lost"


def test_relative_url_appends_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_aegis: Callable[..., Aegis]
) -> None:
    """``jsonl:///rel.jsonl`` writes under the current directory; a second flush appends."""
    monkeypatch.chdir(tmp_path)
    aegis = make_aegis(sink="jsonl:///rel.jsonl", flush_interval=3600, clock=FakeClock())
    [sink] = aegis.sinks
    assert isinstance(sink, JsonlSink)
    assert sink.path == str(tmp_path / "rel.jsonl")
    for round_number in range(2):
        aegis.recorder.offer(inbox_item(f"/r/{round_number}", ttfb=None, end=1000.5))
        assert aegis.force_flush(timeout=10) is True

    assert [line["path"] for line in read_lines(tmp_path / "rel.jsonl")] == ["/r/0", "/r/1"]


def _append_from_process(path: str, index: int, barrier: Any, results: Any) -> None:
    """Child process: append many batches of long lines to the shared file."""
    try:
        sink = JsonlSink(path)
        prefix = f"{index:016x}"
        barrier.wait(timeout=60)
        for batch_number in range(BATCHES_PER_APPENDER):
            base = batch_number * RECORDS_PER_BATCH
            sink.write(
                Batch(
                    requests=[
                        make_request(
                            base + n,
                            prefix=prefix,
                            path=f"/p{index}/" + "x" * (200 + 37 * n),
                            error=f"E{index}: " + "é" * (300 + 11 * n),
                        )
                        for n in range(RECORDS_PER_BATCH)
                    ]
                )
            )
        sink.close()
    except BaseException as exc:
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, ""))


def test_two_processes_appending_produce_only_complete_lines(tmp_path: Path) -> None:
    """Concurrent appenders never split or interleave a line; every record is there once."""
    path = tmp_path / "shared.jsonl"
    outcomes, _ = run_together(_append_from_process, APPENDERS, str(path))

    assert sorted(outcomes) == [(index, "") for index in range(APPENDERS)]
    lines = read_lines(path)  # json.loads fails on any torn line
    per_process = BATCHES_PER_APPENDER * RECORDS_PER_BATCH
    assert len(lines) == APPENDERS * per_process
    for index in range(APPENDERS):
        mine = [line for line in lines if line["request_id"].startswith(f"{index:016x}")]
        assert [line["request_id"] for line in mine] == [
            f"{index:016x}{n:016x}" for n in range(per_process)
        ]
        assert all(line["path"].startswith(f"/p{index}/x") for line in mine)
        assert all(line["error"].startswith(f"E{index}: é") for line in mine)


def test_a_write_cut_short_loses_no_record_and_spoils_one_line_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_aegis: Callable[..., Aegis]
) -> None:
    """A full disk stops a write in the middle of a line: the complete lines stay
    remembered, the cut line is closed off, and the retry writes the rest once."""
    path = tmp_path / "records.jsonl"
    aegis = make_aegis(sink=f"jsonl:///{path}", flush_interval=3600, clock=FakeClock())
    real_write = os.write
    budget = {"bytes": 500, "failures": 1}

    def disk_fills_once(fd: int, data: Any) -> int:
        if budget["failures"]:
            budget["failures"] -= 1
            real_write(fd, bytes(data)[: budget["bytes"]])  # part of it lands...
            raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full
        return real_write(fd, data)

    for number in range(6):
        aegis.recorder.offer(inbox_item(f"/r/{number}", response_bytes=1))
    monkeypatch.setattr("aegis_mw.sinks.jsonl.os.write", disk_fills_once)
    assert aegis.force_flush(timeout=10) is False
    assert aegis.force_flush(timeout=10) is True
    raw = path.read_text(encoding="utf-8").splitlines()
    readable = []
    for line in raw:
        try:
            readable.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    assert len(raw) - len(readable) == 1  # the one cut line
    assert sorted(record["path"] for record in readable) == [f"/r/{n}" for n in range(6)]
    assert os.stat(path).st_mode & 0o777 == 0o600
