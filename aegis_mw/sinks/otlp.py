"""``otlp+http://collector:4318``: records as OpenTelemetry metrics, over OTLP/HTTP.

Each batch is one ``ExportMetricsServiceRequest`` (protobuf, gzipped) POSTed
to ``{base}/v1/metrics``: the requests as a DELTA ``http.server.request.duration``
histogram per (method, route template, status code), the WebSocket sessions
as a DELTA ``aegis.websocket.sessions`` count (see :mod:`.otlp_encode`). With
``?logs=true`` the app's events go first to ``{base}/v1/logs`` as log records.

What the collector answers decides what the flusher does:

- 2xx: stored. A partial success (points the collector dropped itself) is
  counted in ``rejected_points``/``rejected_log_records`` and logged once
  per burst; sending them again would be refused again.
- 400 and 413: :class:`~aegis_mw.core.sink.RecordRejected`, counted in
  ``refused``. The flusher halves the batch from there: a 413 is answered
  by smaller requests, a record the collector cannot take is set aside
  (``rejected``), and a collector that refuses everything is treated as an
  outage (kept and retried with backoff, see ``core.refusals``), never as
  records to drop.
- anything else, and no answer (refused connection, timeout): the
  collector is unavailable; the batch is kept and retried with backoff.
  A ``Retry-After`` (429, 503) is honoured here, since the flusher's backoff
  takes no hint: until it has passed, ``write`` fails at once without
  sending, so the collector hears from us no sooner than it asked.

OTLP has no idempotency key. A batch whose request timed out after the
collector took it is sent again and counted twice there. Within the
process that is the only case: a batch the flusher gave up waiting for but
which was stored is recognised by its ``batch_id`` when it comes again,
and an event sent as a log is recognised by its id.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import math
import os
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from ..core.record import Batch, EventRecord
from ..core.sink import RecordRejected
from . import otlp_http
from .otlp_settings import OtlpSettings, read_settings

if TYPE_CHECKING:
    from .otlp_encode import Where

logger = logging.getLogger("aegis_mw.sinks.otlp")

#: The longest pause a ``Retry-After`` may ask for: a longer one would let
#: the backlog fill and drop records while the collector may be back.
MAX_PAUSE = 60.0
#: At most one line per this many seconds about partial successes.
PARTIAL_LOG_INTERVAL = 60.0
#: Events sent as logs, remembered so a retried batch does not send them again.
REMEMBERED_EVENTS = 100_000
#: Batches stored, remembered for the flusher's retry of one it gave up on.
REMEMBERED_BATCHES = 64


class CollectorUnavailable(RuntimeError):
    """The collector did not take a request now; the batch is kept and retried."""


class OtlpSink:
    """Exports batches to an OpenTelemetry Collector (or any OTLP/HTTP receiver).

    Headers come from ``OTEL_EXPORTER_OTLP_METRICS_HEADERS`` (logs:
    ``..._LOGS_HEADERS``) or ``OTEL_EXPORTER_OTLP_HEADERS``, the resource
    from ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``; ``environ``
    replaces ``os.environ`` for them. Needs the ``otel`` extra.

    Example::

        aegis = Aegis(sink="otlp+http://otel-collector:4318")
    """

    #: A store across the network: with ``spool_dir`` its batches are kept
    #: on local disk while the collector is unreachable (core.spooling).
    remote = True
    #: Its request metrics count the records it is given, so it is given
    #: every request's, whatever ``sample_rate`` keeps in the log (see
    #: ``Finalizer.sample_later``).
    counts_records = True

    def __init__(self, url: str, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings: OtlpSettings = read_settings(url, os.environ if environ is None else environ)
        # Imported here, once the URL is known good: only this sink needs the
        # package, and without it the ImportError names the extra.
        from . import otlp_encode

        self._encode = otlp_encode
        self.name = f"otlp:{self.settings.base}"
        #: The flusher gives events to sinks that say they store them.
        self.stores_events = self.settings.logs
        self._tls = _tls_context(self.settings)
        #: Requests the collector refused (400, 413).
        self.refused = 0
        #: What the collector took but dropped itself (partial successes).
        self.rejected_points = 0
        self.rejected_log_records = 0
        #: The process those two count for: a forked child starts from 0.
        self._counting_pid = os.getpid()
        self._partials_unlogged = 0
        self._partial_logged_at = -math.inf
        self._pause_until = 0.0
        self._pid = 0
        self._where: Where | None = None
        from .. import __version__

        self._user_agent = f"aegis_mw/{__version__}"
        # DELTA points cover (start, end]: each export starts where the last
        # one the collector took ended, so a backend adding them up (Prometheus'
        # delta-to-cumulative) finds every point adjoining the one before.
        self._start_ns = time.time_ns()
        self._stored_batches: deque[str] = deque(maxlen=REMEMBERED_BATCHES)
        self._sent_events: set[str] = set()
        self._sent_order: deque[str] = deque()

    def write(self, batch: Batch) -> None:
        """Send the batch's events (as logs, when asked) then its metrics."""
        if batch.batch_id and batch.batch_id in self._stored_batches:
            return  # stored by a write the flusher had given up waiting for
        where = self._identity()
        left = self._pause_until - time.monotonic()
        if left > 0:
            raise CollectorUnavailable(
                f"the collector asked to wait (Retry-After); {left:.1f} s left"
            )
        # Events first: the metrics then go last, so a batch refused or
        # failed has sent no metrics, and sending it again counts nothing twice.
        if self.stores_events:
            events = [event for event in batch.events if event.event_id not in self._sent_events]
            if events:
                payload = self._encoded(
                    lambda: self._encode.logs_request(events, where).SerializeToString()
                )
                self._export("logs", payload)
                self._remember(events)
        if batch.requests or batch.sessions:
            end_ns = max(time.time_ns(), self._start_ns + 1)
            start_ns = self._start_ns
            payload = self._encoded(
                lambda: self._encode.metrics_request(
                    batch.requests, batch.sessions, where, start_ns, end_ns
                ).SerializeToString()
            )
            self._export("metrics", payload)
            self._start_ns = end_ns
        if batch.batch_id:
            self._stored_batches.append(batch.batch_id)

    def close(self) -> None:
        """Nothing held: each request has its own connection."""

    def _identity(self) -> Where:
        """The resource and scope of this process's exports."""
        if self._where is None or self._pid != os.getpid():
            from .. import __version__

            attributes = dict(self.settings.resource)
            # Two processes sending DELTA points under one identity would be
            # taken for one stream with gaps and overlaps; the conventions'
            # service.instance.id tells each process (a forked worker too) apart.
            attributes.setdefault("service.instance.id", str(uuid.uuid4()))
            if self._pid:
                self._start_ns = time.time_ns()  # a forked child's own points start now
            self._pid = os.getpid()
            scope = self._encode.InstrumentationScope(name="aegis_mw", version=__version__)
            self._where = (self._encode.resource(attributes.items()), scope)
        return self._where

    def _encoded(self, encode: Callable[[], bytes]) -> bytes:
        try:
            return encode()
        except (TypeError, ValueError, OverflowError) as exc:
            # A value protobuf cannot hold (a record built by hand): the
            # flusher sets that record aside and sends the rest.
            raise RecordRejected(f"not encodable as OTLP ({type(exc).__name__}: {exc})") from exc

    def _export(self, signal: str, payload: bytes) -> None:
        settings = self.settings
        headers = dict(settings.metrics_headers if signal == "metrics" else settings.logs_headers)
        headers.update(
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "User-Agent": self._user_agent,
            }
        )
        # Level 6, not gzip's 9: within a few per cent of the size at a sixth of the CPU.
        body = gzip.compress(payload, compresslevel=6, mtime=0)
        url = f"{settings.base}/v1/{signal}"
        try:
            answer = otlp_http.post(
                settings.host, settings.port, settings.path(signal), body, headers,
                timeout=settings.timeout, tls=self._tls,
            )  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            raise CollectorUnavailable(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= answer.status < 300:
            self._partial(signal, *self._encode.partial_rejection(answer.body, signal))
            return
        message = otlp_http.error_message(answer)
        if answer.status in (400, 413):
            self.refused += 1
            raise RecordRejected(f"the collector refused the {signal} ({answer.status}): {message}")
        if answer.retry_after:
            self._pause_until = time.monotonic() + min(answer.retry_after, MAX_PAUSE)
        raise CollectorUnavailable(f"POST {url} answered {answer.status}: {message}")

    @property
    def rejected_by_store(self) -> dict[str, int]:
        """What the collector took but dropped itself, for ``aegis.stats()``
        and ``/metrics`` (``aegis_sink_rejected_total``)."""
        self._own_counts()
        counts = {"data_points": self.rejected_points}
        if self.stores_events:
            counts["log_records"] = self.rejected_log_records
        return counts

    def _own_counts(self) -> None:
        """Counts of this process only: a forked worker's file must not repeat
        the parent's (the workers' files are summed)."""
        if self._counting_pid != os.getpid():
            self._counting_pid = os.getpid()
            self.rejected_points = self.rejected_log_records = 0

    def _partial(self, signal: str, rejected: int, message: str) -> None:
        if not rejected and not message:
            return
        rejected = max(rejected, 0)  # a collector's odd answer never counts down
        self._own_counts()
        if signal == "metrics":
            self.rejected_points += rejected
        else:
            self.rejected_log_records += rejected
        self._partials_unlogged += 1
        now = time.monotonic()
        if now - self._partial_logged_at < PARTIAL_LOG_INTERVAL:
            return
        # One line per burst: the answer that opens it, and how many were only counted.
        more = self._partials_unlogged - 1
        logger.warning(
            "aegis sink %s: the collector took the %s but rejected %d %s: %s%s",
            self.name,
            signal,
            rejected,
            "data points" if signal == "metrics" else "log records",
            message or "(no message)",
            f"; {more} more partial successes since the last report" if more else "",
        )
        self._partials_unlogged = 0
        self._partial_logged_at = now

    def _remember(self, events: list[EventRecord]) -> None:
        for event in events:
            self._sent_events.add(event.event_id)
            self._sent_order.append(event.event_id)
        while len(self._sent_order) > REMEMBERED_EVENTS:
            self._sent_events.discard(self._sent_order.popleft())


def _tls_context(settings: OtlpSettings) -> ssl.SSLContext | None:
    if not settings.secure:
        return None
    try:
        # A CA file, when given, is the whole trust: a private CA only.
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            settings.ca_variable,
            settings.ca_file,
            f"a readable PEM file of CA certificates ({exc})",
        ) from None
