"""A real OTLP/HTTP receiver on 127.0.0.1 for the OTLP sink's tests (and the
spans of ``tracing``).

A ``ThreadingHTTPServer`` in a thread that does what a collector's ``otlp``
receiver does with ``/v1/metrics``, ``/v1/logs`` and ``/v1/traces``: it un-gzips the body,
decodes the protobuf with opentelemetry-proto, keeps what it decoded, and
answers an ``Export*ServiceResponse``, or what the test tells it to (a 503
with ``Retry-After``, a 400 with a ``google.rpc.Status``, a partial success).
An answer is sent only after the request was kept, so once the sink's write
has returned, what it sent is here: no waiting needed.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

JOIN_TIMEOUT = 10.0


@dataclass
class Reply:
    """What the receiver answers: a status, extra headers, and a body (the
    export response for a 2xx unless given)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass
class Arrival:
    """One request as it arrived, decoded."""

    path: str
    headers: dict[str, str]
    message: ExportMetricsServiceRequest | ExportLogsServiceRequest | ExportTraceServiceRequest
    reply: Reply


def status_body(message: str, code: int = 3) -> bytes:
    """A ``google.rpc.Status`` (code, message) on the wire, as a collector
    answers a refused request (3: INVALID_ARGUMENT)."""
    text = message.encode()
    return bytes([0x08, code, 0x12]) + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def refusal(status: int, message: str, **headers: str) -> Reply:
    return Reply(
        status,
        {"Content-Type": "application/x-protobuf", **headers},
        status_body(message),
    )


def partial(rejected: int, message: str, signal: str = "metrics") -> Reply:
    answer: ExportMetricsServiceResponse | ExportLogsServiceResponse
    if signal == "metrics":
        answer = ExportMetricsServiceResponse(
            partial_success=ExportMetricsPartialSuccess(
                rejected_data_points=rejected, error_message=message
            )
        )
    else:
        answer = ExportLogsServiceResponse(
            partial_success=ExportLogsPartialSuccess(
                rejected_log_records=rejected, error_message=message
            )
        )
    return Reply(body=answer.SerializeToString())


#: Each signal's path, and its request and response messages.
SIGNALS: dict[str, tuple[type[Any], type[Any]]] = {
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}

#: Decides the answer to one decoded request (path, message).
Decide = Callable[[str, Any], Reply]


class Receiver:
    """An OTLP/HTTP receiver; ``start()`` binds ``port`` (a free one by default)."""

    def __init__(self, port: int = 0, *, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.arrivals: list[Arrival] = []
        #: Requests that could not be decoded (answered 400).
        self.undecodable: list[str] = []
        self.decide: Decide = lambda path, message: Reply()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"otlp+{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon stop() is noticed
            name="otlp-receiver",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(JOIN_TIMEOUT)
            assert not self._thread.is_alive()
            self._server = self._thread = None

    def keep(self, arrival: Arrival) -> None:
        with self._lock:
            self.arrivals.append(arrival)
            self._arrived.notify_all()

    def wait_for(self, signal: str, count: int, timeout: float) -> bool:
        """Whether ``count`` requests of ``signal`` arrived within ``timeout`` seconds."""
        with self._arrived:
            return self._arrived.wait_for(
                lambda: sum(a.path.endswith(f"/v1/{signal}") for a in self.arrivals) >= count,
                timeout,
            )

    def taken(self, signal: str = "metrics") -> list[Any]:
        """The messages of ``signal`` answered with a 2xx, in arrival order."""
        with self._lock:
            return [
                a.message
                for a in self.arrivals
                if a.path.endswith(f"/v1/{signal}") and 200 <= a.reply.status < 300
            ]

    def count(self, signal: str = "metrics") -> int:
        """Requests of ``signal`` that arrived, whatever the answer."""
        with self._lock:
            return sum(a.path.endswith(f"/v1/{signal}") for a in self.arrivals)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            kinds = [kind for signal, kind in SIGNALS.items() if self.path.endswith(signal)]
            if not kinds:
                self._send(Reply(404, body=b"no such signal"))
                return
            message = kinds[0][0]()
            try:
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    raise ValueError(f"content type {self.headers.get('Content-Type')}")
                message.ParseFromString(body)
            except Exception as exc:
                receiver.undecodable.append(f"{type(exc).__name__}: {exc}")
                self._send(refusal(400, f"undecodable: {exc}"))
                return
            reply = receiver.decide(self.path, message)
            if reply.body is None and 200 <= reply.status < 300:
                answer = kinds[0][1]()
                reply = Reply(reply.status, reply.headers, answer.SerializeToString())
            receiver.keep(Arrival(self.path, dict(self.headers.items()), message, reply))
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            body = reply.body or b""
            self.send_response(reply.status)
            headers = {"Content-Type": "application/x-protobuf", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read what arrived, not a log

    return Handler


# -- reading what arrived -------------------------------------------------------------


def attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    """OTLP attributes as a dict of plain values."""
    return {pair.key: plain(pair.value) for pair in pairs}


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def metrics(messages: list[ExportMetricsServiceRequest], name: str) -> list[tuple[Any, Metric]]:
    """Every metric called ``name``, with the resource and scope it came under."""
    found = []
    for message in messages:
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.append(((resource_metrics.resource, scope_metrics.scope), metric))
    return found


# -- TLS ----------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    made = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )  # fmt: skip
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(made.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    return cert, key
