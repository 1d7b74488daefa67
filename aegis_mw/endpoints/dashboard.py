"""``GET /dashboard``: one self-contained page from package data.

No CDN, no build step, nothing fetched from elsewhere: the page's style and
script are inline, allowed by a Content-Security-Policy that names their
SHA-256 hashes and lets the page talk to its own origin only (the JSON API
and the ``/ws/metrics`` stream). The paths it uses come from the settings,
written into the page as JSON. Trace ids link to ``trace_url``: a link the
user follows, which the policy need not allow (nothing is fetched from there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import resources

from ..core.settings import AegisSettings
from .response import Response

_INLINE = re.compile(r"<(style|script)>(.*?)</\1>", re.DOTALL)


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render(settings: AegisSettings, *, ws_path: str | None = None, ws_port: int = 0) -> Response:
    """The page for these settings (reads package data: call it off the event loop).
    ``ws_path``/``ws_port`` override where the stream is (a WSGI app serves it
    on a port of its own, or not at all: ``ws_path=""`` makes the page poll)."""
    template = resources.files(__package__).joinpath("dashboard.html").read_text("utf-8")
    # Why the page polls when it has no stream to open, shown beside its status.
    no_stream = ""
    if not settings.ws_path:
        no_stream = "the stream is switched off (ws_path is empty)"
    elif ws_path == "":  # a WSGI app without a stream server of its own
        no_stream = "a WSGI server has no WebSocket support: set ws_port for the live stream"
    config = json.dumps(
        {
            "wsPath": settings.ws_path if ws_path is None else ws_path,
            "wsPort": ws_port,
            "apiPath": settings.api_path,
            "updateInterval": settings.update_interval,
            "noStream": no_stream,
            # The recent requests panel: trace ids link here (validated
            # http(s) template; '' shows them without a link), and "slow"
            # means what the request log keeps as slow.
            "traceUrl": settings.trace_url,
            "slowThresholdMs": settings.slow_threshold_ms,
        }
    ).replace("<", "\\u003c")  # nothing in it can close the element
    page = template.replace("__AEGIS_CONFIG__", config)
    hashes: dict[str, list[str]] = {"style": [], "script": []}
    for kind, body in _INLINE.findall(page):
        hashes[kind].append(_hash(body))
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(hashes['script'])}",
            f"style-src {' '.join(hashes['style'])}",
            # A WSGI app's stream listens on a port of its own, on whatever host
            # the page was loaded from.
            f"connect-src 'self' ws://*:{ws_port} wss://*:{ws_port}"
            if ws_port
            else "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Response(
        200,
        page.encode(),
        "text/html; charset=utf-8",
        [
            ("content-security-policy", policy),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ],
    )
