"""Django under ASGI, with ``/ws/metrics``: Django's ASGI handler takes HTTP
only, so this wraps it and answers the stream itself (the same handler as
``AegisMiddleware`` under ASGI), passing everything else to Django.

In ``asgi.py``::

    from aegis_mw.contrib.django.asgi import get_asgi_application

    application = get_asgi_application()
"""

from __future__ import annotations

from typing import Any

from ...types import ASGIApp, Receive, Scope, Send


def get_asgi_application() -> ASGIApp:
    """Django's ASGI application, with the pipeline's ``/ws/metrics`` in front."""
    from django.core.asgi import get_asgi_application as django_application

    return MetricsStream(django_application())


class MetricsStream:
    """An ASGI app: ``ws_path`` WebSockets answered here (and plain HTTP there,
    a handshake a server without WebSocket support let through), the rest by
    ``app``."""

    def __init__(self, app: Any) -> None:
        from django.apps import apps

        from ...asgi.mounted import MountedRoutes

        self.app = app
        self.aegis = apps.get_app_config("aegis_mw").pipeline
        self.mounted = MountedRoutes(self.aegis)
        self.ws_path = self.aegis.settings.ws_path or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == self.ws_path:
            from ...asgi.realtime_ws import serve

            await serve(self.mounted, scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == self.ws_path:
            await self.mounted.pass_through(self.app, scope, receive, send)
            return
        await self.app(scope, receive, send)
