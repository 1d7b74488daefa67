"""Values every sink can store: the repairs the finalizer applies, once.

A record must be storable as it is by SQLite, PostgreSQL, a JSON line and
whatever a user's sink does with it, so the few values some storage refuses
are repaired before any sink sees them, the same way for all:

- **Paths and routes** (URL text): NUL, the other C0 control characters and
  DEL are stored percent-encoded (``/a%00b``), the form in which they reached
  the server: a request line cannot carry them raw. A lone surrogate (a server
  or a raw scope that decoded invalid UTF-8 with ``surrogateescape``) is
  stored as the percent-encoded byte it stands for (``\\udce9`` -> ``%E9``);
  any other lone surrogate as the percent-encoded bytes of its code point
  (``\\ud800`` -> ``%ED%A0%80``). A path given as bytes (a raw scope) is
  decoded as UTF-8 the same way. A literal ``%`` is left as it is, so
  ``/a%00`` may also have been a request for ``/a%2500``: the repair keeps
  every character of the path, and is chosen to read like the request did.
- **Free text** (``error``, ``client_ip``): NUL is stored as ``\\x00`` and a
  lone surrogate as ``\\udce9``, as Python's ``repr`` shows them; other
  characters (newlines in an exception message, say) are kept.
- **Lengths**: a path is cut to ``max_path_length``, an error to
  ``max_error_length`` (the middleware cuts it already; items offered by
  other integrations are cut here), a route to :data:`ROUTE_LIMIT` (it is part
  of a database key) and a client address to :data:`CLIENT_IP_LIMIT`.
- **Numbers**: a status or close code that is an ``int`` subclass
  (``HTTPStatus``, an ``IntEnum``) or an integral float (``200.0``, sent by
  some apps) is stored as the ``int``. Anything else (a ``bool``, a ``str``,
  ``200.5``, NaN) has no faithful repair, and neither does a status or close
  code beyond 32 bits or a time that is not finite: such an item is counted as
  ``invalid`` (``stats().dropped``) and its neighbours are kept. A byte or
  message count of :data:`MAX_COUNT` (1 TiB) or more in size is stored as
  ``MAX_COUNT - 1`` (with its sign): no request moves that much, so only a
  client can claim it (Django's count is the ``Content-Length`` header), and
  dropping the record would let the client hide its request.

The checks are cheap on the common case (``str.isprintable`` is true for a
clean path and covers NUL, controls and surrogates at once); the repairs run
only for the rare values that need them.
"""

from __future__ import annotations

from typing import Any

#: Routes are part of the rollup tables' keys (a PostgreSQL index entry holds
#: at most about 2.7 kB): 512 characters are at most 2 kB of UTF-8.
ROUTE_LIMIT = 512
#: An address, with a zone or a port, is far shorter.
CLIENT_IP_LIMIT = 255
#: No request moves a terabyte. Counts are saturated below it, so the sums
#: in a rollup cell (millions of requests) still fit a 64-bit column and stay
#: exact as floats (the metrics' sums).
MAX_COUNT = 2**40
#: A 32-bit signed column (``status``, ``close_code``).
INT32_LOW, INT32_HIGH = -(2**31), 2**31


def url_text(text: str) -> str:
    """``text`` with control characters and lone surrogates percent-encoded."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
            out.append(f"%{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out)


def plain_text(text: str) -> str:
    """``text`` with NUL and lone surrogates written as Python escapes."""
    if text.isprintable():
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def url_field(value: Any, limit: int) -> str:
    """A path or route: a ``str`` (a subclass becomes one), or bytes decoded as
    UTF-8; cut to ``limit``, then repaired. Anything else raises TypeError."""
    if type(value) is not str:
        if isinstance(value, str):
            value = str(value)
        elif isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "surrogateescape")
        else:
            raise TypeError(f"not text: {type(value).__name__}")
    # Cut first, so an escape is never cut in half. The repair may make a
    # stored path longer than the limit: three characters per control
    # character, nine per lone surrogate outside U+DC80..U+DCFF (its UTF-8
    # bytes, percent-encoded); repairs are rare.
    return url_text(value[:limit])


def text_field(value: Any, limit: int) -> str:
    """Free text (an error): a ``str``, cut to ``limit`` and repaired."""
    if not isinstance(value, str):
        raise TypeError(f"not text: {type(value).__name__}")
    return plain_text(cut(str(value), limit))


def client_field(value: Any) -> str | None:
    """A client address: None, or text (bytes decoded), bounded and repaired;
    a clean ``str`` is returned as it is."""
    if value is None:
        return None
    if type(value) is not str:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "surrogateescape")
        else:
            value = str(value)  # an address object, say
    return plain_text(cut(value, CLIENT_IP_LIMIT))


def whole_number(value: Any) -> int:
    """An ``int`` subclass or an integral float as a plain ``int``; anything
    else (``bool``, ``str``, ``200.5``, NaN) raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"not a whole number: {value!r:.40}")


def int32(value: Any) -> int:
    """A status or close code for a 32-bit column; ValueError when it cannot be."""
    number = value if type(value) is int else whole_number(value)
    if not INT32_LOW <= number < INT32_HIGH:
        raise ValueError(f"out of range: {number}")
    return number


def count(value: Any) -> int:
    """A byte or message count, saturated below :data:`MAX_COUNT` in size;
    ValueError when it is no whole number. A negative one (an app's bogus
    ``zerocopysend`` count, say) is kept: storage takes it, and it says what
    happened."""
    number = value if type(value) is int else whole_number(value)
    if number >= MAX_COUNT:
        return MAX_COUNT - 1
    if number <= -MAX_COUNT:
        return 1 - MAX_COUNT
    return number


def finite(value: float) -> float:
    """``value`` as a float; ValueError for NaN and the infinities."""
    number = float(value)
    if number - number != 0.0:
        raise ValueError(f"not finite: {number}")
    return number
