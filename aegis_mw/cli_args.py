"""Argument types shared by the ``aegis-mw`` commands: database files and times.

Each raises :class:`argparse.ArgumentTypeError`, so a bad value is a usage
error that names the option, before anything is opened or created.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from urllib.parse import unquote

from .core.record import isoformat
from .history import QueryError
from .history.ranges import parse_time

#: A duration before now: a whole number and a unit.
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def sqlite_path(value: str) -> str | None:
    """The file a ``--db`` value names: a plain path as it is, a ``sqlite:///``
    URL read as the SQLite sink reads it (``sqlite:///relative``,
    ``sqlite:////absolute``, percent-escapes decoded); None for another URL."""
    if "://" not in value:
        return value
    scheme, _, rest = value.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        return None
    return unquote(rest[1:])


def missing_directory(path: str) -> str | None:
    """The directory of ``path`` (absolute) when it does not exist.

    The SQLite sink creates missing directories (documented: an app's
    ``sink="sqlite:///data/aegis.db"``). A command does not: a mistyped
    ``--db`` must not leave a new directory tree behind, nor read an empty
    history from a file it just created.
    """
    directory = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(directory) else directory


def demo_database(value: str) -> str:
    """``demo --db``: a SQLite file path (or ``sqlite:///`` URL) in an existing directory."""
    path = sqlite_path(value)
    if path is None:
        raise argparse.ArgumentTypeError(
            f"the demo writes a SQLite file: give a path or a sqlite:/// URL, not {value}"
        )
    directory = missing_directory(path)
    if directory is not None:
        raise argparse.ArgumentTypeError(f"the directory {directory} does not exist")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(
            f"{os.path.abspath(path)} is a directory; give a file path"
        )
    return path


def moment(value: str) -> str:
    """``--since 15m`` (30s, 15m, 2h, 7d before now) or an ISO 8601 time, as
    the ISO 8601 text the history queries take."""
    duration = _DURATION.fullmatch(value.strip())
    if duration is not None:
        seconds = int(duration.group(1)) * _UNITS[duration.group(2)]
        try:
            return isoformat(time.time() - seconds)
        except (OverflowError, OSError, ValueError):
            raise argparse.ArgumentTypeError(f"{value!r} reaches too far back") from None
    try:
        parse_time("time", value)
    except QueryError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration (30s, 15m, 2h, 7d) "
            "or an ISO 8601 time (2026-01-31T12:00:00Z)"
        ) from None
    return value
