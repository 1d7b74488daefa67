"""What the pure-Python WSGI path hands the server: the app's response iterable,
timed to ``close()`` and counted as it passes, and the request body stream,
counted as the app reads it. The compiled path (``_hotpath_c/wsgi_*.c``)
does the same in C and comes here only for a file response.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..core.labels import describe_error

if TYPE_CHECKING:
    from .middleware import AegisWSGIMiddleware


class Recorded:
    """The app's response iterable, timed to ``close()`` and counted as it passes.

    It is one pass over the app's iterable, as a generator is: iterating it
    again goes on where the pass is (not from the start of a list, counting
    its bytes twice), and after ``close()`` it yields nothing more (the item
    is queued by then: counting into it would race the flusher). The
    compiled path's response behaves the same.
    """

    __slots__ = ("_chunks", "_closed", "_environ", "_item", "_middleware", "_result")

    def __init__(
        self, middleware: AegisWSGIMiddleware, environ: dict[str, Any], item: list[Any],
        result: Iterable[bytes],
    ) -> None:  # fmt: skip
        self._middleware = middleware
        self._environ = environ
        self._item = item
        self._result = result
        self._closed = False
        self._chunks: Generator[bytes, None, None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._chunks
        if chunks is None:
            if self._closed:
                return iter(())
            middleware = self._middleware
            chunks = self._chunks = counted(
                self._result, self._item, middleware._monotonic, middleware._error_limit
            )
        return chunks

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        failure: BaseException | None = None
        try:
            if self._chunks is not None:
                self._chunks.close()  # the pass ends here, without reading on
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._middleware._closed(self._environ, self._item, failure)


class RecordedSized(Recorded):
    """For a response that has a length (a list, say): servers such as wsgiref
    set Content-Length for a one-item response, so the length must show
    through, as it would without the middleware."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


def watch_file(
    middleware: AegisWSGIMiddleware, environ: dict[str, Any], item: list[Any], result: Any,
    headers: list[tuple[str, str]] | None,
) -> Any:  # fmt: skip
    """A response of the server's own ``wsgi.file_wrapper``, returned as it is,
    so the server can still send the file with ``sendfile()``; only its
    ``close()`` is replaced, to time and record the request. The bytes are
    the response's Content-Length, else what is left of the file. Returns
    None when ``close`` cannot be replaced (the caller then wraps it)."""
    original = getattr(result, "close", None)
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        failure: BaseException | None = None
        try:
            if original is not None:
                original()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            middleware._closed(environ, item, failure)

    size = content_length(headers)
    try:
        result.close = close
    except (AttributeError, TypeError):
        return None
    item[8] = size if size is not None else _remaining(getattr(result, "filelike", None))
    return result


def content_length(headers: Iterable[tuple[str, str]] | None) -> int | None:
    """The Content-Length among response headers, or None."""
    for name, value in headers or ():
        if name.lower() == "content-length":
            try:
                return max(int(value), 0)
            except ValueError:
                return None
    return None


def _remaining(filelike: Any) -> int:
    """What is left to send of a file, or 0 when that cannot be known."""
    try:
        left: int = os.fstat(filelike.fileno()).st_size - filelike.tell()
        return max(left, 0)
    except (AttributeError, OSError, TypeError, ValueError):
        return 0


class CountingInput:
    """``wsgi.input``, counting the request body bytes the app reads."""

    __slots__ = ("_item", "_stream")

    def __init__(self, stream: Any, item: list[Any]) -> None:
        self._stream = stream
        self._item = item

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size) if size is not None else self._stream.read()
        self._item[7] += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data: bytes = self._stream.readline(size)
        self._item[7] += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        self._item[7] += sum(map(len, lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._item[7] += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:  # anything else a server's stream offers
        return getattr(self._stream, name)


def counted(
    chunks: Iterable[Any], item: Any, clock: Callable[[], float], error_limit: int
) -> Generator[Any, None, None]:
    """The chunks of a body passed on as they come, counted: the first non-empty
    one stamps TTFB; an error midway is kept for the record, and raised on."""
    try:
        for chunk in chunks:
            if chunk and item[5] is None:
                item[5] = clock()
            item[8] += len(chunk)
            yield chunk
    except GeneratorExit:  # the server stopped early: not an error of the body
        raise
    except BaseException as exc:
        iteration_failed(item, exc, error_limit)
        raise


def iteration_failed(item: Any, failure: BaseException, error_limit: int) -> None:
    """Iterating the app's response raised: keep the first error, and a 500
    when nothing was sent yet."""
    if not item[11]:
        item[11] = describe_error(failure, error_limit)
    if not item[3]:
        item[3] = 500
