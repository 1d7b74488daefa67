"""A sink that counts the records it is given (``counts_records``, the OTLP
sink's request metrics) gets every request's record, whatever ``sample_rate``
keeps: the log's sinks get the sample, chosen as without such a sink."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core.items import PendingSession
from aegis_mw.testing import MemorySink
from tests.core.faulty_sinks import accounted
from tests.harness import inbox_item

ORDINARY = 400  # fast 2xx and 4xx requests: sampled
ERRORS = 20  # 5xx: always kept
RAISED = 10  # a 200 whose app raised: always kept
SLOW = 10  # slower than slow_threshold_ms: always kept
SESSIONS = 5  # always kept
REQUESTS = ORDINARY + ERRORS + RAISED + SLOW


class CountingSink(MemorySink):
    """A memory sink that asks for every request, as the OTLP sink does."""

    counts_records = True


def offer_traffic(aegis: Aegis) -> None:
    now = aegis.clock.monotonic()

    def item(number: int, **fields: Any) -> list[Any]:
        return inbox_item(f"/r/{number}", route="/r/{n}", start=now, **fields)

    for number in range(ORDINARY):
        aegis.recorder.offer(item(number, status=404 if number % 4 == 0 else 200))
    for number in range(ERRORS):
        aegis.recorder.offer(item(number, status=500))
    for number in range(RAISED):
        aegis.recorder.offer(item(number, error="RuntimeError: boom"))
    for number in range(SLOW):
        aegis.recorder.offer(item(number, end=now + 2.0))  # 2,000 ms
    for number in range(SESSIONS):
        aegis.recorder.offer(
            PendingSession(now, "/ws", f"/ws/{number}", now + 1, 1, 1, 1000, True, None, None, "")
        )


def is_kept_anyway(record: Any) -> bool:
    return record.status >= 500 or bool(record.error) or record.duration_ms >= 1000


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_the_counting_sink_gets_every_request_and_the_log_its_sample(
    make_aegis: Callable[..., Aegis], rate: float
) -> None:
    counting, log = CountingSink(), MemorySink()
    aegis = make_aegis(sink=[counting, log], sample_rate=rate, slow_threshold_ms=1000)
    assert aegis.finalizer.sample_later
    offer_traffic(aegis)
    assert aegis.force_flush(timeout=10)

    assert len(counting.requests) == REQUESTS
    assert len({record.request_id for record in counting.requests}) == REQUESTS
    assert sum(is_kept_anyway(record) for record in counting.requests) == ERRORS + RAISED + SLOW
    # The log's records are the counting sink's, the same objects: a sample of them.
    by_id = {record.request_id: record for record in counting.requests}
    assert all(by_id[record.request_id] is record for record in log.requests)
    kept_anyway = [record for record in log.requests if is_kept_anyway(record)]
    assert len(kept_anyway) == ERRORS + RAISED + SLOW
    sampled = len(log.requests) - len(kept_anyway)
    if rate == 0.0:
        assert sampled == 0
    else:  # 400 draws at 1/4: below 40 or above 160 has odds under 1e-12
        assert 40 < sampled < 160
    stats = aegis.stats()
    assert stats.sampled_out == REQUESTS - len(log.requests)
    # Each sink's figures add up to what was offered: the sample's for the log.
    assert [sink.counts_every_request for sink in stats.sinks] == [True, False]
    assert accounted(stats, 0) == accounted(stats, 1) == stats.offered == REQUESTS + SESSIONS
    assert len(counting.sessions) == len(log.sessions) == SESSIONS
    # The rollups count every request, as ever.
    rows = log.read_rollups(5, 0, 10**12, by_route=False)
    assert sum(row.requests for row in rows) == REQUESTS


def test_without_a_counting_sink_or_sampling_records_are_built_as_before(
    make_aegis: Callable[..., Aegis],
) -> None:
    """sample_later only where it is needed: a log alone is sampled where its
    records are built (the sampled-out never are); every request kept leaves
    nothing to thin."""
    log = MemorySink()
    aegis = make_aegis(sink=log, sample_rate=0.0, slow_threshold_ms=1000)
    assert not aegis.finalizer.sample_later
    offer_traffic(aegis)
    assert aegis.force_flush(timeout=10)
    assert len(log.requests) == ERRORS + RAISED + SLOW
    assert aegis.stats().sampled_out == ORDINARY
    assert not make_aegis(sink=[CountingSink(), MemorySink()]).finalizer.sample_later
