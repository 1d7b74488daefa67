"""Framework-neutral handlers for the routes the middleware serves itself.

Each takes what it needs from the request (a few headers) and returns a
:class:`Response`; the ASGI and WSGI adapters turn that into messages.
"""

from __future__ import annotations

from .response import Response

__all__ = ["Response"]
