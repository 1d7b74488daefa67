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
    is queued by then: counting into it would race the flusher). It is its
    own iterator, as the compiled path's response is (``next()`` works on it
    without ``iter()`` there too); the pass begins at the first ``next()``.
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

    def __iter__(self) -> Recorded:
        return self

    def __next__(self) -> bytes:
        chunks = self._chunks
        if chunks is None:
            if self._closed:
                raise StopIteration
            middleware = self._middleware
            chunks = self._chunks = counted(
                self._result, self._item, middleware._monotonic, middleware._error_limit
            )
        return next(chunks)

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

    # Everything that can raise comes before close is replaced: a failure
    # here leaves the response untouched (the caller counts it as ours), and
    # its close() cannot then end the request a second time.
    size = content_length(headers)
    if size is None:
        size = _remaining(getattr(result, "filelike", None))
    try:
        result.close = close
    except (AttributeError, TypeError):
        return None
    item[8] = size  # (a store into the item: it cannot fail)
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
    """``wsgi.input``, counting the request body bytes the app reads.

    Every call goes to the server's stream with the app's own arguments: a
    stream may answer ``read()`` and ``read(-1)`` differently (cheroot's
    does). Beyond the reads PEP 3333 asks of every stream, it has what the
    stream has (``hasattr`` answers alike): ``readinto``, ``readinto1``,
    ``read1`` and ``readall`` counted, anything else the stream's own. ``next()`` works on it
    only where it works on the stream: see :func:`counting_input`.
    """

    __slots__ = ("_item", "_stream")

    def __init__(self, stream: Any, item: list[Any]) -> None:
        self._stream = stream
        self._item = item

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = self._stream.read(*args, **kwargs)
        if data:  # (None: a non-blocking stream with nothing yet)
            self._item[7] += len(data)
        return data

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = self._stream.readline(*args, **kwargs)
        if data:
            self._item[7] += len(data)
        return data

    def readlines(self, *args: Any, **kwargs: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args, **kwargs)
        self._item[7] += sum(map(len, lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        # iter() of the stream now, not at the first next(): a stream that is
        # not iterable fails here, as it would without us.
        return _counted_lines(iter(self._stream), self._item)

    def __getattr__(self, name: str) -> Any:  # anything else a server's stream offers
        attribute = getattr(self._stream, name)
        counting = _COUNTING.get(name)
        return attribute if counting is None else counting(attribute, self._item)


class CountingIterator(CountingInput):
    """The same, for a stream that is an iterator (most are): ``next()`` on it
    reads a line, counted. A type of its own, since ``next()`` asks the type."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        lines = iter(self._stream)
        return self if lines is self._stream else _counted_lines(lines, self._item)

    def __next__(self) -> bytes:
        line: bytes = next(self._stream)
        self._item[7] += len(line)
        return line


def counting_input(stream: Any, item: list[Any]) -> CountingInput:
    """``stream`` (a server's ``wsgi.input``) counted into ``item``: an iterator
    exactly when the stream is one, so that ``next()`` on it succeeds or fails
    as on the stream."""
    if hasattr(type(stream), "__next__"):
        return CountingIterator(stream, item)
    return CountingInput(stream, item)


def _counted_lines(lines: Iterator[bytes], item: list[Any]) -> Iterator[bytes]:
    for line in lines:
        item[7] += len(line)
        yield line


def _counting_into(readinto: Callable[..., int | None], item: list[Any]) -> Callable[..., Any]:
    def counted_into(*args: Any, **kwargs: Any) -> int | None:
        size = readinto(*args, **kwargs)
        if isinstance(size, int) and size > 0:  # (None: non-blocking, nothing yet)
            item[7] += size
        return size

    return counted_into


def _counting_read(read: Callable[..., bytes], item: list[Any]) -> Callable[..., Any]:
    def counted_read(*args: Any, **kwargs: Any) -> bytes:
        data = read(*args, **kwargs)
        if data:
            item[7] += len(data)
        return data

    return counted_read


#: The stream's reads that are not methods of ours (a stream may lack them),
#: counted when the app takes them through the stream.
_COUNTING: dict[str, Callable[[Any, list[Any]], Callable[..., Any]]] = {
    "readinto": _counting_into,
    "readinto1": _counting_into,
    "read1": _counting_read,
    "readall": _counting_read,
}


def counted(
    chunks: Iterable[Any], item: Any, clock: Callable[[], float], error_limit: int
) -> Generator[Any, None, None]:
    """The chunks of a body passed on as they come, counted: the first non-empty
    one stamps TTFB; an error midway is kept for the record, and raised on."""
    try:
        for chunk in chunks:
            count_chunk(item, chunk, clock)
            yield chunk
    except GeneratorExit:  # the server stopped early: not an error of the body
        raise
    except BaseException as exc:
        iteration_failed(item, exc, error_limit)
        raise


def count_chunk(item: Any, chunk: Any, clock: Callable[[], float]) -> None:
    """Count a body part on its way out (yielded or written): its ``len()``,
    and the first byte's time at the first true one. One whose truth or length
    cannot be read (None, an int: no body a server sends) counts as nothing and
    goes on unchanged, so that the server's own check of it answers, not an
    error of ours; the compiled path does the same (wsgi_start.c)."""
    try:
        nonempty = bool(chunk)
        size = len(chunk)
    except Exception:
        return
    if nonempty and item[5] is None:
        item[5] = clock()
    item[8] += size


def iteration_failed(item: Any, failure: BaseException, error_limit: int) -> None:
    """Iterating the app's response raised: keep the first error, and a 500
    when nothing was sent yet."""
    if not item[11]:
        item[11] = describe_error(failure, error_limit)
    if not item[3]:
        item[3] = 500
