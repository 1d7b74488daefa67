"""Transports of the live figures between an app's hosts (``live_transport``).

- ``redis://`` (``rediss://``, ``unix://``): Redis pub/sub, each sender's
  latest frame also kept in a hash for readers that resync. The ``redis`` extra.
- ``postgresql://``: a table of each sender's latest frame, LISTEN/NOTIFY
  to wake the readers. The ``postgres`` extra.

See :mod:`aegis_mw.core.live_link` for what travels and when.
"""

from __future__ import annotations

# Imported here, in the thread that builds the pipeline: a connection (redis-py
# or psycopg) looks the host name's codec up lazily, and a process forked
# while its link thread was importing it would leave that module's import lock
# held in the child for good (gunicorn --preload: the worker's link thread
# then waits on it forever).
import encodings.idna  # noqa: F401
import importlib
from collections.abc import Callable

from ..core.errors import ConfigError
from ..core.live_link import LiveTransport

REDIS_SCHEMES = ("redis", "rediss", "unix")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


#: kind -> (module, class, extra) of each transport.
TRANSPORTS = {
    "redis": ("redis_live", "RedisTransport", "redis"),
    "postgresql": ("postgres_live", "PostgresTransport", "postgres"),
}


def transport_factory(url: str, group: str) -> tuple[Callable[[], LiveTransport], str]:
    """What makes a transport for ``url``, and its kind; a ConfigError naming
    ``live_transport`` when its library is not installed."""
    scheme = scheme_of(url)
    if scheme in REDIS_SCHEMES:
        kind = "redis"
    elif scheme in POSTGRES_SCHEMES:
        kind = "postgresql"
    else:
        raise ConfigError("live_transport", f"{scheme}://...", "a redis:// or postgresql:// URL")
    module, name, extra = TRANSPORTS[kind]
    try:
        transport = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError:
        raise ConfigError(
            "live_transport", f"{scheme}://...",
            f"a {kind} URL needs the {extra} extra (pip install 'aegis_mw[{extra}]')",
        ) from None  # fmt: skip
    return (lambda: transport(url, group)), kind
