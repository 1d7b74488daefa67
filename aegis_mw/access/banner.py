"""The start-up line: which request path runs, and how to open the dashboard.

A developer who added the middleware with its defaults reaches the dashboard
in one step, as with Jupyter: the line carries the dashboard's path with the
app's access token (``?token=`` is traded for a cookie). Servers such as
uvicorn and gunicorn configure only their own loggers, so when nothing would
show our INFO line it is written to stderr instead: the one line a user must
see is never lost to a logging default. An explicitly opened private group
gets a warning.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from .app_token import PRIVATE_GROUPS

if TYPE_CHECKING:
    from ..aegis import Aegis

logger = logging.getLogger("aegis_mw")

_WHAT = {"api": "the JSON API", "dashboard": "the dashboard", "websocket": "the /ws stream"}


def announce(aegis: Aegis, hot_path: str) -> str:
    """Say it (once per pipeline, by its first middleware); returns the line."""
    from .. import __version__

    settings = aegis.settings
    parts = [f"aegis_mw {__version__}: {hot_path} request path"]
    if settings.dashboard_path:
        where = settings.dashboard_path
        token = aegis.access_token
        if token is not None:  # there is one only when neither the page nor its API has a rule
            where += f"?token={token.value}"
            if token.origin not in ("option", "memory"):
                where += f" (token kept in {token.origin})"
        parts.append(f"dashboard at {where}")
    line = "; ".join(parts)
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info("%s", line)
    else:
        sys.stderr.write(f"INFO:     {line}\n")
        sys.stderr.flush()
    for group, rule in sorted(aegis.access_rules.items()):
        if rule.opened and (group in PRIVATE_GROUPS or group == "websocket"):
            logger.warning(
                "aegis_mw: %s is open to every client that can reach the app "
                "(access[%r] = 'open'): it shows request paths, client addresses and errors",
                _WHAT[group],
                group,
            )
    return line
