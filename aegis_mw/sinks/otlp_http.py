"""One OTLP/HTTP request with the standard library, and reading its answer.

A new connection per request, closed after it: the sink posts about once per
``flush_interval``, so a kept connection would save little and bring stale
ones (a collector or proxy closing idle connections, a forked child sharing
its parent's socket). ``timeout`` bounds each connect and read, and a
:class:`~aegis_mw.alerts.channels.Cutoff` the request as a whole, so a
collector answering a byte at a time cannot hold the sink's thread.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from ..alerts.channels import Cutoff
from ..core.retry_after import retry_after

#: The most of an answer read: OTLP answers are a few bytes, an error page
#: from a proxy may be more, and none is worth holding whole.
MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    #: Seconds the collector asked to wait (``Retry-After``), if it said.
    retry_after: float | None


def post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> Answer:
    """POST ``body``; raises ``OSError`` or ``http.client.HTTPException``
    when no answer came (``TimeoutError`` when the request outlasted ``timeout``)."""
    cutoff = Cutoff(timeout)
    connection = (
        http.client.HTTPConnection(host, port, timeout=timeout)
        if tls is None
        else http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    )

    def connect() -> None:
        sock = socket.create_connection((host, port), timeout)
        # Armed on the plain socket: a TLS socket cannot be duplicated.
        cutoff.arm(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname=host)

    connection.connect = connect  # type: ignore[method-assign]
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(MAX_ANSWER)
        return Answer(
            response.status,
            data,
            response.getheader("Content-Type", "") or "",
            retry_after(response.getheader("Retry-After")),
        )
    except (OSError, http.client.HTTPException) as exc:
        if cutoff.fired:
            raise TimeoutError(f"no answer within {timeout:g} s") from exc
        raise
    finally:
        cutoff.close()
        connection.close()


def error_message(answer: Answer) -> str:
    """Why the collector refused: the ``message`` of the ``google.rpc.Status``
    an OTLP/HTTP server answers with, else the start of the body as text."""
    if "protobuf" in answer.content_type:
        message = _status_message(answer.body)
        if message is not None:
            return message
    text = " ".join(answer.body.decode("utf-8", "replace").split())
    return text[:300] or "(no message)"


def _status_message(data: bytes) -> str | None:
    """Field 2 (``message``) of a ``google.rpc.Status``, read off the wire:
    not worth a dependency on googleapis-common-protos for one string."""
    offset = 0
    try:
        while offset < len(data):
            tag, offset = _varint(data, offset)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _, offset = _varint(data, offset)
            elif wire == 2:
                length, offset = _varint(data, offset)
                if field == 2:
                    return data[offset : offset + length].decode("utf-8", "replace")[:300]
                offset += length
            elif wire in (1, 5):
                offset += 8 if wire == 1 else 4
            else:
                return None
    except IndexError:  # cut short: not a Status
        return None
    return None


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset
    raise IndexError("a varint longer than 64 bits")
